"""Multi-head attention over padded or packed variable-length batches.

``attention(q, k, v, ...)`` runs the Triton FlashAttention-2 kernel (kernels/attention.py) where
``_dispatch.use_triton`` says (CUDA tensors, CPU tensors under ``TRITON_INTERPRET=1``) and the head dim suits it;
PyTorch's ``scaled_dot_product_attention`` otherwise.

Layouts: padded ``(batch, seqlen, heads, head_dim)`` with ``key_padding_mask (batch, seqlen)`` where True
(or 1) marks a real token, as in Hugging Face's ``attention_mask``; or packed ``(total_tokens, heads,
head_dim)`` with ``cu_seqlens (batch + 1,)`` int32 and ``max_seqlen``. q, k, v may be strided views (e.g. of
one fused QKV projection). Masked keys get no weight; a query whose keys are all masked outputs zeros.
"""
import operator
import weakref

import torch
import torch.nn.functional as F

from .._warnings import warn_once
from ._dispatch import kernels, use_triton
from .padding import cu_seqlens_to_mask, mask_indices, pad_input

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------- validation

_checked_cu = {"ref": None, "version": None, "key": None}  # last cu_seqlens whose values were checked


def _check_cu_seqlens(cu_seqlens, total, max_seqlen, device):
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be a 1-D tensor (batch + 1,) of cumulative sequence lengths starting at 0")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 (got {cu_seqlens.dtype}); build it with "
                         "fastbert.ops.padding.seqlens_to_cu_seqlens or unpad_input")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}; move it to {device}")
    if max_seqlen is not None and not isinstance(max_seqlen, torch.SymInt):  # symbolic under torch.export
        try:
            max_seqlen = operator.index(max_seqlen)
        except TypeError:
            raise ValueError(f"max_seqlen must be an int, got {max_seqlen!r}") from None
        if max_seqlen < 0:
            raise ValueError(f"max_seqlen must be non-negative, got {max_seqlen}")
    if max_seqlen is not None and (torch.compiler.is_compiling() or torch.jit.is_tracing() or (
            cu_seqlens.is_cuda and torch.cuda.is_current_stream_capturing())):
        return max_seqlen  # no host reads while tracing or capturing: the caller vouches for cu_seqlens
    # The value checks need the values on the host: done once per cu_seqlens tensor (the encoder reuses the
    # same one in every layer), not once per call.
    key = (total, max_seqlen)
    if (_checked_cu["ref"] is not None and _checked_cu["ref"]() is cu_seqlens
            and _checked_cu["version"] == cu_seqlens._version and _checked_cu["key"] == key):
        return max_seqlen
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    lens = cu[1:] - cu[:-1]
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if bool((lens < 0).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu.tolist()}")
    if int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but q has {total} tokens; they must match")
    longest = int(lens.max()) if lens.numel() else 0
    if max_seqlen is None:
        max_seqlen = longest
    elif max_seqlen < longest:
        raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest}) in cu_seqlens")
    _checked_cu.update(ref=weakref.ref(cu_seqlens), version=cu_seqlens._version, key=(total, max_seqlen))
    return max_seqlen


def kernel_supports_head_dim(head_dim: int) -> bool:
    return head_dim % 8 == 0 and 8 <= head_dim <= 256


def trust_cu_seqlens(cu_seqlens: torch.Tensor, total: int, max_seqlen: int):
    """Record ``cu_seqlens`` as validated for ``total`` tokens and ``max_seqlen`` (the model checked it with its
    one host read per forward), so no attention call of this forward reads it back again."""
    if torch.compiler.is_compiling():
        return  # nothing is read back while compiling anyway
    _checked_cu.update(ref=weakref.ref(cu_seqlens), version=cu_seqlens._version, key=(total, max_seqlen))


def _check_inputs(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, triton_path):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape (self-attention), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on the same device, got {q.device}, {k.device}, {v.device}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"attention supports float16, bfloat16 and float32 inputs, got {q.dtype}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if cu_seqlens is not None:
        if q.dim() != 3:
            raise ValueError(f"with cu_seqlens, q/k/v must be packed (total_tokens, heads, head_dim), got "
                             f"{tuple(q.shape)}")
        if key_padding_mask is not None:
            raise ValueError("pass either key_padding_mask (padded batch) or cu_seqlens (packed batch), not both")
        return _check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen, q.device)
    if q.dim() != 4:
        hint = "; a packed (total_tokens, heads, head_dim) batch needs cu_seqlens and max_seqlen" if q.dim() == 3 else ""
        raise ValueError(f"q/k/v must be (batch, seqlen, heads, head_dim), got {tuple(q.shape)}{hint}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(key_padding_mask).__name__}")
        if key_padding_mask.shape != q.shape[:2]:
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected (batch, "
                             f"seqlen) = {tuple(q.shape[:2])}")
        if key_padding_mask.dtype.is_floating_point or key_padding_mask.dtype.is_complex:
            raise ValueError(f"key_padding_mask must be bool or integer (True/1 = real token), got "
                             f"{key_padding_mask.dtype}; an additive float mask is not supported")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    return max_seqlen


# ------------------------------------------------------------------------------------------- Triton path


