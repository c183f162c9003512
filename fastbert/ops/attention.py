"""Multi-head attention over padded or packed variable-length batches.

PyTorch path (scaled_dot_product_attention) for now; the Triton FlashAttention kernel
(kernels/attention.py) is slotted in by the attention issue.

Layouts: padded ``(batch, seqlen, heads, head_dim)`` with ``key_padding_mask (batch, seqlen)`` where True
(or 1) marks a real token, as in Hugging Face's ``attention_mask``; or packed ``(total_tokens, heads,
head_dim)`` with ``cu_seqlens (batch + 1,)`` int32 and ``max_seqlen``.
"""
import torch
import torch.nn.functional as F

from .padding import cu_seqlens_to_mask, pad_input


def _sdpa_padded(q, k, v, key_padding_mask, causal, dropout_p, softmax_scale):
    # (B, S, H, D) -> (B, H, S, D)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    mask = None
    empty = None
    if key_padding_mask is not None:
        keep = key_padding_mask.bool()
        empty = ~keep.any(dim=1)  # rows with no key at all give zeros, not NaN
        keep = keep | empty[:, None]
        mask = keep[:, None, None, :]  # (B, 1, 1, S)
        if causal:
            s = q.shape[-2]
            mask = mask & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None, scale=softmax_scale
    )
    if empty is not None and bool(empty.any()):
        out = out * (~empty).to(out.dtype)[:, None, None, None]
    return out.transpose(1, 2)


def attention(q, k, v, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None, causal=False,
              dropout_p=0.0, softmax_scale=None, deterministic=False):
    if cu_seqlens is None:
        return _sdpa_padded(q, k, v, key_padding_mask, causal, dropout_p, softmax_scale)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
    mask = cu_seqlens_to_mask(cu_seqlens, max_seqlen)
    indices = torch.nonzero(mask.flatten()).flatten()
    b = mask.shape[0]
    padded = [pad_input(t, indices, b, max_seqlen) for t in (q, k, v)]
    out = _sdpa_padded(*padded, mask, causal, dropout_p, softmax_scale)
    return out.reshape(b * max_seqlen, *out.shape[2:]).index_select(0, indices)
