"""Benchmark: the MLM loss's vocabulary projection + cross-entropy, fused in Triton (logits never stored) vs
PyTorch (``F.linear`` then ``F.cross_entropy`` on fp32 logits, as fastbert's unfused pre-training loss does).

Rows are the masked positions of a pre-training batch after the MLM head's transform: 15% of 32x128 and
32x512 tokens at BERT-base's vocabulary and width. Modes: ``forward`` (loss only) and ``full`` (loss and the
hidden / weight / bias gradients). Before timing, both providers' losses and gradients are checked against an
fp32 reference (the fused one must be within 2x PyTorch's own error). Peak memory: the CUDA allocator's peak
during one call (inputs included, the same for both). On CPU only the PyTorch provider is timed.

    python -c "import fastbert.benchmarks.bench_lm_head_ce as b, torch; print(b.run(torch.device('cuda')))"
"""
import torch
import torch.nn.functional as F

from fastbert.benchmarks.common import add_speedups_vs_torch, peak_memory_mb, reset_peak_memory
from fastbert.benchmarks.timer import time_op
from fastbert.ops import linear_cross_entropy

PROVIDERS = ("triton", "torch")
MODES = ("forward", "full")
# (rows, hidden, vocab, dtype)
CUDA_CASES = [(614, 768, 30522, torch.bfloat16), (2458, 768, 30522, torch.bfloat16),
              (2458, 1024, 30522, torch.bfloat16), (614, 768, 30522, torch.float32)]
CPU_CASES = [(128, 384, 30522, torch.float32)]


def make_inputs(rows, hidden, vocab, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_()
    w = (0.05 * torch.randn(vocab, hidden, generator=g)).to(device, dtype).requires_grad_()
    b = (0.1 * torch.randn(vocab, generator=g)).to(device, dtype).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g).to(device)
    return h, w, b, t


def loss_fn(provider):
    if provider == "triton":
        return lambda h, w, b, t: linear_cross_entropy(h, w, b, t)[0].sum()
    return lambda h, w, b, t: F.cross_entropy(F.linear(h, w, b).float(), t, reduction="sum")


def make_call(provider, mode, inputs):
    f = loss_fn(provider)
    h, w, b, t = inputs
    if mode == "forward":
        return lambda: f(h, w, b, t)
    return lambda: torch.autograd.grad(f(h, w, b, t), (h, w, b))


def check(inputs):
    """Relative errors (loss, dh, dw, db) of each provider vs an fp32 reference."""
    h, w, b, t = inputs
    ref_in = [x.detach().float().requires_grad_() for x in (h, w, b)]
    ref_loss = F.cross_entropy(F.linear(*ref_in), t, reduction="sum")
    ref = [ref_loss.detach(), *torch.autograd.grad(ref_loss, ref_in)]
    errs = {}
    for provider in PROVIDERS:
        loss = loss_fn(provider)(h, w, b, t)
        got = [loss.detach().float(), *[g.float() for g in torch.autograd.grad(loss, (h, w, b))]]
        errs[provider] = [float((a - r).norm() / r.norm().clamp(min=1e-30)) for a, r in zip(got, ref)]
    return errs


def min_bytes(rows, hidden, vocab, dtype, mode):
    e = torch.empty((), dtype=dtype).element_size()
    fwd = (rows * hidden + vocab * hidden + vocab) * e + rows * 8  # h, W, b, targets in
    bwd = fwd + (rows * hidden + vocab * hidden + vocab) * e  # read again, gradients out
    return fwd if mode == "forward" else fwd + bwd


def run(device) -> list:
    device = torch.device(device)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    rows = []
    for n, k, v, dtype in cases:
        inputs = make_inputs(n, k, v, dtype, device)
        errs = check(inputs) if device.type == "cuda" else None
        if errs is not None and any(a > 2 * b + 1e-5 for a, b in zip(errs["triton"], errs["torch"])):
            raise AssertionError(f"linear_cross_entropy {n}x{k}x{v} {dtype}: errors {errs['triton']} vs PyTorch's "
                                 f"{errs['torch']}: not timing a wrong kernel")
        for provider in PROVIDERS:
            for mode in MODES:
                row = {"op": "lm_head + cross_entropy", "rows": n, "hidden": k, "vocab": v,
                       "dtype": str(dtype).split(".")[-1], "provider": provider, "mode": mode}
                if provider == "triton" and device.type != "cuda":
                    rows.append({**row, "status": "skipped", "reason": "Triton needs CUDA to be timed"})
                    continue
                fn = make_call(provider, mode, inputs)
                t = time_op(fn, device)
                med = t.median_ms
                reset_peak_memory(device)
                fn()
                flops = 2 * n * k * v * (1 if mode == "forward" else 4)  # backward: recompute + two gradients
                rows.append({**row, "status": "ok", "median_ms": med, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
                             "TFLOP/s": flops / (med * 1e-3) / 1e12,
                             "GB/s_min_bytes": min_bytes(n, k, v, dtype, mode) / (med * 1e-3) / 1e9,
                             "peak_mb": peak_memory_mb(device) if device.type == "cuda" else None,
                             "rel_err_vs_fp32": errs[provider] if errs else None})
        del inputs
    add_speedups_vs_torch(rows, ("rows", "hidden", "vocab", "dtype", "mode"))
    return rows
