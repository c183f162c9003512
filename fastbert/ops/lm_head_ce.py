"""Vocabulary projection + cross-entropy in one op, the logits never materialised (the MLM loss).

``linear_cross_entropy(hidden, weight, bias, target)`` returns, per row, the cross-entropy of
``hidden @ weight.T + bias`` against ``target`` (0 where ``target == ignore_index``) and the argmax of the
logits (for accuracy). It runs the Triton kernel pair (kernels/lm_head_ce.py) where ``_dispatch.use_triton``
says (CUDA tensors, CPU tensors under ``TRITON_INTERPRET=1``), the PyTorch path (``F.linear`` +
``F.cross_entropy``) otherwise.
The loss is fp32 whatever the inputs' dtype (as the MLM loss computed from fp32-cast logits).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._dispatch import kernels, use_triton


@torch.library.custom_op("fastbert::lm_head_ce_fwd", mutates_args=())
def _fwd_op(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], target: torch.Tensor,
            ignore_index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels("lm_head_ce").lm_head_ce_fwd(hidden, weight, bias, target, ignore_index)


@_fwd_op.register_fake
def _(hidden, weight, bias, target, ignore_index):
    n = hidden.shape[0]
    return (hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(n, dtype=torch.float32),
            hidden.new_empty(n, dtype=torch.int64))


def _fwd(*args):
    if torch.compiler.is_compiling():
        return _fwd_op(*args)
    return kernels("lm_head_ce").lm_head_ce_fwd(*args)


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index):
        loss, lse, argmax = _fwd(hidden, weight, bias, target, ignore_index)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.ignore_index = ignore_index
        ctx.mark_non_differentiable(argmax)
        return loss, argmax

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss, _dargmax):
        hidden, weight, bias, target, lse = ctx.saved_tensors
        need = ctx.needs_input_grad
        dh, dw, db = kernels("lm_head_ce").lm_head_ce_bwd(dloss, hidden, weight, bias, target, lse, ctx.ignore_index,
                                                          need[0], need[1], bias is not None and need[2])
        return dh, dw, db, None, None


def _check(hidden, weight, bias, target):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be (N, K) and weight (V, K), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    if target.shape != hidden.shape[:1] or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be an integer tensor of shape ({hidden.shape[0]},), got "
                         f"{target.dtype} {tuple(target.shape)}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(f"hidden, weight and bias must share a dtype, got {hidden.dtype}, {weight.dtype}, "
                         f"{None if bias is None else bias.dtype}; cast them (under autocast, to its dtype)")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         target: torch.Tensor, ignore_index: int = -100) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(loss (N,) fp32, argmax (N,) int64)`` of the logits ``hidden @ weight.T + bias``.

    Args:
        hidden: (N, K), the rows to score (for MLM: the masked positions after the head's transform).
        weight: (V, K) (for BERT: the decoder, tied to the word embeddings); bias: (V,) or None.
        target: (N,) class indices; rows equal to ``ignore_index`` get loss 0 and no gradient.
    """
    _check(hidden, weight, bias, target)
    if not use_triton(hidden):  # (weight and bias share its dtype)
        logits = F.linear(hidden, weight, bias).float()
        loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
        return loss, logits.detach().argmax(-1)
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    return LinearCrossEntropyFunction.apply(hidden, weight, bias, target.long(), int(ignore_index))
