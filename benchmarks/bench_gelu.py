"""Benchmark: fused bias + GELU (Triton) vs PyTorch (``F.gelu(x + bias)``).

The op timed is BERT's ``intermediate`` activation: the matmul runs without its bias, then ``gelu(x + bias)``
(exact erf GELU; ``tanh`` for the ``gelu_new`` cases), in three modes: ``forward`` (a training forward:
inputs require grad), ``backward`` (dx, dbias from a saved graph) and ``full`` (both). Times are medians
(with 20th/80th percentiles) of ``timer.time_op``: CUDA events, L2 flushed before every call; on CPU only the
PyTorch provider is timed (the Triton interpreter is not a speed measurement), with a wall-clock loop.

GB/s is computed from the minimal bytes the op must move, the same for both providers: forward reads x and
writes y; backward reads dy and x and writes dx, plus the bias and its gradient. Anything a provider moves
beyond that (PyTorch materializes x + bias, and saves it for its backward) lowers its GB/s.

    python -m pytest benchmarks/bench_gelu.py -o addopts=""      # pytest-benchmark
    python -c "import fastbert.benchmarks.bench_gelu as b, torch; print(b.run(torch.device('cuda')))"
"""

import pytest
import torch
import torch.nn.functional as F

from fastbert.benchmarks.common import add_speedups_vs_torch, check_against_reference
from fastbert.benchmarks.timer import synced, time_op
from fastbert.ops import bias_gelu

PROVIDERS = ("triton", "torch")
MODES = ("forward", "backward", "full")
# (tokens, features, dtype, approximate): MiniLM / BERT-base / BERT-large intermediate sizes at 32 x 128 and
# 32 x 512 tokens, fp16 / fp32, an awkward size and the tanh GELU.
CUDA_CASES = [
    (4096, 1536, torch.bfloat16, "none"), (4096, 3072, torch.bfloat16, "none"),
    (16384, 3072, torch.bfloat16, "none"), (16384, 4096, torch.bfloat16, "none"),
    (16384, 3072, torch.float16, "none"), (16384, 3072, torch.float32, "none"),
    (16384, 3071, torch.bfloat16, "none"), (16384, 3072, torch.bfloat16, "tanh"),
]
CPU_CASES = [(1024, 1536, torch.float32, "none"), (2048, 3072, torch.float32, "none")]


def _dtype_name(dtype):
    return str(dtype).split(".")[-1]


def make_inputs(tokens, features, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (2 * torch.randn(tokens, features, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    b = (0.1 * torch.randn(features, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(tokens, features, generator=g).to(device=device, dtype=dtype)
    return x, b, dy


def op(provider, approximate):
    if provider == "triton":
        return lambda x, b: bias_gelu(x, b, approximate)
    return lambda x, b: F.gelu(x + b, approximate=approximate)


def make_call(provider, mode, inputs, approximate):
    """A no-argument callable running one ``mode`` step of ``provider`` on ``inputs``."""
    x, b, dy = inputs
    f = op(provider, approximate)
    if mode == "forward":
        return lambda: f(x, b)
    if mode == "backward":
        y = f(x, b)
        return lambda: torch.autograd.grad(y, (x, b), grad_outputs=dy, retain_graph=True)
    return lambda: torch.autograd.grad(f(x, b), (x, b), grad_outputs=dy)


def min_bytes(tokens, features, dtype, mode):
    act = tokens * features * torch.empty((), dtype=dtype).element_size()
    par = features * torch.empty((), dtype=dtype).element_size()
    fwd = 2 * act + par  # x, bias in; y out
    bwd = 3 * act + 2 * par  # dy, x, bias in; dx, dbias out
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]




def check(inputs, approximate):
    """Triton vs a float64 reference, output and both gradients, against PyTorch's own error in the same dtype
    (raises AssertionError before a wrong kernel is timed). Returns {name: {err, torch_err}}."""
    x, b, dy = inputs
    return check_against_reference(f"bias_gelu({approximate})", op("triton", approximate), op("torch", approximate),
                                   (x, b), dy, ("x", "bias"))


def run(device) -> list:
    """Every case x provider x mode: one dict per measurement (the ``python -m benchmarks`` runner)."""
    device = torch.device(device)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    rows = []
    for tokens, features, dtype, approximate in cases:
        inputs = make_inputs(tokens, features, dtype, device)
        errors = check(inputs, approximate) if device.type == "cuda" else None
        for provider in PROVIDERS:
            for mode in MODES:
                row = {"op": f"gelu(x + bias, approximate={approximate!r})", "tokens": tokens,
                       "features": features, "dtype": _dtype_name(dtype), "provider": provider, "mode": mode}
                if provider == "triton" and device.type != "cuda":
                    rows.append({**row, "status": "skipped", "reason": "Triton needs CUDA to be timed"})
                    continue
                t = time_op(make_call(provider, mode, inputs, approximate), device)
                gbs = min_bytes(tokens, features, dtype, mode) / (t.median_ms * 1e-3) / 1e9
                rows.append({**row, "status": "ok", "median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
                             "GB/s": gbs,
                             "checked": "output + 2 gradients vs float64" if errors else None,
                             "max_err": max(e["err"] for e in errors.values()) if errors and provider == "triton"
                             else None})
        del inputs
    add_speedups_vs_torch(rows, ("op", "tokens", "features", "dtype", "mode"))
    return rows


# ---------------------------------------------------------------------------------------------- pytest


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("case", CUDA_CASES if torch.cuda.is_available() else CPU_CASES,
                         ids=lambda c: f"{c[0]}x{c[1]}-{_dtype_name(c[2])}-{c[3]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bias_gelu_speed(benchmark, provider, mode, case):
    device = _device()
    if provider == "triton" and device.type != "cuda":
        pytest.skip("Triton is timed on CUDA only (the CPU interpreter is not a speed measurement)")
    tokens, features, dtype, approximate = case
    fn = make_call(provider, mode, make_inputs(tokens, features, dtype, device), approximate)
    benchmark.extra_info.update(tokens=tokens, features=features, dtype=_dtype_name(dtype), approximate=approximate,
                                provider=provider, mode=mode, bytes=min_bytes(tokens, features, dtype, mode))
    benchmark.pedantic(synced(fn, device), rounds=20, warmup_rounds=3)
