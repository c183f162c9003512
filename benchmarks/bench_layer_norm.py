"""Benchmark: fused residual + LayerNorm (Triton) vs PyTorch (``F.layer_norm(x + residual)``).

The op timed is the one BERT's ``attention.output`` / ``output`` blocks run: ``y = LN(x + residual)``, in
three modes: ``forward`` (a training forward: inputs require grad, so each provider saves what its
backward needs), ``backward`` (dx, dresidual, dweight, dbias from a saved graph) and ``full`` (both).
Times are medians (with 20th/80th percentiles) of ``timer.time_op``: CUDA events, L2 flushed before every
call; on CPU only the PyTorch provider is timed (the Triton interpreter is not a speed measurement), with a
wall-clock loop.

GB/s is computed from the minimal bytes the op must move, the same for both providers: forward reads x and
residual and writes y; backward reads dy and x + residual and writes one gradient (dx = dresidual), plus the
parameters and their gradients. Anything a provider moves beyond that lowers its GB/s.

    python -m pytest benchmarks/bench_layer_norm.py -o addopts=""      # pytest-benchmark
    python -c "import fastbert.benchmarks.bench_layer_norm as b, torch; print(b.run(torch.device('cuda')))"
"""

import pytest
import torch
import torch.nn.functional as F

from fastbert.benchmarks.common import add_speedups_vs_torch, check_against_reference
from fastbert.benchmarks.timer import synced, time_op
from fastbert.ops import layer_norm

PROVIDERS = ("triton", "torch")
MODES = ("forward", "backward", "full")
# (tokens, hidden, dtype): MiniLM / BERT-base / BERT-large at 32 x 128 and 32 x 512 tokens, and an awkward size.
CUDA_CASES = [
    (4096, 384, torch.bfloat16), (4096, 768, torch.bfloat16), (16384, 768, torch.bfloat16),
    (16384, 1024, torch.bfloat16), (16384, 768, torch.float16), (16384, 768, torch.float32),
    (16384, 1023, torch.bfloat16), (4096, 4096, torch.bfloat16),
]
CPU_CASES = [(1024, 384, torch.float32), (4096, 768, torch.float32)]
EPS = 1e-12


def _dtype_name(dtype):
    return str(dtype).split(".")[-1]


def make_inputs(tokens, hidden, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(device=device, dtype=dtype).requires_grad_()
    r = torch.randn(tokens, hidden, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    b = (0.1 * torch.randn(hidden, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(tokens, hidden, generator=g).to(device=device, dtype=dtype)
    return x, r, w, b, dy


def op(provider):
    if provider == "triton":
        return lambda x, r, w, b: layer_norm(x, w, b, eps=EPS, residual=r)
    return lambda x, r, w, b: F.layer_norm(x + r, (x.shape[-1],), w, b, EPS)


def make_call(provider, mode, inputs):
    """A no-argument callable running one ``mode`` step of ``provider`` on ``inputs``."""
    x, r, w, b, dy = inputs
    f = op(provider)
    wrt = (x, r, w, b)
    if mode == "forward":
        return lambda: f(x, r, w, b)
    if mode == "backward":
        y = f(x, r, w, b)
        return lambda: torch.autograd.grad(y, wrt, grad_outputs=dy, retain_graph=True)
    return lambda: torch.autograd.grad(f(x, r, w, b), wrt, grad_outputs=dy)


def min_bytes(tokens, hidden, dtype, mode):
    act = tokens * hidden * torch.empty((), dtype=dtype).element_size()
    par = hidden * torch.empty((), dtype=dtype).element_size()
    fwd = 3 * act + 2 * par  # x, residual in; y out; weight, bias in
    bwd = 3 * act + 3 * par  # dy, x + residual in; dx out; weight in; dweight, dbias out
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]




def check(inputs):
    """Triton vs a float64 reference, output and all four gradients, against PyTorch's own error in the same
    dtype (raises AssertionError before a wrong kernel is timed). Returns {name: {err, torch_err}}."""
    x, r, w, b, dy = inputs
    return check_against_reference("layer_norm", op("triton"), op("torch"), (x, r, w, b), dy,
                                   ("x", "residual", "weight", "bias"))


def run(device) -> list:
    """Every case x provider x mode: one dict per measurement (the ``python -m benchmarks`` runner)."""
    device = torch.device(device)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    rows = []
    for tokens, hidden, dtype in cases:
        inputs = make_inputs(tokens, hidden, dtype, device)
        errors = check(inputs) if device.type == "cuda" else None
        for provider in PROVIDERS:
            for mode in MODES:
                row = {"op": "layer_norm(x + residual)", "tokens": tokens, "hidden": hidden,
                       "dtype": _dtype_name(dtype), "provider": provider, "mode": mode}
                if provider == "triton" and device.type != "cuda":
                    rows.append({**row, "status": "skipped", "reason": "Triton needs CUDA to be timed"})
                    continue
                t = time_op(make_call(provider, mode, inputs), device)
                gbs = min_bytes(tokens, hidden, dtype, mode) / (t.median_ms * 1e-3) / 1e9
                rows.append({**row, "status": "ok", "median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
                             "GB/s": gbs,
                             "checked": "output + 4 gradients vs float64" if errors else None,
                             "max_err": max(e["err"] for e in errors.values()) if errors and provider == "triton"
                             else None})
        del inputs
    add_speedups_vs_torch(rows, ("tokens", "hidden", "dtype", "mode"))
    return rows


# ---------------------------------------------------------------------------------------------- pytest


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("case", CUDA_CASES if torch.cuda.is_available() else CPU_CASES,
                         ids=lambda c: f"{c[0]}x{c[1]}-{_dtype_name(c[2])}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_layer_norm_speed(benchmark, provider, mode, case):
    device = _device()
    if provider == "triton" and device.type != "cuda":
        pytest.skip("Triton is timed on CUDA only (the CPU interpreter is not a speed measurement)")
    tokens, hidden, dtype = case
    fn = make_call(provider, mode, make_inputs(tokens, hidden, dtype, device))
    benchmark.extra_info.update(tokens=tokens, hidden=hidden, dtype=_dtype_name(dtype), provider=provider,
                                mode=mode, bytes=min_bytes(tokens, hidden, dtype, mode))
    benchmark.pedantic(synced(fn, device), rounds=20, warmup_rounds=3)
