"""How one forward's tokens are laid out for the encoder layers: the ``Batch`` every layer reads.

Padded: hidden states are (B, S, H) with a (B, S) key-padding mask (or a general mask on the PyTorch path).
Packed: hidden states are (T, H), real tokens only, with ``cu_seqlens`` / ``max_seqlen``. The Triton kernels
read ``cu_seqlens`` directly. The PyTorch and cpu paths run their GEMMs on the packed rows too, and each
layer's attention pads just Q/K/V into (n, S) per ``AttentionGroup`` for ``scaled_dot_product_attention``:
one group for a batch sorted by length, groups of similar lengths for a first-come batch (``length_groups``),
the index arithmetic built once per forward, when the first layer asks for it (``packed_batch``).
"""
from typing import List, NamedTuple, Optional

import torch

from . import ops
from .model_inputs import tracing


class Batch:
    """How the token rows of one forward pass are laid out, shared by every layer.

    Padded: hidden states are (B, S, H) and ``mask`` is (B, S) bool (True = real token) or None.
    Packed: hidden states are (T, H) and ``cu_seqlens``/``max_seqlen`` describe the sequences.
    """

    def __init__(self, backend, mask=None, cu_seqlens=None, max_seqlen=None, bias=None, rows=None, layout=None):
        self.backend = backend
        self.mask = mask
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = max_seqlen
        self.bias = bias  # torch path only: a general (B, 1 or heads, S, S) mask, bool (True = attend) or additive
        # torch and cpu paths, packed: how attention pads Q/K/V, one AttentionGroup per group of sequences of
        # similar length (see _packed_layout); ``restore`` (rows,) puts the groups' tokens back in packed order
        # (None: they are in it). ``layout``: a function that builds both, run the first time a layer asks
        # (the cpu path's AMX attention never does: it reads the packed rows as they are)
        self._groups = self._restore = None
        self._layout = layout
        # cpu path: the packed rows every layer runs on, the tokens rounded up to a bucket (extra rows are copies
        # of the first, attended to by nobody and dropped at the end) so that oneDNN, which builds a GEMM kernel
        # per row count, reuses a few dozen kernels instead of building one for nearly every batch
        self.rows = rows

    def _build_layout(self):
        if self._layout is not None:
            layout, self._layout = self._layout, None
            self._groups, self._restore = layout()

    @property
    def groups(self) -> Optional[List["AttentionGroup"]]:
        self._build_layout()
        return self._groups

    @property
    def restore(self) -> Optional[torch.Tensor]:
        self._build_layout()
        return self._restore

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


class AttentionGroup(NamedTuple):
    """n sequences padded to S for ``scaled_dot_product_attention``: ``gather`` (n*S,) the packed row each
    padded position copies (a padding position copies a real token of its own sequence: finite, and masked out
    as a key; None: the n*S rows are the packed rows as they are), ``mask`` (n, 1, 1, S) real keys or None,
    ``real`` (tokens,) the padded positions of the real tokens, in order (None: all of them)."""
    gather: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    n: int
    S: int
    real: Optional[torch.Tensor]