def _launch_fwd(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, scale, seed):
    """The launcher itself in eager mode; the ``torch.ops.fastbert`` custom op while torch.compile traces (its
    dispatch costs about 3x the launcher's Python time, more than a BERT layer's attention on a GPU)."""
    mod = kernels("attention")
    if torch.compiler.is_compiling():
        return mod.attention_fwd_op(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, scale,
                                    seed)
    return mod.attention_fwd(q, k, v, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens,
                             max_seqlen=max_seqlen if cu_seqlens is not None else None, causal=causal,
                             dropout_p=dropout_p, softmax_scale=scale, seed=seed)


def _launch_bwd(dout, q, k, v, out, lse, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, scale, seed,
                deterministic):
    mod = kernels("attention")
    if torch.compiler.is_compiling():
        return mod.attention_bwd_op(dout, q, k, v, out, lse, key_padding_mask, cu_seqlens, max_seqlen, causal,
                                    dropout_p, scale, seed, deterministic)
    return mod.attention_bwd(dout, q, k, v, out, lse, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens,
                             max_seqlen=max_seqlen if cu_seqlens is not None else None, causal=causal,
                             dropout_p=dropout_p, softmax_scale=scale, seed=seed, deterministic=deterministic)


class AttentionFunction(torch.autograd.Function):
    """FlashAttention-2 forward and backward (kernels/attention.py, as ``torch.ops.fastbert.attention_*``)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, softmax_scale,
                deterministic):
        # The dropout seed is drawn by torch's generator on the inputs' device: no host read, torch.manual_seed
        # makes runs reproducible, a CUDA graph replay draws a new one; the backward regenerates the mask.
        seed = torch.randint(0, 2**31 - 1, (1,), device=q.device, dtype=torch.int64) if dropout_p > 0.0 else None
        scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
        max_seqlen = max_seqlen if max_seqlen is not None else 0
        out, lse = _launch_fwd(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, scale, seed)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, cu_seqlens, seed)
        ctx.opts = (max_seqlen, causal, dropout_p, scale)
        ctx.deterministic = deterministic
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, key_padding_mask, cu_seqlens, seed = ctx.saved_tensors
        dq, dk, dv = _launch_bwd(dout, q, k, v, out, lse, key_padding_mask, cu_seqlens, *ctx.opts, seed,
                                 ctx.deterministic)
        return dq, dk, dv, None, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------ PyTorch path


def _sdpa_padded(q, k, v, key_padding_mask, causal, dropout_p, softmax_scale):
    # (B, S, H, D) -> (B, H, S, D)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    mask = None
    empty = None
    if key_padding_mask is not None:
        keep = key_padding_mask.bool()
        mask = keep[:, None, None, :]  # (B, 1, 1, S)
        if causal:
            s = q.shape[-2]
            mask = mask & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        empty = ~mask.any(dim=-1, keepdim=True)  # (B, 1, S or 1, 1): rows with no key give zeros, not NaN
        mask = mask | empty
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None, scale=softmax_scale
    )
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out.transpose(1, 2)


def _torch_attention(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, softmax_scale):
    if cu_seqlens is None:
        return _sdpa_padded(q, k, v, key_padding_mask, causal, dropout_p, softmax_scale)
    mask = cu_seqlens_to_mask(cu_seqlens, max_seqlen)
    indices = mask_indices(mask, q.shape[0])
    b = mask.shape[0]
    padded = [pad_input(t, indices, b, max_seqlen) for t in (q, k, v)]
    out = _sdpa_padded(*padded, mask, causal, dropout_p, softmax_scale)
    return out.reshape(b * max_seqlen, *out.shape[2:]).index_select(0, indices)


# ------------------------------------------------------------------------------------------------ public


def attention(q, k, v, *, key_padding_mask=None, cu_seqlens=None, max_seqlen=None, causal=False,
              dropout_p=0.0, softmax_scale=None, deterministic=False):
    """Scaled dot-product self-attention, ``softmax(q k^T * scale) v`` per head.

    Args:
        q, k, v: padded ``(batch, seqlen, heads, head_dim)`` or packed ``(total_tokens, heads, head_dim)``;
            same shape and dtype (float16, bfloat16 or float32); any strides (the last dim is made contiguous).
        key_padding_mask: padded only, bool/int ``(batch, seqlen)``, True/1 = real token.
        cu_seqlens: packed only, int32 ``(batch + 1,)``, from 0 to total_tokens, non-decreasing.
        max_seqlen: packed only, the longest sequence (computed from cu_seqlens when None).
        causal: each query attends to itself and earlier keys only.
        dropout_p: dropout on the attention weights (seeded from torch's generator; 0 at inference).
        softmax_scale: defaults to ``1 / sqrt(head_dim)``.
        deterministic: Triton path only: a bitwise reproducible backward (separate dQ kernel, no atomics).

    Returns the output in q's layout and dtype (contiguous on the Triton path).
    """
    triton_path = isinstance(q, torch.Tensor) and use_triton(q)
    if triton_path and not kernel_supports_head_dim(q.shape[-1]):
        warn_once(("head_dim", q.shape[-1]),
                  f"fastbert attention: head_dim={q.shape[-1]} is not a multiple of 8 between 8 and 256, which the "
                  "Triton kernel needs: using PyTorch's scaled_dot_product_attention")
        triton_path = False
    max_seqlen = _check_inputs(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, triton_path)
    if not triton_path:
        return _torch_attention(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, causal, dropout_p, softmax_scale)
    return AttentionFunction.apply(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, bool(causal),
                                   float(dropout_p), softmax_scale, bool(deterministic))
