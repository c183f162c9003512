"""BERT, as Hugging Face names it: embeddings, encoder layers, pooler, heads.

Module tree and state-dict keys are Hugging Face's (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``attention.output.LayerNorm``, ``intermediate.dense``, ...), so
checkpoints load with no remapping. ``BertModel.forward`` reads top to bottom: the inputs checked once
(``fastbert.model_inputs``), the backend decided once (``resolve_backend``, then ``BertModel._backend``),
embeddings, the encoder over the layout of ``fastbert.packing``, the pooler. Layers only read the decision:

- ``torch``: the reference path. ``scaled_dot_product_attention`` (``eager``: an explicit softmax, also
  whenever attention probabilities are asked for), ``F.layer_norm``, ``F.gelu``. Matches ``transformers`` to
  fp32 rounding. Packed inputs stay packed (attention pads only Q/K/V).
- ``triton``: fastbert's fused ops (``fastbert.ops``). Q, K and V come from one fused GEMM; dense -> dropout
  -> fused residual+LayerNorm; the intermediate GEMM without bias, then fused bias+GELU. With
  ``config.unpad`` (the default) padding is removed once after the embeddings, every layer runs on real
  tokens only (packed variable-length attention), and the padded layout is restored at the end.
- ``cpu``: CPU inference (``fastbert.ops.cpu``, docs/cpu.md): packed like ``triton``, oneDNN GEMMs with the
  bias, GELU or residual add fused; attention in bf16 on AMX tiles straight from the packed rows where the CPU
  has AMX-BF16 (``ops.cpu.packed_attention``), else by ``scaled_dot_product_attention`` over Q/K/V padded per
  group of similar lengths.
"""
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss

from . import ops
from ._warnings import warn_once
from .configuration_bert import BertConfig
from .modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPoolingAndCrossAttentions,
    BertForPreTrainingOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .model_inputs import capturing, check_inputs, reject_unsupported, tracing
from .modeling_utils import BertPreTrainedModel
from .packing import Batch, packed_batch
from .ops._dispatch import triton_runs_on

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Module-level functions only (no lambdas): models pickle (torch.save(model), DataLoader workers, multiprocessing).
_gelu_tanh = functools.partial(F.gelu, approximate="tanh")
ACT2FN = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def resolve_backend(config: BertConfig, device: torch.device, inference: bool = False,
                    dtype: torch.dtype = torch.float32) -> str:
    """The one place that picks the backend: 'torch' (SDPA), 'eager' (the PyTorch path with an explicit
    softmax: attn_implementation='eager'), 'triton' or 'cpu'.

    ``inference``: gradients off, the model in eval mode and nothing tracing it; only then may the ``cpu``
    backend (oneDNN GEMMs with fused epilogues, every layer packed, no autograd; fp32 and bf16 weights) run.
    ``auto`` takes it for CPU tensors.
    """
    if config.backend == "torch":
        return "eager" if config._attn_implementation == "eager" else "torch"
    cpu_ok = device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and ops.cpu.fused_linear_available()
    if config.backend == "cpu":
        if not cpu_ok:
            raise RuntimeError(f"backend='cpu' runs fp32 or bf16 weights on CPU tensors with a torch build that "
                               f"has oneDNN (here: {dtype} on {device}); use backend='auto'")
        if not inference:
            raise RuntimeError("backend='cpu' is inference-only (no gradients, eval mode, not traced or compiled); "
                               "use backend='auto' (which picks it for inference) or 'torch'")
        return "cpu"
    triton_ok = triton_runs_on(device)
    if config.backend == "triton":
        if not triton_ok:
            raise RuntimeError(
                "backend='triton' needs triton and CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
                "use backend='auto' or 'torch' on this machine"
            )
        return "triton"
    if triton_ok and device.type == "cuda":
        return "triton"
    if cpu_ok and inference and config.unpad:
        return "cpu"
    return "torch"


