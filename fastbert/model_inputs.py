"""The inputs of one ``BertModel`` forward, checked once: ``check_inputs`` returns a ``ModelInputs``.

Inputs come as Hugging Face gives them (padded ``(batch, seqlen)`` ids with an ``attention_mask`` in any of
the shapes transformers reads) or packed (1-D ids with ``cu_seqlens``, the tokenizer's ``encode_packed``).
Every problem gets a Python exception that names it and what to do instead of a device-side assert or silent
garbage: ids outside the embedding tables, float ids, masks that are not 0/1 or of the wrong shape, malformed
``cu_seqlens``, sequences longer than the position table. All the data-dependent checks, and what unpadding
needs (real tokens, longest sequence), are read back from the device in ONE host read (a GPU sync); none while
tracing, compiling, exporting or capturing a CUDA graph; none at all for packed inputs still in host memory
(checked there with numpy, then copied).
"""
from typing import NamedTuple, Optional

import torch

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
_MASKED = -1e4  # an additive mask value at or below this masks the key (HF: finfo(dtype).min, or -inf)


class ModelInputs(NamedTuple):
    """One forward's inputs, checked. Tensors are on ``device`` (host-known packed inputs copied there)."""

    input_ids: Optional[torch.Tensor]
    inputs_embeds: Optional[torch.Tensor]
    token_type_ids: Optional[torch.Tensor]
    position_ids: Optional[torch.Tensor]
    device: torch.device
    # padded: (B, S); mask (B, S) bool key-padding mask or None; bias a general mask (torch path) or None;
    # total / max_seqlen: real tokens and longest row (None when nothing was read: tracing, or no mask)
    # packed: (T,); cu_seqlens int32 on device; max_seqlen an int (or a SymInt while exporting)
    shape: tuple
    mask: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    total: Optional[int] = None
    max_seqlen: Optional[int] = None
    cu_seqlens: Optional[torch.Tensor] = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def all_real(self) -> bool:
        """Padded inputs without a single padding position (no mask, or a mask of ones)."""
        B, S = self.shape
        return self.bias is None and (self.mask is None or self.total == B * S)


