"""Benchmark: fastbert's Triton attention vs ``torch.nn.functional.scaled_dot_product_attention``.

Two parts:

1. ``dense``: head dim 64, 12 heads, seqlen 128 / 256 / 512, batch filling the GPU (32768 tokens), bf16, with
   no mask and with a key-padding mask whose every token is real (so every provider does the same, full work
   and TFLOP/s are comparable). Providers: ``fastbert`` (Triton) and SDPA pinned to each backend
   (``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn``, ``sdpa-math``); a backend that refuses a case is
   reported ``unsupported`` with PyTorch's reason. ``fastbert-separate-dq``: the backward with dQ in its own
   kernel (``deterministic=True``) instead of relaxed atomics, timed to pick the default.
2. ``varlen``: a realistic length mix (lengths uniform in 32..512, 64 sequences): fastbert padded + mask,
   fastbert packed (``cu_seqlens``), SDPA padded + mask. TFLOP/s there count only the useful FLOPs
   (sum over sequences of 4 * H * L^2 * D), so padding work shows as lower TFLOP/s.

Modes: ``forward`` (inference: no grad), ``backward`` (dq, dk, dv from a saved graph) and ``full`` (both).
FLOPs: forward 4 * B * H * S^2 * D (non-causal), backward 2.5x that, full 3.5x. Times: medians with 20th/80th
percentiles of ``timer.time_op`` (CUDA events, L2 flushed before every call) on CUDA. Before timing,
fastbert's output and dq, dk, dv are checked against a float64 reference (error at most 2x SDPA's for the
output, 3x for gradients, plus a floor), padded and packed: a wrong kernel is never timed. On CPU only SDPA
is timed (wall clock; the Triton interpreter is not a speed measurement).

    python -m pytest benchmarks/bench_attention.py -o addopts=""      # pytest-benchmark
    python -c "import fastbert.benchmarks.bench_attention as b, torch; print(b.run(torch.device('cuda')))"
"""
import contextlib
import random

import pytest
import torch
import torch.nn.functional as F

from fastbert.benchmarks.common import check_against_reference
from fastbert.benchmarks.timer import synced, time_op
from fastbert.ops import attention

HEADS, HEAD_DIM = 12, 64
TOKENS = 32768  # batch * seqlen of the dense cases on a GPU
CUDA_SEQLENS = (128, 256, 512)
CPU_CASE = dict(batch=4, seqlen=128, dtype=torch.float32)
SDPA_BACKENDS = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")
MODES = ("forward", "backward", "full")
FLOP_FACTOR = {"forward": 1.0, "backward": 2.5, "full": 3.5}
VARLEN_BATCH, VARLEN_LOW, VARLEN_HIGH = 64, 32, 512
# fastbert with deterministic=True: dQ in a separate kernel instead of relaxed atomics in the dK/dV kernel, whose
# dK/dV tile can then be 64x64 on wgmma (docs/perf-notes.md): the GPU session decides the default from this row.
SEPARATE_DQ = "fastbert-separate-dq"


def _dtype_name(dtype):
    return str(dtype).split(".")[-1]


