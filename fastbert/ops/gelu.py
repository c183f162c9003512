"""Fused bias + GELU: ``gelu(x + bias)``, exact (erf, BERT's ``"gelu"``) or tanh-approximated (``"gelu_new"``).

``bias_gelu`` runs the Triton kernel (kernels/gelu.py) for CUDA tensors, and for CPU tensors under
``TRITON_INTERPRET=1``; otherwise, and for float64 inputs, the PyTorch path. The output has ``x``'s dtype
even when ``bias`` is float32 (BERT under AMP: a bf16/fp16 matmul output plus an fp32 bias parameter, as
autocast's ``addmm`` would give); the bias gradient has the bias's dtype.
"""
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._dispatch import kernels, use_triton

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with unit column stride, a view whenever possible."""
    t2 = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] <= 1 else t2.contiguous()


class BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate):
        shape = x.shape
        x2 = _rows(x)
        bias = bias.contiguous()
        y = kernels("gelu").bias_gelu_fwd(x2, bias, approximate)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(x2, bias)
            ctx.shape = shape
            ctx.approximate = approximate
        return y.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        dx, db = kernels("gelu").bias_gelu_bwd(_rows(dy), x2, bias, ctx.approximate)
        return (
            dx.view(ctx.shape) if ctx.needs_input_grad[0] else None,
            db.to(bias.dtype) if ctx.needs_input_grad[1] else None,
            None,  # approximate
        )


def _check(x, bias, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"bias_gelu: approximate must be 'none' (exact erf GELU, BERT's 'gelu') or 'tanh' "
                         f"('gelu_new'), got {approximate!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise TypeError("bias_gelu: x and bias must be tensors (use torch.nn.functional.gelu without a bias)")
    if x.dim() == 0:
        raise ValueError("bias_gelu: x must have at least one dimension (..., features)")
    if tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias_gelu: bias has shape {tuple(bias.shape)} but x's last dimension is "
                         f"{x.shape[-1]}; expected bias of shape ({x.shape[-1]},)")
    for name, t in (("x", x), ("bias", bias)):
        if not t.is_floating_point():
            raise TypeError(f"bias_gelu: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
    if bias.device != x.device:
        raise ValueError(f"bias_gelu: bias is on {bias.device} but x is on {x.device}; move them to one device")


def bias_gelu(x, bias, approximate="none"):
    """``gelu(x + bias)`` with ``bias`` ``(features,)`` broadcast over ``x`` ``(..., features)``.

    ``approximate="none"`` is the exact erf GELU (BERT's ``hidden_act="gelu"``), ``"tanh"`` the tanh
    approximation (``"gelu_new"``). The result has ``x``'s dtype.
    """
    _check(x, bias, approximate)
    if use_triton(x) and x.dtype in _KERNEL_DTYPES and bias.dtype in _KERNEL_DTYPES:
        return BiasGeluFunction.apply(x, bias, approximate)
    return F.gelu(x + bias.to(x.dtype), approximate=approximate)
