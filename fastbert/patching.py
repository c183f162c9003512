"""Accelerate a user's own Hugging Face BERT in place: ``fastbert.patch(model)`` / ``fastbert.unpatch(model)``.

Like Liger-Kernel's ``apply_liger_kernel_to_*``, ``patch`` rebinds the ``forward`` of HF BERT submodules on the
instances (never the classes): the model stays the same object of the same class, with the same parameters
(optimizer references stay valid) and the same ``state_dict`` keys; hooks registered on the patched modules
still fire. What is rebound:

- ``BertSelfAttention``: fastbert's attention (``fastbert.ops.attention``) on the padding mask;
- ``BertSelfOutput`` / ``BertOutput``: dropout, then residual + LayerNorm in one op (``fastbert.ops.layer_norm``);
- ``BertIntermediate``: bias + GELU in one op (``fastbert.ops.bias_gelu``) after a bias-free matmul.

Left alone, and listed in one warning: decoder / causal / cross-attention modules, activations other than
GELU, submodules that are not a plain ``nn.Linear`` / ``nn.LayerNorm`` or carry hooks (e.g. PEFT adapters),
and modules whose ``forward`` was already replaced by someone else. Per call, attention falls back to HF's
own forward (warning once) for ``output_attentions=True``, a KV cache, a head mask, or a mask that is not a
key padding mask.

``register_attention()`` registers ``"fastbert"`` with transformers' ``AttentionInterface`` (and the
SDPA-style boolean mask with ``AttentionMaskInterface``), so ``attn_implementation="fastbert"`` works.
``install_import_hook()`` (called by ``import fastbert``) does this when ``transformers.modeling_utils`` is
first imported, so ``import fastbert`` itself never imports transformers.
"""
import importlib.abc
import importlib.util
import sys
import types
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from ._warnings import warn_once

ATTN_IMPLEMENTATION = "fastbert"
_PATCHED = "_fastbert_patched"  # instance attribute naming what was rebound (not a parameter or buffer)


# ------------------------------------------------------------------------------------------ attention


def _key_padding_mask(attention_mask, batch, seqlen):
    """HF's 4-D mask (bool keep-mask or additive float) -> (batch, seqlen) bool, or raise ``_Fallback``."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 2 and tuple(m.shape) == (batch, seqlen):
        return m.bool()
    if m.dim() != 4 or m.shape[0] != batch or m.shape[1] != 1 or m.shape[-1] != seqlen:
        raise _Fallback(f"attention mask of shape {tuple(m.shape)}")
    keep = m if m.dtype == torch.bool else m == 0
    rows = keep[:, 0]  # (B, Q, K)
    if rows.shape[1] != 1 and rows.stride(1) != 0 and not torch.equal(rows, rows[:, :1].expand_as(rows)):
        raise _Fallback("an attention mask that differs between queries (not a key padding mask)")
    return rows[:, 0]


class _Fallback(Exception):
    pass


def fastbert_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-interface signature: q/k/v ``(B, H, S, D)``, returns ``((B, S, H, D), None)``."""
    if kwargs.get("output_attentions") or kwargs.get("head_mask") is not None:
        raise ValueError("attn_implementation='fastbert' returns no attention weights and takes no head_mask; "
                         "use attn_implementation='eager' for output_attentions=True or head_mask")
    if query.shape != key.shape:
        raise ValueError(f"attn_implementation='fastbert' runs self-attention only (q {tuple(query.shape)}, "
                         f"k {tuple(key.shape)}); use 'sdpa' or 'eager' for cross-attention or a KV cache")
    b, _, s, _ = query.shape
    try:
        kpm = _key_padding_mask(attention_mask, b, s)
    except _Fallback as e:
        raise ValueError(f"attn_implementation='fastbert' supports key padding masks only, got {e}") from None
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    out = ops.attention(q, k, v, key_padding_mask=kpm, causal=bool(getattr(module, "is_causal", False)),
                        dropout_p=dropout, softmax_scale=scaling)
    return out, None