def _backend_ctx(provider):
    """A context pinning SDPA to one backend (``sdpa`` alone: PyTorch's own choice)."""
    if not provider.startswith("sdpa-"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
               "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}[provider]
    return sdpa_kernel(backend)


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(batch, seqlen, dtype, device, lengths=None, seed=0):
    """q, k, v (B, S, H, D) requiring grad, dout, a (B, S) key mask (all real when lengths is None)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, dout = (torch.randn(batch, seqlen, HEADS, HEAD_DIM, generator=g).to(device=device, dtype=dtype)
                     for _ in range(4))
    lengths = lengths or [seqlen] * batch
    mask = torch.arange(seqlen, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    return [t.requires_grad_() for t in (q, k, v)] + [dout, mask]


def make_call(provider, mode, q, k, v, dout, mask, packed=None):
    """A no-argument callable running one ``mode`` step.

    provider: ``fastbert`` or an SDPA backend; mask None = no mask; packed = (q, k, v, dout, cu, max_seqlen).
    SDPA gets its native (B, H, S, D) layout prepared outside the timed call.
    """
    if provider.startswith("fastbert"):
        det = provider == SEPARATE_DQ  # the backward's dQ in its own kernel (no atomics)
        if packed is not None:
            q, k, v, dout, cu, max_seqlen = packed
            f = lambda: attention(q, k, v, cu_seqlens=cu, max_seqlen=max_seqlen, deterministic=det)  # noqa: E731
        else:
            f = lambda: attention(q, k, v, key_padding_mask=mask, deterministic=det)  # noqa: E731
    else:
        q, k, v = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        dout = dout.transpose(1, 2).contiguous()
        attn_mask = None if mask is None else mask[:, None, None, :]
        f = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # noqa: E731
    wrt = (q, k, v)
    if mode == "forward":
        def fwd():
            with torch.no_grad():
                return f()
        return fwd
    if mode == "backward":
        out = f()
        return lambda: torch.autograd.grad(out, wrt, grad_outputs=dout, retain_graph=True)
    return lambda: torch.autograd.grad(f(), wrt, grad_outputs=dout)


def pack(q, k, v, dout, lengths):
    """The packed (T, H, D) layout of a padded batch whose rows hold ``lengths`` real tokens."""
    mask = torch.arange(q.shape[1], device=q.device)[None, :] < torch.tensor(lengths, device=q.device)[:, None]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=q.device)
    qp, kp, vp = (t.detach()[mask].requires_grad_() for t in (q, k, v))
    return qp, kp, vp, dout[mask], cu, max(lengths)




def _sdpa_padded(mask):
    m = mask[:, None, None, :]
    return lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=m).transpose(1, 2)


def check(q, k, v, mask, dout):
    """fastbert vs a float64 reference (SDPA's math on float64 copies), output and dq, dk, dv, against SDPA's
    own error in the same dtype; raises AssertionError before a wrong kernel is timed."""
    return check_against_reference(f"attention {tuple(q.shape)}", lambda q, k, v: attention(q, k, v, key_padding_mask=mask),
                                   _sdpa_padded(mask), (q, k, v), dout, ("q", "k", "v"))


def check_packed(packed, mask):
    """The packed (cu_seqlens) path, output and gradients, against SDPA on the same sequences padded."""
    qp, kp, vp, doutp, cu, max_seqlen = packed
    B, S = mask.shape

    def padded_ref(q, k, v):
        def pad(t):
            return t.new_zeros(B, S, *t.shape[1:]).index_put((mask,), t)
        return _sdpa_padded(mask)(pad(q), pad(k), pad(v))[mask]

    return check_against_reference("attention packed", lambda q, k, v: attention(q, k, v, cu_seqlens=cu,
                                                                                  max_seqlen=max_seqlen),
                                   padded_ref, (qp, kp, vp), doutp, ("q", "k", "v"))


def _measure(row, provider, mode, device, flops, **call):
    """Time one provider/mode into ``row`` (status ok / unsupported / skipped)."""
    if provider == SEPARATE_DQ and mode == "forward":
        return {**row, "status": "skipped", "reason": "same forward as fastbert"}
    if provider.startswith("fastbert") and device.type != "cuda":
        return {**row, "status": "skipped", "reason": "Triton is timed on CUDA only (the interpreter is no speed "
                                                      "measurement)"}
    try:
        with _backend_ctx(provider):
            fn = make_call(provider, mode, **call)
            fn()  # a backend that cannot run this case says so here
            t = time_op(fn, device)
    except RuntimeError as e:
        if provider.startswith("sdpa-"):
            return {**row, "status": "unsupported", "reason": str(e).splitlines()[0][:200]}
        raise
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {**row, "status": "ok", "median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
            "TFLOP/s": flops * FLOP_FACTOR[mode] / (t.median_ms * 1e-3) / 1e12}


def run_dense(device):
    rows = []
    cases = [(TOKENS // s, s, torch.bfloat16) for s in CUDA_SEQLENS] if device.type == "cuda" else \
        [(CPU_CASE["batch"], CPU_CASE["seqlen"], CPU_CASE["dtype"])]
    providers = ("fastbert", SEPARATE_DQ, *SDPA_BACKENDS) if device.type == "cuda" else ("fastbert", "sdpa-math")
    for batch, seqlen, dtype in cases:
        q, k, v, dout, mask = make_inputs(batch, seqlen, dtype, device)
        errors = check(q, k, v, mask, dout) if device.type == "cuda" else None
        err = max(e["err"] for e in errors.values()) if errors else None
        flops = 4.0 * batch * HEADS * seqlen * seqlen * HEAD_DIM
        for masked in (False, True):
            for provider in providers:
                for mode in MODES:
                    row = {"op": "attention", "part": "dense", "batch": batch, "seqlen": seqlen, "heads": HEADS,
                           "head_dim": HEAD_DIM, "dtype": _dtype_name(dtype),
                           "mask": "padding mask (all real)" if masked else "none", "provider": provider,
                           "mode": mode, "max_err": err if provider == "fastbert" else None,
                           "checked": "output + dq, dk, dv vs float64" if errors else None}
                    rows.append(_measure(row, provider, mode, device, flops, q=q, k=k, v=v, dout=dout,
                                         mask=mask if masked else None))
        del q, k, v, dout, mask
    return rows


def run_varlen(device):
    """Padded + mask vs packed at lengths uniform in 32..512 (CUDA only)."""
    if device.type != "cuda":
        return []
    rng = random.Random(0)
    lengths = [rng.randint(VARLEN_LOW, VARLEN_HIGH) for _ in range(VARLEN_BATCH)]
    lengths[0] = VARLEN_HIGH
    seqlen = max(lengths)
    q, k, v, dout, mask = make_inputs(VARLEN_BATCH, seqlen, torch.bfloat16, device, lengths=lengths)
    packed = pack(q, k, v, dout, lengths)
    errors = {"packed": check_packed(packed, mask), "padded": check(q, k, v, mask, dout)}
    useful = sum(4.0 * HEADS * n * n * HEAD_DIM for n in lengths)
    rows = []
    layouts = [("fastbert", "packed (cu_seqlens)", packed), (SEPARATE_DQ, "packed (cu_seqlens)", packed),
               ("fastbert", "padded + mask", None)]
    layouts += [(p, "padded + mask", None) for p in SDPA_BACKENDS]
    for provider, layout, pk in layouts:
        for mode in MODES:
            row = {"op": "attention", "part": "varlen", "batch": VARLEN_BATCH, "seqlen": seqlen,
                   "lengths": f"uniform {VARLEN_LOW}..{VARLEN_HIGH}, mean {sum(lengths) / len(lengths):.0f}",
                   "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16", "layout": layout,
                   "provider": provider, "mode": mode, "flops": "useful only",
                   "checked": "output + dq, dk, dv vs float64 (packed and padded)" if provider == "fastbert" else None,
                   "max_err": max(e["err"] for e in errors["packed" if "packed" in layout else "padded"].values())
                   if provider == "fastbert" else None}
            rows.append(_measure(row, provider, mode, device, useful, q=q, k=k, v=v, dout=dout, mask=mask,
                                 packed=pk))
    return rows


def run(device) -> list:
    """Every case x provider x mode: one dict per measurement (the ``python -m benchmarks`` runner)."""
    device = torch.device(device)
    rows = run_dense(device) + run_varlen(device)
    for row in rows:  # speed-up of fastbert over the fastest SDPA backend, same case and mode
        if row["provider"] == "fastbert" and row["status"] == "ok":
            same = [r for r in rows if r["provider"].startswith("sdpa") and r["status"] == "ok" and all(
                r.get(key) == row.get(key) for key in ("part", "seqlen", "mask", "mode", "batch"))]
            if same:
                best = min(same, key=lambda r: r["median_ms"])
                row["speedup_vs_best_sdpa"] = best["median_ms"] / row["median_ms"]
                row["best_sdpa"] = best["provider"]
    return rows


# ---------------------------------------------------------------------------------------------- pytest


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_SEQLENS = CUDA_SEQLENS if torch.cuda.is_available() else (CPU_CASE["seqlen"],)


@pytest.mark.parametrize("seqlen", _SEQLENS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ("fastbert", *SDPA_BACKENDS))
def test_attention_speed(benchmark, provider, mode, masked, seqlen):
    device = _device()
    if device.type != "cuda" and provider != "sdpa-math":
        pytest.skip("on CPU only sdpa-math is timed (Triton needs CUDA; flash/efficient/cudnn are GPU kernels)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = TOKENS // seqlen if device.type == "cuda" else CPU_CASE["batch"]
    q, k, v, dout, mask = make_inputs(batch, seqlen, dtype, device)
    with _backend_ctx(provider):
        fn = make_call(provider, mode, q, k, v, dout, mask if masked else None)
        try:
            fn()
        except RuntimeError as e:
            pytest.skip(f"{provider} does not run this case: {str(e).splitlines()[0][:200]}")
        flops = 4.0 * batch * HEADS * seqlen * seqlen * HEAD_DIM * FLOP_FACTOR[mode]
        benchmark.extra_info.update(batch=batch, seqlen=seqlen, heads=HEADS, head_dim=HEAD_DIM,
                                    dtype=_dtype_name(dtype), provider=provider, mode=mode, masked=masked,
                                    flops=flops)
        benchmark.pedantic(synced(fn, device), rounds=10, warmup_rounds=2)
