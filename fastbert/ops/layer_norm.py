"""Fused residual + LayerNorm: ``y = LN(x + residual) * weight + bias``.

``layer_norm`` runs the Triton kernel (kernels/layer_norm.py) where ``_dispatch.use_triton`` says (CUDA
tensors, CPU tensors under ``TRITON_INTERPRET=1``; not float64) up to the kernel's hidden size limit, the
PyTorch path otherwise. Both paths compute the same thing:

- ``x + residual`` follows PyTorch's type promotion and is rounded to that dtype before normalizing, as
  ``F.layer_norm(x + residual, ...)`` does; ``y`` (and the returned sum) have that dtype.
- ``weight`` / ``bias`` may have another float dtype than the activations (BERT under AMP: bf16/fp16
  activations, fp32 parameters); the output keeps the activations' dtype and the parameters' gradients
  theirs. Mean and 1/std are computed in fp32.
- ``weight`` and ``bias`` are required (BERT always has them) and must have shape ``(hidden,)``.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._dispatch import kernels, use_triton

MAX_HIDDEN_SIZE = 16384  # kernels/layer_norm.py's limit (one row per block); larger takes the PyTorch path


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with unit column stride, a view whenever possible."""
    t2 = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] <= 1 else t2.contiguous()


# ---- the launchers as torch custom ops, so torch.compile sees through them (used only while compiling:
# in eager mode a custom op's dispatch costs more than a LayerNorm kernel on a GPU).


