"""The pre-training step with the MLM head: forward + backward + AdamW of BERT's MLM + NSP loss.

Every provider computes Hugging Face ``BertForPreTraining``'s loss (mean cross-entropy over the masked tokens
plus mean NSP cross-entropy) on the same batch, the way its users would:

    fastbert-triton-unpad   what ``fastbert pretrain`` runs: packed batch (no padding anywhere), the masked rows
                            gathered before the vocabulary projection, fused LM head + cross-entropy (Triton)
    fastbert-triton-padded  fastbert as a drop-in: ``model(**padded_batch, labels=..., next_sentence_label=...)``
    fastbert-torch          the packed step on fastbert's PyTorch path (gathered rows, plain cross-entropy)
    hf-eager / hf-sdpa      ``transformers.BertForPreTraining(**padded_batch, labels=..., ...)``
    hf-compile              torch.compile of hf-sdpa's model
    hf-patched              hf-sdpa's model after ``fastbert.patch``

Hugging Face projects every token (padding included) onto the vocabulary; fastbert's own step projects the
~15% masked ones. Both give the same loss: the runner checks it (and gradients) against HF eager fp32 first.
"""
import copy
import itertools
from typing import Dict, Optional

import torch

import fastbert

from . import providers as P

MLM_PROBABILITY = 0.15
CHECKED_GRADS = ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.intermediate.dense.weight",
                 "bert.embeddings.word_embeddings.weight", "cls.predictions.transform.dense.weight")


def reference_model(encoder: fastbert.BertModel, seed: int = 0) -> fastbert.BertForPreTraining:
    """BertForPreTraining in fp32 on the CPU: the benchmark encoder's weights, heads initialised from ``seed``."""
    torch.manual_seed(seed)
    config = copy.deepcopy(encoder.config)
    config.backend = "torch"
    model = fastbert.BertForPreTraining(config)
    missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"encoder weights do not fit BertForPreTraining: missing {missing}, unexpected {unexpected}")
    model.weights_note = getattr(encoder, "weights_note", "")
    return model.eval()


