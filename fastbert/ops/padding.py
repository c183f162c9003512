"""Removing and restoring padding, so the encoder spends no work on pad tokens.

``unpad_input`` runs once after the embeddings, ``pad_input`` once after the last layer (the scheme of
FlashAttention's ``bert_padding``). Both are differentiable index operations.
"""
from typing import NamedTuple, Optional

import torch


class Unpadded(NamedTuple):
    hidden_states: torch.Tensor  # (total_tokens, ...)
    indices: torch.Tensor  # (total_tokens,) flat positions in the (batch * seqlen) layout
    cu_seqlens: torch.Tensor  # (batch + 1,) int32, cumulative sequence lengths starting at 0
    max_seqlen: int


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, total: Optional[int] = None,
                max_seqlen: Optional[int] = None) -> Unpadded:
    """(batch, seqlen, ...) and a (batch, seqlen) mask of real tokens -> packed (total_tokens, ...).

    Real tokens must form a prefix of each row only for ``cu_seqlens`` to describe them; a mask with holes
    is packed in order as well, each row's kept tokens becoming one sequence. ``total`` (real tokens) and
    ``max_seqlen`` (the longest row), when the caller knows them, save the two device->host reads.
    """
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, seqlen) = "
            f"{tuple(hidden_states.shape[:2])}"
        )
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=1, dtype=torch.int32)
    if total is None:
        total = int(seqlens.sum())
    if max_seqlen is None:
        max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    indices = mask_indices(mask, total)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return Unpadded(flat.index_select(0, indices), indices, cu_seqlens, max_seqlen)


def mask_indices(mask: torch.Tensor, total: int) -> torch.Tensor:
    """Flat positions of the ``total`` True entries of ``mask``, in order, without a device->host read
    (``nonzero`` reads its output size back): a stable sort puts the True entries first."""
    flat = mask.reshape(-1)
    order = torch.argsort((~flat).to(torch.uint8), stable=True)
    return order[:total]


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Packed (total_tokens, ...) -> (batch, seqlen, ...), zeros at the padded positions."""
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out = out.index_copy(0, indices, hidden_states)
    return out.view(batch, seqlen, *hidden_states.shape[1:])


def seqlens_to_cu_seqlens(seqlens: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))


def packed_positions(cu_seqlens: torch.Tensor, total: int):
    """(sequence index, position in its sequence) of each of the ``total`` packed tokens, as int64: a cumsum
    over the marked sequence starts. No device->host read and no sort or ``repeat_interleave``, so the
    packed forward also exports to ONNX."""
    cu = cu_seqlens.long()
    # a 1 where each sequence starts (at ``total`` for empty ones at the end), then a running count
    marks = torch.zeros(total + 1, dtype=torch.long, device=cu.device).index_add(0, cu, torch.ones_like(cu))
    seq = marks[:total].cumsum(0) - 1
    return seq, torch.arange(total, device=cu.device) - cu.index_select(0, seq)


def cu_seqlens_to_mask(cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """(batch + 1,) cumulative lengths -> (batch, max_seqlen) bool mask of real tokens."""
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    pos = torch.arange(max_seqlen, device=cu_seqlens.device)
    return pos[None, :] < seqlens[:, None]