def _self_attention_forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
    # BertSelfAttention.forward with fastbert's attention; HF's forward for what this cannot run. The KV cache
    # is `cache` from transformers 5.2x on, `past_key_values` before: either one falls back, and the fallback
    # hands on only what the caller passed (both names at once make HF warn on every call).
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    reason = None
    if past_key_values is not None or kwargs.get("cache") is not None:
        reason = "a KV cache"
    elif kwargs.get("output_attentions"):
        reason = "output_attentions=True"
    elif kwargs.get("head_mask") is not None:
        reason = "head_mask"
    elif kwargs.get("encoder_hidden_states") is not None:
        reason = "encoder_hidden_states"
    if reason is None:
        b, s = hidden_states.shape[:2]
        try:
            kpm = _key_padding_mask(attention_mask, b, s)
        except _Fallback as e:
            reason = str(e)
    if reason is not None:
        warn_once(("patch", reason), f"fastbert.patch: {reason}: this call runs Hugging Face's own attention")
        return type(self).forward(self, hidden_states, attention_mask=attention_mask, **kwargs)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)  # (B, S, H, D)
    q = self.query(hidden_states).view(shape)
    k = self.key(hidden_states).view(shape)
    v = self.value(hidden_states).view(shape)
    p = self.dropout.p if self.training else 0.0
    out = ops.attention(q, k, v, key_padding_mask=kpm, dropout_p=p, softmax_scale=self.scaling)
    return out.reshape(*hidden_states.shape[:-1], -1), None


# --------------------------------------------------------------------------- residual + LN, bias + GELU


def _output_forward(self, hidden_states, input_tensor):
    # BertSelfOutput / BertOutput: LayerNorm(dropout(dense(h)) + input) with residual + LN fused.
    hidden_states = self.dropout(self.dense(hidden_states))
    ln = self.LayerNorm
    return ops.layer_norm(hidden_states, ln.weight, ln.bias, eps=ln.eps, residual=input_tensor)


def _intermediate_forward(self, hidden_states):
    # BertIntermediate: gelu(h W^T + b) with bias + GELU fused after a bias-free matmul.
    return ops.bias_gelu(F.linear(hidden_states, self.dense.weight), self.dense.bias,
                         approximate=self._fastbert_gelu)


def _gelu_approximate(act):
    """'none' / 'tanh' for the GELUs bias_gelu computes exactly; None for any other activation."""
    name = type(act).__name__
    if isinstance(act, nn.GELU):
        return act.approximate
    if name == "GELUActivation" and getattr(act, "act", None) is F.gelu:
        return "none"
    if name in ("NewGELUActivation", "PytorchGELUTanh", "GELUTanh"):
        return "tanh"
    return None


# ------------------------------------------------------------------------------------------- patching


def _hooked(module):
    return bool(module._forward_hooks or module._forward_pre_hooks or getattr(module, "_backward_hooks", None))


def _plain(module, cls):
    return type(module) is cls and not _hooked(module)


def _bert_classes():
    try:
        from transformers.models.bert import modeling_bert as hf
    except ImportError:
        return None
    return hf


