"""CUDA-graph inference for BERT: one graph per shape bucket, captured once, replayed with new inputs.

A BERT forward on the Triton path is ~8 launches per layer plus a few per forward; at small batches the GPU
waits on the CPU to issue them. ``GraphedBertModel`` captures the packed forward in a CUDA graph per bucket
and replays it: one launch per forward from the CPU's point of view.

Buckets. A graph's kernels have fixed grids, so each graph serves a fixed (total tokens, sequences, longest
sequence) shape. A batch is padded up to the next bucket of each: the real sequences first, then "dummy"
sequences holding the padding tokens (each no longer than the bucket's longest sequence, so the attention
grid covers them), then zero-length sequences. Dummy sequences attend only among themselves and every other
op is per token, so they cannot change a real token's output; their rows are dropped. Buckets are powers of
two from 64 tokens / 1 sequence / 16 positions (``token_buckets`` overrides the token buckets).

Validation happens on the host: give the inputs as the tokenizer's packed output (CPU tensors) and nothing is
read back from the GPU; ids already on the GPU are validated with one read (as the eager forward does), and a
padded batch on the GPU is packed with a few (give padded inputs as host tensors, or packed ones).
Capture needs a CUDA device; on other devices ``GraphedBertModel`` raises. The weights are captured by
address: after changing them (loading, fine-tuning), build a new ``GraphedBertModel``.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .model_inputs import check_packed, validate, validate_host
from .modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions


def _next_pow2(n: int, floor: int) -> int:
    b = floor
    while b < n:
        b *= 2
    return b


class BucketPlan:
    """The static shape a batch of ``total`` tokens in ``batch`` sequences (longest ``max_seqlen``) runs at."""

    def __init__(self, total: int, batch: int, max_seqlen: int, token_buckets: Optional[Sequence[int]] = None,
                 max_positions: int = 512):
        self.total, self.batch, self.max_seqlen = total, batch, max_seqlen
        self.seqlen = min(_next_pow2(max(max_seqlen, 1), 16), max_positions)
        if token_buckets:
            fits = [b for b in sorted(token_buckets) if b >= total]
            if not fits:
                raise ValueError(f"{total} tokens exceed the largest token bucket ({max(token_buckets)})")
            self.tokens = fits[0]
        else:
            self.tokens = _next_pow2(max(total, 1), 64)
        pad = self.tokens - total
        self.dummies = -(-pad // self.seqlen)  # sequences holding the padding tokens
        self.sequences = _next_pow2(batch + self.dummies, 1)

    @property
    def key(self) -> Tuple[int, int, int]:
        return self.tokens, self.sequences, self.seqlen

    def cu_seqlens(self, cu: torch.Tensor) -> torch.Tensor:
        """The bucket's (sequences + 1,) int32 cu_seqlens: the real ones, then dummies, then empty sequences."""
        out = torch.full((self.sequences + 1,), self.tokens, dtype=torch.int32)
        out[:self.batch + 1] = cu.to(torch.int32)
        end = self.total
        for i in range(self.dummies):
            end = min(end + self.seqlen, self.tokens)
            out[self.batch + 1 + i] = end
        return out