# ------------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    """word + position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        shape = inputs_embeds.shape[:-1]
        if position_ids is None:
            position_ids = torch.arange(shape[-1], device=inputs_embeds.device).expand(shape)
        if token_type_ids is None:
            token_type_ids = torch.zeros(shape, dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


# ------------------------------------------------------------------------------------------------------
# Encoder layer
# ------------------------------------------------------------------------------------------------------
class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.scaling = self.attention_head_size ** -0.5

    def _fused_qkv(self):
        """[Wq; Wk; Wv] and [bq; bk; bv], concatenated on every call (a copy of 3H x H weights, small beside the
        GEMM it feeds; the gradient flows back to the three Linear layers). Never cached: an optimizer can
        update parameters in place without any trace a cache could check (torch.optim.AdamW(fused=True), the
        Trainer's default, leaves ``_version`` unchanged), and a stale Q/K/V would be a silent wrong answer."""
        return (torch.cat((self.query.weight, self.key.weight, self.value.weight)),
                torch.cat((self.query.bias, self.key.bias, self.value.bias)))

    def forward(self, hidden_states, batch: Batch, output_attentions=False, head_mask=None):
        nh, hd = self.num_attention_heads, self.attention_head_size
        dropout_p = self.dropout_p if self.training else 0.0
        if batch.backend == "cpu":
            return self._packed_sdpa(hidden_states, batch, dropout_p), None
        if batch.backend == "triton":
            if _plain_linear(self.query, self.key, self.value):
                # One GEMM for Q, K and V; the kernel reads them as strided views.
                weight, bias = self._fused_qkv()
                qkv = F.linear(hidden_states, weight, bias)
            else:  # adapters (PEFT's LoRA) wrap query/key/value: run the modules, so they take part
                qkv = torch.stack([self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)], -2)
            qkv = qkv.view(*hidden_states.shape[:-1], 3, nh, hd)  # (B, S, 3, nh, hd) or (T, 3, nh, hd)
            q, k, v = qkv.unbind(dim=-3)
            out = ops.attention(
                q, k, v,
                key_padding_mask=None if batch.packed else batch.mask,
                cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen,
                dropout_p=dropout_p, softmax_scale=self.scaling,
            )
            return out.reshape(*hidden_states.shape[:-1], self.all_head_size), None

        if batch.packed:
            return self._packed_sdpa(hidden_states, batch, dropout_p), None
        B, S, _ = hidden_states.shape
        q = self.query(hidden_states).view(B, S, nh, hd).transpose(1, 2)  # (B, nh, S, hd)
        k = self.key(hidden_states).view(B, S, nh, hd).transpose(1, 2)
        v = self.value(hidden_states).view(B, S, nh, hd).transpose(1, 2)
        attn_mask = None if batch.mask is None else batch.mask[:, None, None, :]  # (B, 1, 1, S)
        if batch.bias is not None:
            attn_mask = batch.bias if batch.bias.dtype == torch.bool else batch.bias.to(q.dtype)
        if output_attentions or head_mask is not None or batch.backend == "eager":
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
            elif attn_mask is not None:
                scores = scores + attn_mask
            probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=self.training)
            if head_mask is not None:  # (1 or B, nh, 1, 1): 0 silences a head, as transformers 4.x
                probs = probs * head_mask
            out = torch.matmul(probs, v)
        else:
            probs = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                 scale=self.scaling)
        return out.transpose(1, 2).reshape(B, S, self.all_head_size), probs


    def _packed_sdpa(self, hidden_states, batch: Batch, dropout_p):
        """The PyTorch path on packed (T, H) tokens: the Q/K/V GEMM on real tokens only, then Q/K/V padded to
        (B, nh, S, hd) for ``scaled_dot_product_attention`` and the output packed again."""
        nh, hd, H = self.num_attention_heads, self.attention_head_size, self.all_head_size
        if not _plain_linear(self.query, self.key, self.value):
            # adapters (PEFT's LoRA) wrap query/key/value: run the modules, so they take part
            qkv = torch.cat([self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)], -1)
        elif batch.backend == "cpu":
            linears = (self.query, self.key, self.value)
            weight = ops.cpu.packed_weight(self, [m.weight for m in linears], lambda: self._fused_qkv()[0])
            qkv = ops.cpu.linear(hidden_states, weight, torch.cat([m.bias for m in linears]))  # (T, 3H)
        else:
            qkv = F.linear(hidden_states, *self._fused_qkv())
        if (batch.backend == "cpu" and qkv.dtype == torch.bfloat16 and dropout_p == 0.0 and hd in (32, 64)
                and ops.cpu.amx_attention_available()):
            # on AMX tiles, straight from the packed rows: no padding, no gathers (fastbert/ops/cpu.py)
            return ops.cpu.packed_attention(qkv, batch.cu_seqlens, nh, hd, self.scaling)
        outs = []
        for g in batch.groups:
            rows = qkv[: g.n * g.S] if g.gather is None else qkv.index_select(0, g.gather)  # (n * S, 3H)
            q, k, v = rows.view(g.n, g.S, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (n, nh, S, hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, dropout_p=dropout_p,
                                                 scale=self.scaling)
            out = out.transpose(1, 2).reshape(g.n * g.S, H)
            outs.append(out if g.real is None else out.index_select(0, g.real))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out if batch.restore is None else out.index_select(0, batch.restore)


class BertSelfOutput(nn.Module):
    """LayerNorm(dropout(dense(h)) + input): on the Triton backend, one fused residual+LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor, batch: Batch):
        if batch.backend == "cpu" and _plain_linear(self.dense):
            weight = ops.cpu.packed_weight(self.dense, [self.dense.weight], lambda: self.dense.weight)
            return self.LayerNorm(ops.cpu.linear_add(hidden_states, weight, self.dense.bias, input_tensor))
        hidden_states = self.dropout(self.dense(hidden_states))
        if batch.backend == "triton":
            return ops.layer_norm(hidden_states, self.LayerNorm.weight, self.LayerNorm.bias,
                                  eps=self.LayerNorm.eps, residual=input_tensor)
        return self.LayerNorm(hidden_states + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, batch: Batch, output_attentions=False, head_mask=None):
        context, probs = self.self(hidden_states, batch, output_attentions, head_mask)
        return self.output(context, hidden_states, batch), probs


class BertIntermediate(nn.Module):
    """act(dense(h)): on the Triton backend, the GEMM without bias, then fused bias+GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.hidden_act = config.hidden_act
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states, batch: Batch):
        if batch.backend in ("triton", "cpu") and self.hidden_act in ("gelu",) + _TANH_GELUS and \
                _plain_linear(self.dense):
            approximate = "none" if self.hidden_act == "gelu" else "tanh"
            if batch.backend == "cpu":
                weight = ops.cpu.packed_weight(self.dense, [self.dense.weight], lambda: self.dense.weight)
                return ops.cpu.linear(hidden_states, weight, self.dense.bias, gelu=approximate)
            h = F.linear(hidden_states, self.dense.weight)
            return ops.bias_gelu(h, self.dense.bias, approximate=approximate)
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig):
        nn.Module.__init__(self)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, batch: Batch, output_attentions=False, head_mask=None):
        attention_output, probs = self.attention(hidden_states, batch, output_attentions, head_mask)
        layer_output = self.output(self.intermediate(attention_output, batch), attention_output, batch)
        return layer_output, probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states, batch: Batch, output_attentions=False, output_hidden_states=False,
                head_mask=None):
        tokens = hidden_states.shape[0]
        if batch.rows is not None and batch.rows > tokens:
            hidden_states = torch.cat([hidden_states, hidden_states[:1].expand(batch.rows - tokens, -1)])
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_probs = () if output_attentions else None
        for i, layer in enumerate(self.layer):
            layer_head_mask = None if head_mask is None else head_mask[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # transformers' gradient_checkpointing_enable sets the function (and its kwargs)
                checkpoint = getattr(self, "_gradient_checkpointing_func", None) or functools.partial(
                    torch.utils.checkpoint.checkpoint, use_reentrant=False)
                hidden_states, probs = checkpoint(layer.__call__, hidden_states, batch, output_attentions,
                                                  layer_head_mask)
            else:
                hidden_states, probs = layer(hidden_states, batch, output_attentions, layer_head_mask)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
            if output_attentions:
                all_probs = all_probs + (probs,)
        if batch.rows is not None and batch.rows > tokens:
            hidden_states = hidden_states[:tokens]
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_probs)


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token_states):  # (B, H): the [CLS] token of each sequence
        return self.activation(self.dense(first_token_states))


