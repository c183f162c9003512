"""Linear layers for CPU inference with their epilogue fused into the GEMM (fastbert's ``cpu`` backend).

oneDNN's ``_linear_pointwise`` (what inductor's CPU path lowers ``F.linear`` to) computes ``x @ W.T + b``
and then, before the result leaves the GEMM's tiles, GELU or the residual add: one pass over the output
instead of two or three. In bfloat16 it runs on AMX (or AVX512-BF16) with fp32 accumulation, and the
epilogue is applied in fp32 before the one rounding to bf16. Inference only: these ops have no autograd
formula, so the ``cpu`` backend is chosen only with gradients off (``fastbert.modeling_bert.resolve_backend``).
Inputs are packed ``(tokens, features)``.

Frozen weights (``requires_grad=False``, as ``SentenceEncoder`` leaves its model) are also reordered once into
oneDNN's blocked layout (``packed_weight``; 6% faster GEMMs in fp32, 15% in bf16 at MiniLM's shapes); a weight
that can train is used as it is, since an optimizer may update it in place without a trace (fused AdamW leaves
``_version`` unchanged) and a stale copy would be a silent wrong answer.
"""
import os
import weakref

import torch
import torch.nn.functional as F


# Read once at import (a constant torch.compile can trace through): whether this torch build has oneDNN's
# fused linear ops (every x86-64 and aarch64 CPU wheel does).
_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_linear_available() -> bool:
    return _AVAILABLE


_PACKED = weakref.WeakKeyDictionary()  # owner module -> (key of the tensors it was made from, packed weight)


def packed_weight(owner, params, make):
    """The weight ``make()`` builds from ``params``, reordered for oneDNN once and cached per ``owner`` while
    those parameters are frozen and unchanged (same storage, same version, same dtype); ``make()`` as it is
    when any of them can train. Never stored on the module (a packed tensor cannot be pickled or saved)."""
    if any(p.requires_grad for p in params):
        return make()
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    cached = _PACKED.get(owner)
    if cached is None or cached[0] != key:
        cached = (key, torch.ops.mkldnn._reorder_linear_weight(make(), None))
        _PACKED[owner] = cached
    return cached[1]


def linear(x: torch.Tensor, weight: torch.Tensor, bias, gelu=None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then GELU when ``gelu`` is ``"none"`` (erf) or ``"tanh"``."""
    if gelu is None:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "gelu", [], gelu)


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias, residual: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias) + residual``."""
    return torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), residual.contiguous(), weight, bias, "add")


def reference_linear(x, weight, bias, gelu=None, residual=None):
    """What ``linear`` / ``linear_add`` compute, in plain PyTorch (the tests' reference)."""
    out = F.linear(x, weight, bias)
    if gelu is not None:
        out = F.gelu(out, approximate=gelu)
    return out if residual is None else out + residual


# --- attention on AMX tiles (csrc/cpu/attention_amx.cpp) ---------------------------------------------------
#
# softmax(Q K^T * scale) V for bfloat16 over packed sequences, read straight from the fused QKV GEMM's output:
# no padding, no gather, no mask. Used by the cpu backend where the CPU has AMX-BF16 and the extension was
# built; PyTorch's scaled_dot_product_attention (over Q/K/V padded per length group) otherwise.
# FASTBERT_CPU_ATTENTION=sdpa turns it off (to compare the two; read once, at the first use).

_ATTENTION_MODES = ("auto", "amx", "sdpa")
_amx_state = None  # None: not looked at yet; else (usable, why not)