def _plan(model):
    """[(module, new forward, extra attributes)] for what can be patched; [(name, reason)] for what cannot."""
    hf = _bert_classes()
    if hf is None:
        raise ImportError("fastbert.patch needs transformers installed (pip install transformers)")
    todo, skipped = [], []
    for name, m in model.named_modules():
        kind = type(m)
        if kind is hf.BertCrossAttention:
            skipped.append((name, "cross-attention"))
            continue
        if isinstance(m, hf.BertSelfAttention):
            fn, extra, why = _self_attention_forward, {}, None
            if kind.forward is not hf.BertSelfAttention.forward:
                why = f"{kind.__name__} overrides forward"
            elif m.is_decoder or m.is_causal:
                why = "decoder (causal) self-attention"
        elif isinstance(m, (hf.BertSelfOutput, hf.BertOutput)):
            fn, extra, why = _output_forward, {}, None
            base = hf.BertSelfOutput if isinstance(m, hf.BertSelfOutput) else hf.BertOutput
            if kind.forward is not base.forward:
                why = f"{kind.__name__} overrides forward"
            elif not _plain(m.LayerNorm, nn.LayerNorm) or m.LayerNorm.weight is None or m.LayerNorm.bias is None:
                why = "LayerNorm is not a plain affine nn.LayerNorm without hooks"
        elif isinstance(m, hf.BertIntermediate):
            fn, why = _intermediate_forward, None
            approximate = _gelu_approximate(m.intermediate_act_fn)
            extra = {"_fastbert_gelu": approximate}
            if kind.forward is not hf.BertIntermediate.forward:
                why = f"{kind.__name__} overrides forward"
            elif approximate is None:
                why = f"activation {type(m.intermediate_act_fn).__name__} is not GELU"
            elif not _plain(m.dense, nn.Linear) or m.dense.bias is None:
                why = "dense is not a plain nn.Linear with a bias, without hooks (adapter?)"
        else:
            continue
        if why is None and "forward" in m.__dict__ and getattr(m.forward, "__func__", None) is not fn:
            why = "forward already replaced on the instance by something else"
        if why is not None:
            skipped.append((name or type(model).__name__, why))
        else:
            todo.append((m, fn, extra))
    return todo, skipped


def patch(model: nn.Module) -> nn.Module:
    """Swap fastbert's fused ops into every HF BERT module inside ``model``, in place; returns ``model``.

    ``model``: a ``transformers`` BERT (any head), a sentence-transformers ``SentenceTransformer``, or any
    ``nn.Module`` holding HF BERT modules. Idempotent; ``unpatch(model)`` undoes it. Modules that cannot be
    patched are left as they are and listed in one warning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastbert.patch expects a torch.nn.Module, got {type(model).__name__}")
    todo, skipped = _plan(model)
    for m, fn, extra in todo:
        for k, val in extra.items():
            setattr(m, k, val)
        m.forward = types.MethodType(fn, m)
        setattr(m, _PATCHED, True)
    if skipped:
        listing = "; ".join(f"{n}: {why}" for n, why in skipped)
        warnings.warn(f"fastbert.patch left {len(skipped)} module(s) unpatched (they run as before): {listing}",
                      stacklevel=2)
    if not todo and not any(getattr(m, _PATCHED, False) for m in model.modules()):
        warnings.warn("fastbert.patch found no Hugging Face BERT module to patch in "
                      f"{type(model).__name__}", stacklevel=2)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ``patch``: every module gets its class's own forward back. Returns ``model``."""
    for m in model.modules():
        if m.__dict__.pop(_PATCHED, False):
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_fastbert_gelu", None)
    return model


def is_patched(model: nn.Module) -> bool:
    return any(getattr(m, _PATCHED, False) for m in model.modules())


# ---------------------------------------------------------------------- attn_implementation="fastbert"


def register_attention():
    """Register ``"fastbert"`` with transformers' attention and attention-mask interfaces (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, fastbert_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)  # boolean keep-mask, None when all kept


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Runs ``register_attention`` right after ``transformers.modeling_utils`` is first imported."""

    TARGET = "transformers.modeling_utils"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_quietly()

        spec.loader.exec_module = exec_then_register
        return spec


def _register_quietly():
    try:
        register_attention()
    except Exception as e:  # an incompatible transformers must not break importing it
        warnings.warn(f"fastbert could not register attn_implementation='fastbert' with transformers: {e}")


def install_import_hook():
    """Called by ``import fastbert``: register now if transformers' modeling is loaded, else on its import."""
    try:
        if importlib.util.find_spec("transformers") is None:
            return
    except (ValueError, ImportError):  # sys.modules["transformers"] set to None (blocked) or broken
        return
    if _RegisterOnImport.TARGET in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