# ------------------------------------------------------------------------------------------------------
# Base model
# ------------------------------------------------------------------------------------------------------
class BertModel(BertPreTrainedModel):
    """The bare BERT encoder. Inputs as Hugging Face's (padded ``(batch, seqlen)``), or packed: 1-D
    ``input_ids`` of all tokens with ``cu_seqlens`` (and ``max_seqlen``), as the tokenizer's packed output
    gives; then ``last_hidden_state`` is packed ``(total_tokens, hidden)``."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
        head_mask: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        reject_unsupported(kwargs)
        output_attentions = bool(output_attentions or getattr(self.config, "output_attentions", False))
        output_hidden_states = bool(output_hidden_states or getattr(self.config, "output_hidden_states", False))
        head_mask = self._head_mask(head_mask)
        inputs = check_inputs(self.config, self.embeddings.word_embeddings.weight.device, input_ids, attention_mask,
                              token_type_ids, position_ids, inputs_embeds, cu_seqlens, max_seqlen)
        backend = self._backend(inputs, output_attentions, output_hidden_states, head_mask)
        if inputs.packed:
            seq_of_token, position = ops.padding.packed_positions(inputs.cu_seqlens, inputs.shape[0])
            position_ids = position if inputs.position_ids is None else inputs.position_ids
        else:
            position_ids = inputs.position_ids
        embeddings = self.embeddings(inputs.input_ids, inputs.token_type_ids, position_ids, inputs.inputs_embeds)
        if inputs.packed:
            sequence_output, encoder_out = self._encode_packed(embeddings, inputs, backend, seq_of_token, position,
                                                               output_attentions, output_hidden_states, head_mask)
            first = sequence_output[inputs.cu_seqlens[:-1].long().clamp(max=max(inputs.shape[0] - 1, 0))]
        else:
            sequence_output, encoder_out = self._encode_padded(embeddings, inputs, backend, output_attentions,
                                                               output_hidden_states, head_mask)
            first = sequence_output[:, 0]
        pooled = self.pooler(first) if self.pooler is not None else None  # the [CLS] token of each sequence
        out = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled, hidden_states=encoder_out.hidden_states,
            attentions=encoder_out.attentions, cu_seqlens=inputs.cu_seqlens)
        return out if return_dict is not False else out.to_tuple()

    def _backend(self, inputs, output_attentions, output_hidden_states, head_mask) -> str:
        """The one decision of this call's path: ``resolve_backend`` (inference means no gradients, eval mode,
        nothing tracing), then what the call asks for that only the PyTorch path gives."""
        inference = not (torch.is_grad_enabled() or self.training or tracing())
        backend = resolve_backend(self.config, inputs.device, inference=inference,
                                  dtype=self.embeddings.word_embeddings.weight.dtype)
        if output_attentions or head_mask is not None:
            return "torch"  # attention probabilities exist only on the explicit-softmax path
        if inputs.bias is not None:  # a general mask (not a key-padding mask)
            if backend == "triton":
                warn_once("general-mask", "fastbert: a 3-D or 4-D attention mask that is not a key-padding mask "
                          "runs on the PyTorch path (the Triton kernels take key-padding masks only)")
            return "torch"
        if backend == "cpu" and output_hidden_states:
            return "torch"  # the cpu path runs packed; per-layer hidden states are returned padded
        return backend

    def _head_mask(self, head_mask):
        """transformers 4.x's ``head_mask``: (heads,) for every layer or (layers, heads); 1 keeps a head, 0
        silences it (its attention probabilities are multiplied by the mask). Returns (layers, 1, heads, 1, 1)."""
        if head_mask is None:
            return None
        L, nh = self.config.num_hidden_layers, self.config.num_attention_heads
        if head_mask.dim() == 1 and head_mask.shape[0] == nh:
            head_mask = head_mask.expand(L, nh)
        if tuple(head_mask.shape) != (L, nh):
            raise ValueError(f"head_mask must be (num_attention_heads,) = ({nh},) or (num_hidden_layers, "
                             f"num_attention_heads) = ({L}, {nh}), got {tuple(head_mask.shape)}")
        return head_mask.to(self.embeddings.word_embeddings.weight.dtype)[:, None, :, None, None]

    def _encode_padded(self, embeddings, inputs, backend, output_attentions, output_hidden_states, head_mask):
        """Padded (B, S, H) embeddings through the encoder -> (B, S, H), zeros where padded when unpadded."""
        B, S = inputs.shape
        unpad = (backend == "cpu" or backend == "triton" and self.config.unpad) and not output_hidden_states \
            and not inputs.all_real
        if unpad and not torch.compiler.is_exporting():  # every layer on real tokens only
            unpadded = ops.unpad_input(embeddings, inputs.mask, total=inputs.total, max_seqlen=inputs.max_seqlen)
            batch = packed_batch(backend, unpadded.cu_seqlens, unpadded.max_seqlen, unpadded.indices.numel(),
                                 embeddings.dtype)
            packed = self.encoder(unpadded.hidden_states, batch).last_hidden_state
            sequence_output = ops.pad_input(packed, unpadded.indices, B, S)
            return sequence_output, BaseModelOutput(last_hidden_state=sequence_output)
        if backend == "cpu":  # nothing padded: each row is one sequence of S tokens, run packed
            cu_seqlens = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=embeddings.device)
            packed = self.encoder(embeddings.reshape(B * S, -1),
                                  packed_batch("cpu", cu_seqlens, S, B * S, embeddings.dtype))
            sequence_output = packed.last_hidden_state.view(B, S, -1)
            return sequence_output, BaseModelOutput(last_hidden_state=sequence_output)
        # Nothing padded: no mask at all (SDPA's fastest kernel; no unpadding). While tracing nothing is known,
        # so the mask stays: a trace is right for padded and unpadded batches alike.
        batch = Batch(backend, mask=None if inputs.all_real else inputs.mask, bias=inputs.bias)
        encoder_out = self.encoder(embeddings, batch, output_attentions, output_hidden_states, head_mask)
        sequence_output = encoder_out.last_hidden_state
        if unpad:  # torch.export: the token count is data, not a shape, so the padding stays; zeros as unpadded
            sequence_output = sequence_output.masked_fill(~inputs.mask[..., None], 0)
        return sequence_output, encoder_out

    def _encode_packed(self, embeddings, inputs, backend, seq_of_token, position, output_attentions,
                       output_hidden_states, head_mask):
        """Packed (T, H) embeddings through the encoder -> (T, H)."""
        T, cu_seqlens, max_seqlen = inputs.shape[0], inputs.cu_seqlens, inputs.max_seqlen
        stay_packed = not output_hidden_states and (
            backend in ("triton", "cpu") or (backend == "torch" and self.config.unpad and not output_attentions
                                             and head_mask is None))
        if stay_packed:
            encoder_out = self.encoder(embeddings, packed_batch(backend, cu_seqlens, max_seqlen, T, embeddings.dtype))
            return encoder_out.last_hidden_state, encoder_out
        # the reference path (attention probabilities, per-layer hidden states) works on the padded layout
        B = cu_seqlens.numel() - 1
        mask = ops.padding.cu_seqlens_to_mask(cu_seqlens, max_seqlen)
        indices = seq_of_token * max_seqlen + position  # each token's place in the padded layout
        padded = ops.pad_input(embeddings, indices, B, max_seqlen)
        encoder_out = self.encoder(padded, Batch(backend, mask=mask), output_attentions, output_hidden_states,
                                   head_mask)
        flat = encoder_out.last_hidden_state.reshape(B * max_seqlen, -1)
        return flat.index_select(0, indices), encoder_out


def _plain_linear(*modules) -> bool:
    """True when every module is a plain nn.Linear, whose weights the fused Triton path may read directly;
    False for adapters (PEFT's LoRA wraps the Linear), which must run as modules."""
    return all(type(m) is nn.Linear for m in modules)


# ------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------
class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        # The output weights are tied to the input embeddings; the bias is the head's own.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


class BertOnlyNSPHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled_output):
        return self.seq_relationship(pooled_output)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