@torch.library.custom_op("fastbert::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd_op(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
                       bias: torch.Tensor, eps: float, store_residual: bool,
                       store_stats: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, z, mean, rstd = kernels("layer_norm").layer_norm_fwd(x, weight, bias, eps, residual, store_residual,
                                                            store_stats)
    # A custom op returns tensors only: absent outputs are empty.
    return (y, y.new_empty(0) if z is None else z,
            x.new_empty(0, dtype=torch.float32) if mean is None else mean,
            x.new_empty(0, dtype=torch.float32) if rstd is None else rstd)


@_layer_norm_fwd_op.register_fake
def _(x, residual, weight, bias, eps, store_residual, store_stats):
    m, n = x.shape
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    stats = (m,) if store_stats else (0,)
    return (x.new_empty((m, n), dtype=dtype),
            x.new_empty((m, n) if store_residual and residual is not None else (0,), dtype=dtype),
            x.new_empty(stats, dtype=torch.float32), x.new_empty(stats, dtype=torch.float32))


@torch.library.custom_op("fastbert::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(dy: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor, dz: Optional[torch.Tensor], dx_dtype: torch.dtype,
                       dres_dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    dx, dres, dw, db = kernels("layer_norm").layer_norm_bwd(dy, z, weight, mean, rstd, dz, dx_dtype, dres_dtype)
    # Outputs may not alias: a residual gradient equal to dx is returned empty (the caller reuses dx), and
    # dweight / dbias are two rows of one reduction.
    return dx, dx.new_empty(0) if dres is None or dres is dx else dres, dw, db.clone()


@_layer_norm_bwd_op.register_fake
def _(dy, z, weight, mean, rstd, dz, dx_dtype, dres_dtype):
    m, n = z.shape
    separate = dres_dtype is not None and dres_dtype != dx_dtype
    return (z.new_empty((m, n), dtype=dx_dtype),
            z.new_empty((m, n) if separate else (0,), dtype=dres_dtype or dx_dtype),
            z.new_empty((n,), dtype=torch.float32), z.new_empty((n,), dtype=torch.float32))


def _fwd(x, residual, weight, bias, eps, store_residual, store_stats):
    if torch.compiler.is_compiling():
        y, z, mean, rstd = _layer_norm_fwd_op(x, residual, weight, bias, eps, store_residual, store_stats)
        return y, (z if store_residual and residual is not None else None), (mean if store_stats else None), \
            (rstd if store_stats else None)
    return kernels("layer_norm").layer_norm_fwd(x, weight, bias, eps, residual, store_residual, store_stats)


def _bwd(dy, z, weight, mean, rstd, dz, dx_dtype, dres_dtype):
    if torch.compiler.is_compiling():
        dx, dres, dw, db = _layer_norm_bwd_op(dy, z, weight, mean, rstd, dz, dx_dtype, dres_dtype)
        if dres_dtype is None:
            dres = None
        elif dres_dtype == dx_dtype:
            dres = dx
        return dx, dres, dw, db
    return kernels("layer_norm").layer_norm_bwd(dy, z, weight, mean, rstd, dz, dx_dtype, dres_dtype)


class LayerNormFunction(torch.autograd.Function):
    """Autograd over the Triton kernels. ``return_residual`` requires a ``residual``."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, return_residual):
        shape = x.shape
        needs_grad = any(ctx.needs_input_grad[:4])
        has_residual = residual is not None
        x2 = _rows(x)
        weight, bias = weight.contiguous(), bias.contiguous()
        y, z, mean, rstd = _fwd(x2, _rows(residual) if has_residual else None, weight, bias, eps,
                                return_residual or (needs_grad and has_residual), needs_grad)
        ctx.set_materialize_grads(False)
        if needs_grad:
            # The backward needs the LayerNorm input: x + residual (stored by the forward), or x itself.
            ctx.save_for_backward(z if has_residual else x2, weight, mean, rstd)
            ctx.shape = shape
            ctx.dtypes = (x.dtype, weight.dtype, bias.dtype, residual.dtype if has_residual else None)
        y = y.view(shape)
        return (y, z.view(shape)) if return_residual else y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dz=None):
        ln_input, weight, mean, rstd = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype, res_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        if dy is None:  # only the returned x + residual was used
            dy = torch.zeros(ctx.shape, dtype=ln_input.dtype, device=ln_input.device)
        dx, dres, dw, db = _bwd(_rows(dy), ln_input, weight, mean, rstd, _rows(dz) if dz is not None else None,
                                x_dtype, res_dtype if needs[3] else None)
        return (
            dx.view(ctx.shape) if needs[0] else None,
            dw.to(w_dtype) if needs[1] else None,
            db.to(b_dtype) if needs[2] else None,
            dres.view(ctx.shape) if needs[3] else None,
            None,  # eps
            None,  # return_residual
        )


def _check(x, weight, bias, residual):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"layer_norm: x must be a tensor, got {type(x).__name__}")
    if weight is None or bias is None:
        raise TypeError("layer_norm: weight and bias are required (BERT's LayerNorm always has both); "
                        "use torch.nn.functional.layer_norm for a LayerNorm without them")
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension (..., hidden)")
    n = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if tuple(p.shape) != (n,):
            raise ValueError(f"layer_norm: {name} has shape {tuple(p.shape)} but x's hidden size is {n}; "
                             f"expected {name} of shape ({n},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"layer_norm: residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}; "
                         "they must be equal (no broadcasting)")
    tensors = [("x", x), ("weight", weight), ("bias", bias)]
    if residual is not None:
        tensors.append(("residual", residual))
    for name, t in tensors:
        if not t.is_floating_point():
            raise TypeError(f"layer_norm: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
        if t.device != x.device:
            raise ValueError(f"layer_norm: {name} is on {t.device} but x is on {x.device}; move them to one device")


def _layer_norm_torch(x, weight, bias, eps, residual, return_residual):
    if residual is not None:
        x = x + residual
    if weight.dtype == x.dtype and bias.dtype == x.dtype:
        y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    else:  # mixed parameter dtype: normalize in fp32, return the activation dtype
        y = F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps).to(x.dtype)
    return (y, x) if return_residual else y


def layer_norm(x, weight, bias, eps=1e-12, residual=None, return_residual=False):
    """``LN(x + residual) * weight + bias`` over the last dimension.

    Args:
        x: ``(..., hidden)`` activations, float32 / float16 / bfloat16, any strides.
        weight, bias: ``(hidden,)``; may be float32 while ``x`` is half precision.
        eps: added to the variance (BERT's ``layer_norm_eps``).
        residual: optional, same shape as ``x``; added to ``x`` first (PyTorch type promotion).
        return_residual: also return ``x + residual`` (the next layer's residual).

    Returns ``y``, or ``(y, x + residual)`` when ``return_residual``.
    """
    _check(x, weight, bias, residual)
    tensors = [x, weight, bias] + ([residual] if residual is not None else [])
    if use_triton(*tensors) and x.shape[-1] <= MAX_HIDDEN_SIZE:
        if residual is None:
            y = LayerNormFunction.apply(x, weight, bias, None, float(eps), False)
            return (y, x) if return_residual else y
        return LayerNormFunction.apply(x, weight, bias, residual, float(eps), bool(return_residual))
    return _layer_norm_torch(x, weight, bias, eps, residual, return_residual)