def _amx_attention():
    global _amx_state
    if _amx_state is None:
        mode = os.environ.get("FASTBERT_CPU_ATTENTION", "auto").strip().lower() or "auto"
        if mode not in _ATTENTION_MODES:
            raise ValueError(f"FASTBERT_CPU_ATTENTION={mode!r}: use one of {', '.join(_ATTENTION_MODES)}")
        from .. import hardware

        has_amx = "amx_bf16" in hardware.cpu_flags()
        why = None
        if mode == "sdpa":
            why = "FASTBERT_CPU_ATTENTION=sdpa"
        elif not has_amx:
            why = "this CPU has no AMX-BF16"
        else:
            try:
                from .. import _C_cpu
            except ImportError as e:
                why = f"fastbert._C_cpu is not built ({e})"
            else:
                if not _C_cpu.request_amx():
                    why = "Linux did not grant the AMX tile state (arch_prctl)"
        if why is not None and mode == "amx":
            raise RuntimeError(f"FASTBERT_CPU_ATTENTION=amx, but the AMX attention cannot run: {why}")
        if why is not None and mode == "auto" and has_amx:
            from .._warnings import warn_once

            warn_once("amx-attention", f"this CPU has AMX-BF16 but fastbert's AMX attention cannot run ({why}): "
                      "bf16 attention falls back to PyTorch's scaled_dot_product_attention (slower). Reinstall "
                      "fastbert with a C++ compiler that has OpenMP (g++) to build fastbert._C_cpu.")
        _amx_state = (why is None, why)
    return _amx_state


def amx_attention_available() -> bool:
    """Whether ``packed_attention`` runs here (AMX-BF16, the extension built, the tile state granted)."""
    return _amx_attention()[0]


def amx_attention_unavailable_reason():
    """Why ``packed_attention`` does not run here (None when it does)."""
    return _amx_attention()[1]


def packed_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int, head_dim: int,
                     scale: float) -> torch.Tensor:
    """Attention of packed sequences on AMX tiles. ``qkv``: (rows, 3 * heads * head_dim) bfloat16, Q, K and V
    side by side as the fused QKV linear writes them; ``cu_seqlens``: (B + 1,) offsets into the rows (rows past
    the last sequence, if any, get zeros). Returns (rows, heads * head_dim) bfloat16. head_dim 32 or 64."""
    if not amx_attention_available():
        raise RuntimeError(f"packed_attention cannot run here: {amx_attention_unavailable_reason()}")
    if qkv.dtype != torch.bfloat16 or qkv.dim() != 2 or qkv.device.type != "cpu":
        raise ValueError(f"packed_attention takes a 2-D bfloat16 CPU tensor, got {tuple(qkv.shape)} {qkv.dtype} "
                         f"on {qkv.device}")
    if head_dim not in (32, 64) or qkv.shape[1] != 3 * heads * head_dim:
        raise ValueError(f"packed_attention: qkv has {qkv.shape[1]} columns for {heads} heads of {head_dim} "
                         "(head_dim must be 32 or 64, columns 3 * heads * head_dim)")
    if qkv.stride(1) != 1:
        qkv = qkv.contiguous()
    cu = cu_seqlens.to(device="cpu", dtype=torch.int32).contiguous()
    out = torch.empty(qkv.shape[0], heads * head_dim, dtype=torch.bfloat16)
    from .. import _C_cpu

    # the C++ side checks cu_seqlens (starts at 0, never decreases, ends within the rows) before reading
    _C_cpu.attention_bf16(qkv.data_ptr(), qkv.stride(0), out.data_ptr(), out.stride(0), cu.data_ptr(),
                          cu.numel() - 1, qkv.shape[0], heads, head_dim, float(scale), torch.get_num_threads())
    return out


def reference_attention(qkv, cu_seqlens, heads, head_dim, scale):
    """What ``packed_attention`` computes, in float64 per sequence (the tests' reference)."""
    H = heads * head_dim
    out = torch.zeros(qkv.shape[0], H, dtype=torch.float64)
    cu = cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        if e > s:
            q, k, v = qkv[s:e].double().view(e - s, 3, heads, head_dim).permute(1, 2, 0, 3)
            p = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1)
            out[s:e] = (p @ v).transpose(0, 1).reshape(e - s, H)
    return out
