"""Fused bias + GELU: ``gelu(x + bias)``, exact (erf, BERT's ``"gelu"``) or tanh-approximated (``"gelu_new"``).

``bias_gelu`` runs the Triton kernel (kernels/gelu.py) where ``_dispatch.use_triton`` says (CUDA tensors, CPU
tensors under ``TRITON_INTERPRET=1``; not float64), the PyTorch path otherwise. The output has ``x``'s dtype
even when ``bias`` is float32 (BERT under AMP: a bf16/fp16 matmul output plus an fp32 bias parameter, as
autocast's ``addmm`` would give); the bias gradient has the bias's dtype.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._dispatch import kernels, use_triton


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with unit column stride, a view whenever possible."""
    t2 = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] <= 1 else t2.contiguous()


# ---- the launchers as torch custom ops, so torch.compile sees through them (used only while compiling:
# in eager mode a custom op's dispatch costs more than this kernel on a GPU).


@torch.library.custom_op("fastbert::bias_gelu_fwd", mutates_args=())
def _bias_gelu_fwd_op(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    return kernels("gelu").bias_gelu_fwd(x, bias, approximate)


@_bias_gelu_fwd_op.register_fake
def _(x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastbert::bias_gelu_bwd", mutates_args=())
def _bias_gelu_bwd_op(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
                      approximate: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return kernels("gelu").bias_gelu_bwd(dy, x, bias, approximate)


@_bias_gelu_bwd_op.register_fake
def _(dy, x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(bias.shape, dtype=torch.float32)


def _fwd(x, bias, approximate):
    if torch.compiler.is_compiling():
        return _bias_gelu_fwd_op(x, bias, approximate)
    return kernels("gelu").bias_gelu_fwd(x, bias, approximate)


def _bwd(dy, x, bias, approximate):
    if torch.compiler.is_compiling():
        return _bias_gelu_bwd_op(dy, x, bias, approximate)
    return kernels("gelu").bias_gelu_bwd(dy, x, bias, approximate)


class BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate):
        shape = x.shape
        x2 = _rows(x)
        bias = bias.contiguous()
        y = _fwd(x2, bias, approximate)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(x2, bias)
            ctx.shape = shape
            ctx.approximate = approximate
        return y.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        dx, db = _bwd(_rows(dy), x2, bias, ctx.approximate)
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
    if use_triton(x, bias):
        return BiasGeluFunction.apply(x, bias, approximate)
    return F.gelu(x + bias.to(x.dtype), approximate=approximate)