def packed_batch(backend, cu_seqlens, max_seqlen, total, dtype=None) -> Batch:
    """The Batch of packed sequences: the Triton kernels read ``cu_seqlens`` directly; the PyTorch and cpu
    paths' attention also needs the padded (B, max_seqlen) layout it pads Q/K/V into (none when every sequence
    is max_seqlen long), built when a layer first asks for it. ``dtype``: the hidden states' (the cpu path
    rounds its rows up to a bucket in bf16 and fp16 only, see ``bucket_rows``)."""
    if backend == "triton":
        ops.trust_cu_seqlens(cu_seqlens, total, max_seqlen)
        return Batch("triton", cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
    rows = bucket_rows(total) if backend == "cpu" and dtype in (torch.bfloat16, torch.float16) else total
    rows = None if rows == total else rows
    return Batch(backend, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, rows=rows,
                 layout=lambda: _packed_layout(cu_seqlens, max_seqlen, total, rows))


def bucket_rows(total: int) -> int:
    """The cpu path's row count for ``total`` tokens in bf16/fp16: 8 buckets per octave, multiples of 16 (at
    most 1/8 more rows).

    In bf16 oneDNN builds an AMX GEMM kernel per row count, ~12 ms each (MiniLM's 1536 x 384 GEMM: 15 ms the
    first time a row count is seen, 3.8 ms after), so a few dozen buckets are cheaper than a new kernel for
    nearly every batch. In fp32 a new row count costs nothing measurable and the extra rows ~6% more GEMM work
    on average: exact rows there (1,200 texts: 130 vs 119 texts/s, 2 threads)."""
    if total < 256:
        return -(-total // 16) * 16
    step = 1 << (total.bit_length() - 4)
    return -(-total // step) * step


def _packed_layout(cu_seqlens, max_seqlen, total, rows):
    """(groups, restore) of the padded layout attention pads Q/K/V into; with ``rows`` (bucketed, > total) the
    attention output is gathered straight into the bucketed rows, the extra ones copying token 0."""
    groups, restore = _padded_groups(cu_seqlens, max_seqlen, total)
    if rows is None:
        return groups, restore
    extra = torch.zeros(rows - total, dtype=torch.long)
    if restore is not None:
        return groups, torch.cat([restore, extra])
    g = groups[0]
    real = g.real if g.real is not None else torch.arange(g.n * g.S)
    return [g._replace(real=torch.cat([real.to(torch.long), extra]))], None


def _padded_groups(cu_seqlens, max_seqlen, total):
    B = cu_seqlens.numel() - 1
    if not tracing() and cu_seqlens.device.type == "cpu":  # lengths on the host: read for free
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        groups = length_groups(lengths)
        if len(groups) > 1:
            return _grouped_layout(cu_seqlens, lengths, groups)
        if total == B * max_seqlen:
            return [AttentionGroup(None, None, B, max_seqlen, None)], None
    # One group, by elementwise index arithmetic only (no sort, no host read: traced graphs, ONNX, CUDA).
    seq, position = ops.padding.packed_positions(cu_seqlens, total)
    starts, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    group = _attention_group(starts, lengths, max_seqlen, total)._replace(real=seq * max_seqlen + position)
    return [group], None


def _attention_group(starts, lengths, S, total) -> AttentionGroup:
    """The padded (n, S) layout of the sequences at packed ``starts`` with ``lengths`` (``real`` left to the
    caller)."""
    pos = torch.arange(S, device=starts.device)
    gather = (starts[:, None] + torch.minimum(pos[None, :], (lengths - 1).clamp(min=0)[:, None])).reshape(-1)
    mask = (pos[None, :] < lengths[:, None])[:, None, None, :]  # (n, 1, 1, S)
    return AttentionGroup(gather.clamp(max=max(total - 1, 0)), mask, starts.numel(), S, None)


def length_groups(lengths: List[int], ratio: float = 0.75, most: int = 8) -> List[List[int]]:
    """Sequences (their indices) grouped for padded attention, whose cost grows with n * S^2: longest first, a
    new group when a sequence is shorter than ``ratio`` times its group's longest (at most ``most`` groups).
    A batch sorted by length (``SentenceEncoder.encode``'s) stays one group; a server's first-come batch of
    mixed lengths splits, so a short text is not padded to the longest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups = []
    for i in order:
        if groups and (lengths[i] >= ratio * lengths[groups[-1][0]] or len(groups) == most):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _grouped_layout(cu_seqlens, lengths, groups):
    """(groups, restore) for attention per group of similar lengths (host-side index building: CPU tensors)."""
    cu = cu_seqlens.long()
    total = int(cu[-1])
    attention_groups, token_order = [], []
    for members in groups:
        idx = torch.tensor(members)
        lens = torch.tensor([lengths[i] for i in members])
        S = int(lens[0])
        group = _attention_group(cu[idx], lens, S, total)
        if bool((lens == S).all()):
            group = group._replace(mask=None)
        real = (torch.arange(len(members))[:, None] * S + torch.arange(S)[None, :])[
            torch.arange(S)[None, :] < lens[:, None]]
        attention_groups.append(group._replace(real=real))
        token_order += [torch.arange(int(cu[i]), int(cu[i + 1])) for i in members]
    order = torch.cat(token_order)
    restore = torch.empty_like(order)
    restore[order] = torch.arange(order.numel())
    return attention_groups, restore
