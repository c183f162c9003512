#!/usr/bin/env bash
# Refreshes requirements-ci.txt, the lock of the CI/test environment (exact versions of every package),
# from requirements-ci.in, its loose inputs: the newest releases that satisfy the inputs, resolved by
# pip-tools with this machine's pip configuration (so torch is the local CPU wheel, not a CUDA build).
# The lock is for CI's platform: Linux x86-64, Python 3.11. After refreshing: bash scripts/test.sh, then
# commit both files. fastbert's own dependency ranges (pyproject.toml) stay loose for users.
#
#     bash scripts/lock.sh                       # everything to the newest allowed release
#     bash scripts/lock.sh --upgrade-package transformers    # one package only
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip --disable-pip-version-check -q install "pip-tools==7.7.0" 2>&1 \
  | grep -v "^WARNING: Location" || true
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--upgrade)
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tmp/venv/bin/pip-compile" -q "${args[@]}" --strip-extras \
  --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --output-file requirements-ci.txt requirements-ci.in 2>&1 | grep -v "^WARNING: Location" || true
grep -q "^torch==" requirements-ci.txt || { echo "lock.sh: no torch pin in requirements-ci.txt" >&2; exit 1; }
echo "requirements-ci.txt: $(grep -c '^[a-zA-Z]' requirements-ci.txt) packages pinned"
