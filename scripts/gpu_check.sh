#!/usr/bin/env bash
# GPU validation in sections, each well inside a device call's 10 minutes, each writing its raw results into
# OUTDIR as it goes (a section killed at its limit still leaves what it measured):
#
#   bash scripts/gpu_check.sh SECTION OUTDIR [--dry-run]
#
#   build      pip install (no network: --no-build-isolation --no-deps), import checks, environment record
#   tests      the kernel tests on CUDA (bf16/fp16/fp32, every autotune config forced once, CUDA graphs, syncs)
#   tests-model  the model, masks, tracing, encode, patch and CUDA tokenizer tests on CUDA
#   compile    sm_90 compile report of every autotune config (registers, spills, SASS), no GPU needed
#   ops        per-op benchmarks (attention, LayerNorm, GELU, fused LM-head CE) + copy bandwidth
#   e2e        BERT-base end to end (inference, encoder training step) + sentence embeddings vs ST
#   pretrain   BERT-base pre-training step with the MLM + NSP heads vs Hugging Face BertForPreTraining
#   tokenizer  the tokenizer benchmark (C++ and CUDA paths vs HF tokenizers)
#   all        every section in turn (locally only: one device call cannot hold them all)
#
# --dry-run runs each section on this CPU machine with tiny sizes (the Triton interpreter, the cpu suite),
# to prove the script before a GPU session spends device time on it. Output files stay flat in OUTDIR with
# names of letters, digits, '.', '_' and '-' (what the device tool brings back: at most 8 files per call).
set -uo pipefail
SECTION=${1:?usage: gpu_check.sh SECTION OUTDIR [--dry-run]}
OUT=${2:?usage: gpu_check.sh SECTION OUTDIR [--dry-run]}
DRY=${3:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ -n "$DRY" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
LIMIT=${SECTION_LIMIT:-460}  # seconds per step: a section stays under the device tool's 10 minutes

step() {  # step NAME CMD...: run with a time limit, log into OUT/NAME.log, record its exit code
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/steps.log"
  timeout "$LIMIT" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc" | tee -a "$OUT/steps.log"
  tail -n 15 "$OUT/$name.log"
  return 0
}

env_record() {
  "$PY" - "$OUT/env.json" <<'EOF'
import json, subprocess, sys, torch
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": None}
try:
    import triton; env["triton"] = triton.__version__
except ImportError:
    pass
for name in ("transformers", "sentence_transformers", "tokenizers"):
    try:
        env[name] = __import__(name).__version__
    except ImportError:
        pass
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(device=p.name, sms=p.multi_processor_count, memory_gb=round(p.total_memory / 2**30, 1))
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
env["dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env))
EOF
}

run_section() {
  case "$1" in
    build)
      if [ -n "$DRY" ]; then
        step build-import "$PY" -c "import fastbert, fastbert._C; print('fastbert', fastbert.__version__)"
      else
        step build "$PY" -m pip install --no-build-isolation --no-deps -e .
        step build-import "$PY" -c "import fastbert, fastbert._C, fastbert._C_cuda; print('fastbert + CUDA tokenizer ok')"
        nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
      fi
      env_record ;;
    tests)
      if [ -n "$DRY" ]; then
        step tests "$PY" -m pytest -x -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_gpu_syncs.py \
          tests/test_lm_head_ce.py --junitxml="$OUT/tests.xml"
      else
        # every kernel compiled for real, bf16 included; GPU-only tests (graphs, syncs, CUDA tokenizer) run here
        step tests-kernels "$PY" -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_layer_norm.py \
          tests/test_gelu.py tests/test_lm_head_ce.py tests/test_cuda_graphs.py tests/test_gpu_syncs.py \
          --junitxml="$OUT/tests-kernels.xml"
      fi ;;
    tests-model)  # the model on the Triton path, masks, tracing, encode, the CUDA tokenizer (a call of its own)
      if [ -n "$DRY" ]; then
        step tests-model "$PY" -m pytest -x -q -p no:cacheprovider tests/test_masks.py --junitxml="$OUT/tests-model.xml"
      else
        # the first config the autotuner would consider (the kernel tests run every config): minutes of tuning saved
        FASTBERT_AUTOTUNE=0 step tests-model "$PY" -m pytest -q -p no:cacheprovider tests/test_model_triton.py tests/test_model_parity.py \
          tests/test_model_inputs.py tests/test_masks.py tests/test_trace_export.py tests/test_encode.py \
          tests/test_patch.py tests/test_tokenizer_native.py --junitxml="$OUT/tests-model.xml"
      fi ;;
    compile)
      if [ -n "$DRY" ]; then
        step compile "$PY" scripts/compile_report.py --kernels fwd --head-dims 64 --limit 1 --json "$OUT/compile.jsonl"
      else
        step compile "$PY" scripts/compile_report.py --full --head-dims 32 64 128 --json "$OUT/compile.jsonl"
      fi ;;
    ops)  # the runner measures the device-to-device copy bandwidth first and reports LN/GELU as % of it
      if [ -n "$DRY" ]; then
        step ops "$PY" -m benchmarks --suite cpu --quick --only ops --models tiny --out "$OUT" --no-plots --tag dry
      else
        step ops "$PY" -m benchmarks --suite gpu --only ops --out "$OUT" --no-plots --tag ops
      fi ;;
    e2e)
      if [ -n "$DRY" ]; then
        step e2e "$PY" -m benchmarks --suite cpu --quick --only inference --models tiny --out "$OUT" --no-plots --tag dry
        step encode "$PY" -m benchmarks.bench_encode --texts 20 --rounds 1 --json "$OUT/encode.json"
      else
        step e2e "$PY" -m benchmarks --suite gpu --quick --only inference,training --models bert-base --out "$OUT" \
          --no-plots --tag e2e
        step encode "$PY" -m benchmarks.bench_encode --device cuda --texts 2000 --rounds 3 --batch-size 128 \
          --json "$OUT/encode.json"
      fi ;;
    pretrain)  # the pre-training step with the MLM + NSP heads, fastbert's packed step vs HF BertForPreTraining
      if [ -n "$DRY" ]; then
        step pretrain "$PY" -m benchmarks --suite cpu --quick --only pretraining --models tiny --out "$OUT" \
          --no-plots --tag dry
      else
        step pretrain "$PY" -m benchmarks --suite gpu --quick --only pretraining --models bert-base --out "$OUT" \
          --no-plots --tag pretrain
      fi ;;
    tokenizer)
      if [ -n "$DRY" ]; then
        step tokenizer "$PY" -m benchmarks --suite cpu --quick --only tokenizer --out "$OUT" --no-plots --tag dry
      else
        step tokenizer "$PY" -m benchmarks --suite gpu --only tokenizer --out "$OUT" --no-plots --tag tok
        # the CUDA batch path vs HF tokenizers and the C++ path, batch >= 1000, ids checked on every text
        step tokenizer-cuda "$PY" benchmarks/bench_tokenizer.py --cuda
        step tokenizer-gpu-tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_tokenizer_native.py
      fi ;;
    all)
      for s in build tests tests-model compile ops e2e pretrain tokenizer; do run_section "$s"; done ;;
    *)
      echo "unknown section $1 (build, tests, tests-model, compile, ops, e2e, pretrain, tokenizer, all)" >&2; exit 2 ;;
  esac
}

run_section "$SECTION"
echo "results in $OUT:"; ls -la "$OUT"