class GraphedBertModel:
    """``model`` (a fastbert ``BertModel`` in eval mode on a CUDA device) behind CUDA graphs.

    Call it like the model with packed inputs (``input_ids`` (T,), ``cu_seqlens`` (B + 1,), ``max_seqlen``,
    optional ``token_type_ids``) or padded ones (``input_ids`` and ``attention_mask`` (B, S)); returns the
    model's output for that input: packed ``last_hidden_state`` (T, H) with ``cu_seqlens`` for packed input,
    (B, S, H) with zeros at padding for padded input, and ``pooler_output`` (B, H) when the model has a pooler.
    """

    def __init__(self, model, *, token_buckets: Optional[Sequence[int]] = None, pooler: bool = True):
        if model.training:
            raise ValueError("GraphedBertModel is for inference: call model.eval() first (dropout would replay "
                             "one mask and gradients are not captured)")
        device = next(model.parameters()).device
        if device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need the model on a CUDA device (it is on {device}); on other devices "
                               "call the model itself")
        self.model, self.device = model, device
        self.token_buckets = list(token_buckets) if token_buckets else None
        self.pooler = pooler and model.pooler is not None
        self.graphs: Dict[Tuple[int, int, int], tuple] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def plan(self, total, batch, max_seqlen) -> BucketPlan:
        return BucketPlan(total, batch, max_seqlen, self.token_buckets, self.model.config.max_position_embeddings)

    @torch.inference_mode()
    def __call__(self, input_ids, cu_seqlens=None, max_seqlen=None, token_type_ids=None, attention_mask=None):
        padded = cu_seqlens is None
        if padded:
            input_ids, token_type_ids, cu_seqlens, max_seqlen, indices, shape = _pack(input_ids, attention_mask,
                                                                                      token_type_ids)
        ids, types, cu, max_seqlen = self._validated(input_ids, token_type_ids, cu_seqlens, max_seqlen)
        plan = self.plan(ids.numel(), cu.numel() - 1, max_seqlen)
        graph, static = self.graphs.get(plan.key) or self._capture(plan)
        static["input_ids"][:plan.total].copy_(ids, non_blocking=True)
        static["input_ids"][plan.total:].zero_()
        static["token_type_ids"][:plan.total].copy_(types, non_blocking=True)
        static["token_type_ids"][plan.total:].zero_()
        static["cu_seqlens"].copy_(plan.cu_seqlens(cu), non_blocking=True)
        graph.replay()
        hidden = static["hidden"][:plan.total].clone()
        pooled = static["pooled"][:plan.batch].clone() if self.pooler else None
        cu_dev = cu.to(self.device, non_blocking=True)
        if padded:
            out = hidden.new_zeros(shape[0] * shape[1], hidden.shape[-1])
            out[indices.to(self.device)] = hidden
            return BaseModelOutputWithPoolingAndCrossAttentions(
                last_hidden_state=out.view(*shape, -1), pooler_output=pooled)
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=hidden, pooler_output=pooled,
                                                            cu_seqlens=cu_dev)

    def _validated(self, ids, types, cu, max_seqlen):
        """cu_seqlens checked on the host (it stays there: the bucket's copy is built from it); the ids on the
        host too when they are host tensors, else with the model's one device read."""
        model = self.model
        if types is None:
            types = torch.zeros_like(ids)
        if ids.dim() != 1:
            raise ValueError(f"packed input_ids must be 1-D (total_tokens,), got {tuple(ids.shape)}")
        if cu.device.type != "cpu":
            cu = cu.cpu()  # one read: pass cu_seqlens as a host tensor (the tokenizer's packed output) to avoid it
        cu, max_seqlen = check_packed(model.config, cu, max_seqlen, ids.numel(), None, None, None, device=cu.device,
                                      host_known=True)
        if ids.device.type == "cpu":
            validate_host(model.config, ids, types, None)
        else:
            validate(model.config, ids, types, None)
        return ids, types, cu, max_seqlen

    def _forward(self, static, plan):
        out = self.model(input_ids=static["input_ids"], token_type_ids=static["token_type_ids"],
                         cu_seqlens=static["cu_seqlens"], max_seqlen=plan.seqlen)
        return out.last_hidden_state, out.pooler_output

    def _capture(self, plan: BucketPlan):
        dev = self.device
        static = {"input_ids": torch.zeros(plan.tokens, dtype=torch.long, device=dev),
                  "token_type_ids": torch.zeros(plan.tokens, dtype=torch.long, device=dev),
                  "cu_seqlens": plan.cu_seqlens(torch.tensor([0, plan.total] if plan.batch == 1 else
                                                             [0] * plan.batch + [plan.total])).to(dev)}
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles and autotunes every kernel before capture
                self._forward(static, plan)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static["hidden"], static["pooled"] = self._forward(static, plan)
        self.graphs[plan.key] = (graph, static)
        return graph, static


def _pack(input_ids, attention_mask, token_type_ids):
    """Padded (B, S) inputs -> packed, on the host when they are host tensors."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"padded input_ids and attention_mask must both be (batch, seqlen), got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]):
        raise ValueError("GraphedBertModel takes right-padded batches (each row's real tokens first)")
    indices = mask.flatten().nonzero().flatten()
    cu = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
    types = token_type_ids.flatten()[indices] if token_type_ids is not None else None
    return input_ids.flatten()[indices], types, cu, int(lengths.max()) if lengths.numel() else 0, indices, \
        tuple(input_ids.shape)


def run_bucketed(model, input_ids, cu_seqlens, max_seqlen, token_type_ids=None,
                 token_buckets: Optional[List[int]] = None):
    """The bucketed packed forward without capture (any device): what a graph replay computes. For tests."""
    total, batch = input_ids.numel(), cu_seqlens.numel() - 1
    plan = BucketPlan(total, batch, max_seqlen, token_buckets, model.config.max_position_embeddings)
    ids = torch.zeros(plan.tokens, dtype=torch.long, device=input_ids.device)
    ids[:total] = input_ids
    types = torch.zeros_like(ids)
    if token_type_ids is not None:
        types[:total] = token_type_ids
    cu = plan.cu_seqlens(cu_seqlens.cpu()).to(input_ids.device)
    out = model(input_ids=ids, token_type_ids=types, cu_seqlens=cu, max_seqlen=plan.seqlen)
    pooled = out.pooler_output[:batch] if out.pooler_output is not None else None
    return out.last_hidden_state[:total], pooled, plan