def add_fields(inputs: Dict, vocab_size: int, seed: int) -> Dict:
    """Pre-training fields for a runner batch (``providers.make_inputs``), padded and packed, on its device:
    two segments per row (the second starts halfway), 15% of the real tokens as MLM targets (at least one
    per row), a random NSP label per row; packed copies with ``cu_seqlens``, the masked positions
    (``mlm_index``, as ``collate_packed`` finds them) and the loss denominators, all host-known (built here,
    not in the timed call)."""
    ids, lengths = inputs["input_ids"], inputs["lengths"]
    device = ids.device
    B, S = ids.shape
    gen = torch.Generator().manual_seed(seed)
    cols = torch.arange(S)[None, :]
    n = torch.tensor(lengths)[:, None]
    real = cols < n
    token_type = ((cols >= n // 2) & real).long()
    chosen = (torch.rand(B, S, generator=gen) < MLM_PROBABILITY) & real
    chosen[torch.arange(B), torch.randint(0, 1 << 30, (B,), generator=gen) % torch.tensor(lengths)] = True
    low = min(1000, vocab_size // 2)
    targets = torch.randint(low, vocab_size, (B, S), generator=gen)
    labels = torch.where(chosen, targets, torch.full_like(targets, -100))
    nsp = torch.randint(0, 2, (B,), generator=gen)
    flat = real.reshape(-1)
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)
    ids_cpu = ids.cpu()
    packed_labels = labels.reshape(-1)[flat]
    out = dict(inputs)
    out.update(token_type_ids=token_type.to(device), labels=labels.to(device), next_sentence_label=nsp.to(device),
               packed={"input_ids": ids_cpu.reshape(-1)[flat].to(device),
                       "token_type_ids": token_type.reshape(-1)[flat].to(device),
                       "labels": packed_labels.to(device), "next_sentence_label": nsp.to(device),
                       "mlm_index": torch.nonzero(packed_labels != -100).squeeze(1).to(device),  # as collate_packed
                       "cu_seqlens": cu.to(device), "max_seqlen": max(lengths)},
               denom=torch.tensor([float(chosen.sum()), float(B)], device=device))
    return out


def _hf_model(ref: fastbert.BertForPreTraining, attn_implementation: str):
    import transformers

    hcfg = P.hf_config(ref.config, attn_implementation)
    model = transformers.BertForPreTraining(hcfg)
    if getattr(model.config, "_attn_implementation", None) != attn_implementation:
        model = transformers.BertForPreTraining._from_config(hcfg, attn_implementation=attn_implementation)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model


def _fastbert_model(ref: fastbert.BertForPreTraining, backend: str, unpad: bool):
    config = copy.deepcopy(ref.config)
    config.backend, config.unpad = backend, unpad
    model = fastbert.BertForPreTraining(config)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model


def build(name: str, ref: fastbert.BertForPreTraining, device: torch.device, amp_dtype: Optional[torch.dtype],
          compile_cpu: bool = False, lr: float = 1e-5) -> P.Built:
    """A pre-training step provider: fp32 weights, autocast to ``amp_dtype`` (None: fp32), AdamW."""
    from fastbert.train.pretrain import PreTrainingLoss

    if name.startswith("fastbert-triton") and device.type != "cuda" and not P._interpret_ok(device):
        raise P.Skip(P.TRITON_CPU_REASON)
    if name == "fastbert-triton-graph":
        raise P.Skip("CUDA graph: inference only")
    if name == "hf-compile" and device.type != "cuda" and not compile_cpu:
        raise P.Skip(P.COMPILE_CPU_REASON)
    if name == "hf-patched" and device.type != "cuda" and not P._interpret_ok(device):
        from fastbert.ops._dispatch import interpret_mode

        if interpret_mode():
            raise P.Skip(P.TRITON_CPU_REASON)
    notes = []
    if name in ("fastbert-triton-unpad", "fastbert-torch"):
        backend = "triton" if name.startswith("fastbert-triton") else "torch"
        model = _fastbert_model(ref, backend, unpad=True).to(device)
        fused = backend == "triton"
        step_loss = PreTrainingLoss(model, fused_loss=fused)

        def loss_of(x):
            return step_loss(x["packed"], x["denom"])[0]
        notes.append("packed batch, masked rows gathered before the vocab projection"
                     + (", fused LM head + cross-entropy" if fused else ""))
    else:
        if name == "fastbert-triton-padded":
            model = _fastbert_model(ref, "triton", unpad=False).to(device)
            notes.append("drop-in call on the padded batch (every token projected)")
        elif name == "hf-eager":
            model = _hf_model(ref, "eager").to(device)
        elif name in ("hf-sdpa", "hf-compile", "hf-patched"):
            model = _hf_model(ref, "sdpa").to(device)
            if name == "hf-patched":
                fastbert.patch(model)
                notes.append("fastbert.patch(transformers.BertForPreTraining), padded")
        else:
            raise ValueError(f"unknown provider {name!r}; choose from {P.PROVIDERS}")
        call = model
        if name == "hf-compile":
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            call = torch.compile(model, dynamic=False)
            notes.append("torch.compile(dynamic=False), inductor default mode; compile time not timed")

        def loss_of(x):
            return call(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                        token_type_ids=x["token_type_ids"], labels=x["labels"],
                        next_sentence_label=x["next_sentence_label"]).loss

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, **({"fused": True} if device.type == "cuda" else {}))
    autocast = dict(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def step(x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = loss_of(x)
        loss.backward()
        opt.step()
        return loss

    loss_and_grads = P.checked_loss_and_grads(name, model, opt, loss_of, autocast, CHECKED_GRADS)

    notes.append(f"AdamW(lr={lr}{', fused' if device.type == 'cuda' else ''}), "
                 + (f"autocast {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "fp32"))
    out = P.Built(name, step, model, notes)
    out.loss_and_grads = loss_and_grads
    return out
