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
