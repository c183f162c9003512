#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up, then pytest. On a CPU machine every Triton kernel runs
# under the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py); CUDA-only tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