def _encode(model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
            output_hidden_states, **kwargs):
    # Trainer passes num_items_in_batch to models whose forward takes **kwargs; transformers' BERT heads take
    # and ignore it (their losses are means over the micro-batch): the same here.
    kwargs.pop("num_items_in_batch", None)
    return model.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states, return_dict=True, **kwargs)


def _finish(output, return_dict):
    return output if return_dict is not False else output.to_tuple()


class BertForPreTraining(BertPreTrainedModel):
    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                          "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, next_sentence_label=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, head_mask=None, **kwargs):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        prediction_scores, seq_relationship_score = self.cls(out.last_hidden_state, out.pooler_output)
        total_loss = None
        if labels is not None and next_sentence_label is not None:
            loss_fct = CrossEntropyLoss()
            masked_lm_loss = loss_fct(prediction_scores.view(-1, self.config.vocab_size), labels.view(-1))
            next_sentence_loss = loss_fct(seq_relationship_score.view(-1, 2), next_sentence_label.view(-1))
            total_loss = masked_lm_loss + next_sentence_loss
        return _finish(BertForPreTrainingOutput(
            loss=total_loss, prediction_logits=prediction_scores, seq_relationship_logits=seq_relationship_score,
            hidden_states=out.hidden_states, attentions=out.attentions), return_dict)