def check_inputs(config, weight_device, input_ids=None, attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, cu_seqlens=None, max_seqlen=None) -> ModelInputs:
    """Check one forward's inputs (see the module docstring); ``weight_device``: where the model's weights are."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if cu_seqlens is not None:
        return _check_packed_inputs(config, weight_device, input_ids, inputs_embeds, token_type_ids, position_ids,
                                    cu_seqlens, max_seqlen, attention_mask)
    return _check_padded_inputs(config, input_ids, inputs_embeds, token_type_ids, position_ids, attention_mask)


def _check_padded_inputs(config, input_ids, inputs_embeds, token_type_ids, position_ids, attention_mask):
    shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
    if len(shape) != 2:
        raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(shape)}; for packed inputs pass 1-D "
                         "input_ids with cu_seqlens")
    B, S = shape
    ref = input_ids if input_ids is not None else inputs_embeds
    check_length(config, S)
    mask, bias = _check_mask(attention_mask, (B, S), ref=ref)
    additive = attention_mask if mask is not None and attention_mask.dim() == 4 and \
        attention_mask.dtype.is_floating_point else None
    checked = None if mask is None else mask if additive is not None or attention_mask.dim() == 4 else attention_mask
    facts = validate(config, input_ids, token_type_ids, position_ids, mask=checked, additive=additive)
    if facts.soft_bias:  # an additive mask that is not just 0 / -inf per key: a bias, the general path
        mask, bias = None, attention_mask
    return ModelInputs(input_ids, inputs_embeds, token_type_ids, position_ids, ref.device, (B, S), mask, bias,
                       facts.total, facts.max_seqlen)


def _check_packed_inputs(config, weight_device, input_ids, inputs_embeds, token_type_ids, position_ids, cu_seqlens,
                         max_seqlen, attention_mask):
    if attention_mask is not None:
        raise ValueError("packed inputs (cu_seqlens) carry no padding: do not pass attention_mask with them")
    shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
    if len(shape) != 1:
        raise ValueError(f"with cu_seqlens, input_ids must be 1-D (total_tokens,), got {tuple(shape)}")
    ref = input_ids if input_ids is not None else inputs_embeds
    known = host_known(input_ids, token_type_ids, position_ids, cu_seqlens, weight_device)
    cu_seqlens, max_seqlen = check_packed(config, cu_seqlens, max_seqlen, shape[0], input_ids, token_type_ids,
                                          position_ids, device=weight_device, host_known=known)
    device = ref.device
    if known:  # the tokenizer's packed output, checked on the host: copy, read nothing back
        input_ids, token_type_ids, position_ids = (t.to(weight_device, non_blocking=True) if t is not None else None
                                                   for t in (input_ids, token_type_ids, position_ids))
        device = weight_device
    return ModelInputs(input_ids, inputs_embeds, token_type_ids, position_ids, device, tuple(shape),
                       max_seqlen=max_seqlen, cu_seqlens=cu_seqlens)


def check_length(config, seqlen):
    if seqlen > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {seqlen} is longer than the model allows (max_position_embeddings="
            f"{config.max_position_embeddings}); truncate the input (tokenizer truncation=True, max_length="
            f"{config.max_position_embeddings})"
        )


def _id_limits(config):
    return (("input_ids", config.vocab_size), ("token_type_ids", config.type_vocab_size),
            ("position_ids", config.max_position_embeddings))


def _check_id_range(name, limit, lo, hi):
    if lo < 0 or hi >= limit:
        raise ValueError(
            f"{name} holds ids outside [0, {limit - 1}] (found min {lo}, max {hi}): the ids do not "
            f"match this model's {'vocabulary' if name == 'input_ids' else name} (size {limit}); "
            "was the text tokenized with this model's tokenizer?"
        )


def validate_host(config, *ids):
    """``validate`` for ids in host memory (numpy views: nothing to read back)."""
    for (name, limit), t in zip(_id_limits(config), ids):
        if t is None:
            continue
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"{name} must be an integer tensor (torch.long), got {t.dtype}")
        if t.numel():
            a = t.numpy()
            _check_id_range(name, limit, int(a.min()), int(a.max()))


class _Facts(NamedTuple):
    """What one forward learned from its single host read: real tokens and longest sequence of a padded
    batch's mask, or cu_seqlens' (first, last, shortest, longest); None when nothing was read (tracing)."""

    total: Optional[int] = None
    max_seqlen: Optional[int] = None
    cu: Optional[tuple] = None
    soft_bias: bool = False


def validate(config, input_ids, token_type_ids, position_ids, mask=None, cu_seqlens=None, additive=None) -> _Facts:
    """Ids in their tables, masks 0/1, cu_seqlens' bounds, and what unpadding needs: ONE device->host read."""
    checks = [(name, ids, limit) for (name, limit), ids in zip(_id_limits(config), (input_ids, token_type_ids,
                                                                                 position_ids)) if ids is not None]
    for name, ids, _ in checks:
        if ids.dtype not in _INT_DTYPES:
            raise TypeError(f"{name} must be an integer tensor (torch.long), got {ids.dtype}")
    if tracing():
        return _Facts()
    parts, layout = [], []
    for name, ids, limit in checks:
        if ids.numel():
            parts += list(torch.aminmax(ids))
            layout.append((name, limit))
    float_mask = mask is not None and mask.dtype.is_floating_point
    if float_mask:
        parts.append(((mask == 0) | (mask == 1)).all())
    if additive is not None:  # HF's extended mask: 0 to attend, a large negative number (or -inf) not to
        parts.append(((additive == 0) | (additive <= _MASKED)).all())
    if mask is not None:
        lens = mask.bool().sum(dim=1)
        parts += [lens.sum(), lens.max() if lens.numel() else lens.sum()]
    if cu_seqlens is not None:
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        parts += [cu_seqlens[0], cu_seqlens[-1], lens.min(), lens.max()]
    if not parts:
        return _Facts()
    values = torch.stack([p.reshape(()).to(torch.int64) for p in parts]).tolist()  # the one host read
    for i, (name, limit) in enumerate(layout):
        _check_id_range(name, limit, values[2 * i], values[2 * i + 1])
    rest = values[2 * len(layout):]
    if float_mask:
        if not rest.pop(0):
            raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only")
    if additive is not None and not rest.pop(0):
        return _Facts(soft_bias=True)
    if mask is not None:
        return _Facts(rest[0], rest[1])
    if cu_seqlens is not None:
        return _Facts(cu=tuple(rest))
    return _Facts()


def host_known(input_ids, token_type_ids, position_ids, cu_seqlens, device) -> bool:
    """Packed inputs still in host memory for a model on a GPU: checked on the host, then copied."""
    tensors = [t for t in (input_ids, token_type_ids, position_ids, cu_seqlens) if t is not None]
    return device.type != "cpu" and input_ids is not None and all(t.device.type == "cpu" for t in tensors)


