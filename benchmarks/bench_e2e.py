"""End-to-end pytest-benchmark tests: encoder inference and a training step, every provider.

Skipped in ordinary test runs (``--benchmark-skip`` is in pytest's addopts). Run them with

    pytest benchmarks/bench_e2e.py --benchmark-only [--benchmark-json out.json]

On CUDA: BERT-base in bf16 at (32,128) and on a 50%-padded 32x512 mix, plus (1,128) latency; on CPU: MiniLM
shapes in fp32, PyTorch providers only. Each provider is checked against Hugging Face eager in fp32 before
it is timed; every timed call ends with a device synchronisation. For the full matrix with tables, JSON and
plots use the runner: ``python -m benchmarks``.
"""
import itertools

import pytest
import torch

from fastbert.benchmarks import providers as P
from fastbert.benchmarks.plan import W
from fastbert.benchmarks.runner import _train_check_values, _train_errors
from fastbert.benchmarks.timer import synced

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
MODEL = "bert-base" if CUDA else "minilm"
DTYPE = torch.bfloat16 if CUDA else torch.float32
WORKLOADS = ["fixed:1:128", "fixed:32:128", "pad50:32:512"] if CUDA else ["fixed:1:128", "fixed:8:128"]
INFERENCE = [p for p in P.PROVIDERS if CUDA or not p.startswith("fastbert-triton")]
TRAINING = [p for p in INFERENCE if p != "fastbert-triton-graph"]


@pytest.fixture(scope="module")
def reference():
    return P.reference_model(MODEL, seed=0)


def _inputs(ref, spec, n_sets=3):
    w = W(spec)
    return w, [P.make_inputs(w.lengths(k), ref.config.vocab_size, DEVICE, seed=17 * k + 1) for k in range(n_sets)]


def _timed(benchmark, fn, inputs, rounds):
    sets = itertools.cycle(inputs)
    benchmark.pedantic(synced(lambda: fn(next(sets)), DEVICE), rounds=rounds, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("spec", WORKLOADS)
@pytest.mark.parametrize("provider", INFERENCE)
def test_inference(benchmark, reference, provider, spec):
    if provider == "hf-compile" and not CUDA:
        pytest.skip(P.COMPILE_CPU_REASON)
    w, inputs = _inputs(reference, spec)
    x = inputs[0]
    hf32 = P.build_hf(reference, "eager").to(DEVICE).eval()
    with torch.no_grad():
        ref = hf32(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        base = ref if DTYPE == torch.float32 else hf32.to(DTYPE)(input_ids=x["input_ids"],
                                                                  attention_mask=x["attention_mask"]).last_hidden_state
        base_err = P.valid_max_abs_err(base, ref, x["attention_mask"])
        del hf32, base
        built = P.build_inference(provider, reference, DEVICE, DTYPE)
        err = P.valid_max_abs_err(built.fn(x), ref, x["attention_mask"])
        assert err <= P.tolerance(DTYPE, base_err), f"{provider}: error {err:.3g} vs HF eager's {base_err:.3g}"
        benchmark.extra_info.update(workload=w.name, max_abs_err=err, real_tokens=sum(x["lengths"]))
        _timed(benchmark, built.fn, inputs, rounds=50 if CUDA else 5)


@pytest.mark.parametrize("spec", WORKLOADS[1:2])
@pytest.mark.parametrize("provider", TRAINING)
def test_training_step(benchmark, reference, provider, spec):
    if provider == "hf-compile" and not CUDA:
        pytest.skip(P.COMPILE_CPU_REASON)
    w, inputs = _inputs(reference, spec)
    amp = DTYPE if CUDA else None
    hf32 = P.build_hf(reference, "eager").to(DEVICE).eval()
    ref = _train_check_values(hf32, inputs[0], DEVICE, None)
    base = _train_errors(_train_check_values(hf32, inputs[0], DEVICE, amp), ref) if amp else {"loss": 0, "grad": 0}
    del hf32
    built = P.build_training(provider, reference, DEVICE, amp)
    errs = _train_errors(built.loss_and_grads(inputs[0]), ref)
    floor = 2e-2 if amp else 1e-4
    assert all(errs[k] <= 3 * base[k] + floor for k in errs), f"{provider}: {errs} vs HF eager's {base}"
    benchmark.extra_info.update(workload=w.name, **{f"{k}_rel_err": v for k, v in errs.items()})
    _timed(benchmark, built.fn, inputs, rounds=30 if CUDA else 3)