class BertForMaskedLM(BertPreTrainedModel):
    _tied_weights_keys = BertForPreTraining._tied_weights_keys

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, head_mask=None, **kwargs):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        prediction_scores = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(prediction_scores.view(-1, self.config.vocab_size), labels.view(-1))
        return _finish(MaskedLMOutput(loss=loss, logits=prediction_scores, hidden_states=out.hidden_states,
                                      attentions=out.attentions), return_dict)


class BertForNextSentencePrediction(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertOnlyNSPHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, head_mask=None, **kwargs):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        scores = self.cls(out.pooler_output)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(scores.view(-1, 2), labels.view(-1))
        return _finish(NextSentencePredictorOutput(loss=loss, logits=scores, hidden_states=out.hidden_states,
                                                   attentions=out.attentions), return_dict)


def _classifier_dropout(config):
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class BertForSequenceClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, head_mask=None, **kwargs):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                if self.num_labels == 1:
                    loss = MSELoss()(logits.squeeze(), labels.squeeze())
                else:
                    loss = MSELoss()(logits, labels)
            elif self.config.problem_type == "single_label_classification":
                _check_labels(labels, self.num_labels)
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            elif self.config.problem_type == "multi_label_classification":
                loss = BCEWithLogitsLoss()(logits, labels)
            else:
                raise ValueError(f"unknown problem_type {self.config.problem_type!r}")
        return _finish(SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                                attentions=out.attentions), return_dict)