def check_packed(config, cu_seqlens, max_seqlen, total, input_ids, token_type_ids, position_ids, device,
                 host_known=False):
    """Validate packed inputs; returns (cu_seqlens int32 on ``device``, max_seqlen). ``host_known``: every
    input is in host memory (the tokenizer's packed output for a GPU model): checked there with numpy, no
    device read; otherwise the checks take the forward's one device read."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with batch+1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if max_seqlen is not None and not isinstance(max_seqlen, torch.SymInt):  # a SymInt stays symbolic (export)
        max_seqlen = int(max_seqlen)
    if host_known:
        cu = cu_seqlens.numpy()
        lens = cu[1:] - cu[:-1]
        bounds = (int(cu[0]), int(cu[-1]), int(lens.min()), int(lens.max()))
        validate_host(config, input_ids, token_type_ids, position_ids)
        cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32, non_blocking=True)
    else:
        cu_seqlens = cu_seqlens.to(torch.int32)
        bounds = validate(config, input_ids, token_type_ids, position_ids, cu_seqlens=cu_seqlens).cu
    if bounds is None:  # tracing: nothing read back
        if max_seqlen is None:
            raise ValueError("pass max_seqlen with cu_seqlens while tracing, compiling or capturing")
    else:
        first, last, shortest, longest = bounds
        if first != 0 or shortest < 0 or last != total:
            raise ValueError(f"cu_seqlens must start at 0, never decrease and end at the number of tokens "
                             f"({total}); got start {first}, end {last}, shortest sequence {shortest}")
        if max_seqlen is None:
            max_seqlen = longest
        elif max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest})")
    check_length(config, max_seqlen)
    return cu_seqlens, max_seqlen


def tracing() -> bool:
    """True while jit.trace / torch.compile / export trace, or a CUDA graph is captured: no host reads then."""
    return torch.jit.is_tracing() or capturing()


def capturing() -> bool:
    """No host-side checks while torch.compile traces or a CUDA graph is captured."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_mask(attention_mask, shape, ref):
    """(key-padding mask (B, S) bool or None, general mask or None), as Hugging Face reads ``attention_mask``:

    - (B, S): 1/True for a real token, 0/False for padding;
    - (B, 1, 1, S): HF's extended key-padding mask, bool (True = attend) or additive float (0 = attend, a large
      negative number or -inf = masked; another value makes it a general bias);
    - (B, S, S): a 0/1 (or bool) mask per query and key, as HF extends it ([:, None, :, :]);
    - (B, 1 or heads, S, S): used as given, bool (True = attend) or additive float.
    General masks run on the PyTorch path.
    """
    if attention_mask is None:
        return None, None
    B, S = shape
    dims = tuple(attention_mask.shape)
    if attention_mask.device != ref.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but the inputs are on {ref.device}")
    if dims == (B, S):
        return attention_mask.bool(), None  # its values are checked with the other inputs (validate)
    if dims == (B, 1, 1, S):
        if attention_mask.dtype == torch.bool:
            return attention_mask[:, 0, 0, :], None
        if attention_mask.dtype.is_floating_point:
            return attention_mask[:, 0, 0, :] == 0, None
        raise TypeError(
            f"attention_mask of shape {dims} has dtype {attention_mask.dtype}: an extended (batch, 1, 1, seqlen) mask "
            "is bool (True = attend) or additive float (0 = attend, large negative = masked), as Hugging Face reads "
            "it (its SDPA path rejects integer ones, its eager path adds them to the scores). Pass the (batch, seqlen) "
            "0/1 mask, or mask.bool()")
    elif dims == (B, S, S):
        return None, attention_mask[:, None].bool()
    elif len(dims) == 4 and dims[0] == B and dims[2:] == (S, S):
        return None, attention_mask if attention_mask.dtype in (torch.bool,) or \
            attention_mask.dtype.is_floating_point else attention_mask.bool()
    raise ValueError(
        f"attention_mask has shape {dims} but input_ids has shape {(B, S)}; pass a (batch, seqlen) mask with 1 for "
        "real tokens and 0 for padding, HF's extended (batch, 1, 1, seqlen) mask, or a (batch, seqlen, seqlen) / "
        "(batch, 1 or heads, seqlen, seqlen) mask"
    )


def reject_unsupported(kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None and v is not False}
    for name in ("encoder_hidden_states", "encoder_attention_mask", "past_key_values", "cache", "use_cache"):
        if name in kwargs:
            raise NotImplementedError(f"{name}: fastbert is an encoder-only BERT (no decoder / cross-attention)")
    if kwargs:
        raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