def _check_labels(labels, num_labels, ignore_index=-100):
    if labels.numel() == 0 or capturing():
        return
    valid = (labels == ignore_index) | ((labels >= 0) & (labels < num_labels))
    if not bool(valid.all()):
        bad = labels[~valid][:5].tolist()
        raise ValueError(f"labels {bad} are outside the label set [0, {num_labels - 1}] (or -100 to ignore)")


class BertForMultipleChoice(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, head_mask=None, **kwargs):
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None or ref.dim() < 3 - (input_ids is not None):
            raise ValueError("multiple choice inputs must be (batch, num_choices, seqlen)")
        num_choices = ref.shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, t.size(-1))

        out = _encode(self, flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                      None if inputs_embeds is None else inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:]),
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        logits = self.classifier(self.dropout(out.pooler_output))
        reshaped_logits = logits.view(-1, num_choices)
        loss = None
        if labels is not None:
            _check_labels(labels, num_choices)
            loss = CrossEntropyLoss()(reshaped_logits, labels)
        return _finish(MultipleChoiceModelOutput(loss=loss, logits=reshaped_logits,
                                                 hidden_states=out.hidden_states, attentions=out.attentions),
                       return_dict)


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, head_mask=None, **kwargs):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            _check_labels(labels, self.num_labels)
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return _finish(TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                             attentions=out.attentions), return_dict)


class BertForQuestionAnswering(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, head_mask=None, **kwargs):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states, head_mask=head_mask, **kwargs)
        logits = self.qa_outputs(out.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        total_loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            # positions outside the inputs are ignored, as in Hugging Face
            ignored_index = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored_index)
            end_positions = end_positions.clamp(0, ignored_index)
            loss_fct = CrossEntropyLoss(ignore_index=ignored_index)
            total_loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
        return _finish(QuestionAnsweringModelOutput(
            loss=total_loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=out.hidden_states, attentions=out.attentions), return_dict)


def mean_pooling(last_hidden_state: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: the mean of the
    token vectors over real tokens."""
    if attention_mask is None:
        return last_hidden_state.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


__all__ = [
    "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
    "BertForSequenceClassification", "BertForMultipleChoice", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertPreTrainedModel", "mean_pooling", "resolve_backend",
]
