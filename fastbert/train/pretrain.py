"""MLM + NSP pre-training: the loss (vocabulary projection on masked positions only), the held-out evaluation,
the recipe (recipe.py runs it)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..configuration_bert import BertConfig
from ..modeling_bert import BertForPreTraining
from ..ops._dispatch import use_triton
from .data import IGNORE_INDEX, PretrainingStream, check_vocab_matches, held_out_batches, load_tokenizer, \
    masked_positions, read_vocab, step_batches, unigram_baseline
from .loop import DistInfo, TrainArgs, check_ranges, evaluate_task
from .recipe import Recipe, resolve_model_dir
from .recipe import run as run_recipe


class PreTrainingLoss(nn.Module):
    """Wraps ``BertForPreTraining`` so DDP sees one forward. Packed batches in, ``(loss, sums)`` out.

    The encoder runs on all tokens; the masked rows are gathered *before* ``cls.predictions`` (the
    hidden -> vocabulary projection, the largest matmul of a small BERT), so it costs ~15% of the full one.
    With one process and one micro-batch the loss equals Hugging Face ``BertForPreTraining``'s: mean
    cross-entropy over masked tokens + mean NSP cross-entropy.
    """

    def __init__(self, model: BertForPreTraining, fused_loss: bool = False):
        super().__init__()
        self.model = model
        self.fused_loss = fused_loss  # fused LM head + cross-entropy (Triton) where the Triton kernels run

    def forward(self, batch: dict, denom: torch.Tensor):
        out = self.model.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                              cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"], return_dict=True)
        labels = batch["labels"]                                       # (T,)
        sel = masked_positions(batch)                                  # (M,) masked positions
        hidden = out.last_hidden_state.index_select(0, sel)            # (M, H)
        target = labels.index_select(0, sel)
        head = self.model.cls.predictions
        if self.fused_loss and use_triton(hidden):  # projection + cross-entropy, no (M, V) logits in memory
            hidden = head.transform(hidden)
            weight, bias = head.decoder.weight, head.decoder.bias
            if torch.is_autocast_enabled(hidden.device.type):
                dtype = torch.get_autocast_dtype(hidden.device.type)
                hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
            losses, predicted = ops.linear_cross_entropy(hidden, weight, bias, target)
            mlm = losses.sum()
        else:
            logits = head(hidden).float()                              # (M, V)
            mlm = F.cross_entropy(logits, target, reduction="sum")
            predicted = logits.detach().argmax(-1)
        nsp_logits = self.model.cls.seq_relationship(out.pooler_output).float()  # (B, 2)
        nsp_label = batch["next_sentence_label"]
        nsp = F.cross_entropy(nsp_logits, nsp_label, reduction="sum")
        loss = mlm / denom[0] + nsp / denom[1]
        with torch.no_grad():
            sums = torch.stack([mlm.detach(), nsp.detach(), (predicted == target).sum().float(),
                                (nsp_logits.argmax(-1) == nsp_label).sum().float()])
        return loss, sums


def count(batch: dict) -> torch.Tensor:
    return torch.tensor([float((batch["labels"] != IGNORE_INDEX).sum()), float(batch["next_sentence_label"].numel())])


def report(sums: torch.Tensor, counts: torch.Tensor) -> Dict[str, float]:
    n_mlm, n_seq = float(counts[0]), float(counts[1])
    mlm, nsp = float(sums[0]) / n_mlm, float(sums[1]) / n_seq
    return {"loss": mlm + nsp, "mlm_loss": mlm, "nsp_loss": nsp, "mlm_acc": float(sums[2]) / n_mlm,
            "nsp_acc": float(sums[3]) / n_seq}


LOG_FIELDS = ["loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "grad_norm"]


@dataclass
class PretrainConfig(TrainArgs):
    train_files: List[str] = field(default_factory=list)
    eval_files: List[str] = field(default_factory=list)
    tokenizer: Optional[str] = None        # a directory with vocab.txt (default: the model's, else MiniLM's)
    model: Optional[str] = None            # continue from a checkpoint directory ...
    model_config: Dict = field(default_factory=dict)  # ... or BertConfig fields for a model from scratch
    max_seq_length: int = 128
    batch_size: int = 32                   # per process and micro-batch; global = batch * grad_accum * world
    doc_format: str = "blank"
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    short_seq_prob: float = 0.1
    max_predictions_per_seq: Optional[int] = None
    random_doc_buffer: int = 1000
    eval_batches: int = 20
    resume: Optional[str] = None           # a checkpoint file, or "auto": the latest in output_dir
    fused_mlm_loss: bool = False           # Triton LM head + cross-entropy, logits never stored (CUDA; opt-in
                                           # until measured on a GPU: docs/perf-notes.md)

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, at_least_1=("max_seq_length", "batch_size", "random_doc_buffer"), at_least_0=("eval_batches",),
                     unit=("mlm_probability", "short_seq_prob"))
        if self.max_seq_length < 4:
            raise ValueError(f"max_seq_length must be >= 4 ([CLS] a [SEP] b [SEP]), got {self.max_seq_length}")


def build_model(cfg: PretrainConfig, tokenizer) -> BertForPreTraining:
    if cfg.model:
        model = BertForPreTraining.from_pretrained(cfg.model)
    else:
        if not cfg.model_config:
            raise ValueError("give either model (a BERT directory) or model_config (BertConfig fields) to pre-train")
        model = BertForPreTraining(BertConfig(**{"vocab_size": len(tokenizer), **cfg.model_config}))
    check_vocab_matches(model.config, tokenizer)
    return model


def make_stream(cfg: PretrainConfig, files, tokenizer, vocab, config: BertConfig, seed: int) -> PretrainingStream:
    return PretrainingStream(files, tokenizer, vocab, cfg.max_seq_length, seed=seed, doc_format=cfg.doc_format,
                             mlm_probability=cfg.mlm_probability, whole_word_mask=cfg.whole_word_mask,
                             short_seq_prob=cfg.short_seq_prob, max_predictions_per_seq=cfg.max_predictions_per_seq,
                             random_doc_buffer=cfg.random_doc_buffer,
                             max_position_embeddings=config.max_position_embeddings)


@torch.no_grad()
def evaluate(model: BertForPreTraining, stream: PretrainingStream, batches: int, batch_size: int,
             device) -> Dict[str, float]:
    """MLM loss/accuracy and NSP accuracy on held-out text, with the unigram baseline of the same targets."""
    was_training = model.training
    model.eval()
    held = held_out_batches(stream, batches, batch_size)
    sums, counts = evaluate_task(PreTrainingLoss(model), held, count, device)
    model.train(was_training)
    out = report(sums, counts)
    out["unigram_acc"] = unigram_baseline(torch.cat([b["labels"] for b in held]))
    out["masked_tokens"] = int(counts[0])
    return out


def recipe(cfg: PretrainConfig, info: DistInfo) -> Recipe:
    if not cfg.train_files:
        raise ValueError("train_files is empty: give raw text files to pre-train on")
    tok_dir = resolve_model_dir(cfg.tokenizer or cfg.model, "tokenizer")  # default: the embedded MiniLM's uncased vocab
    tokenizer, vocab = load_tokenizer(tok_dir), read_vocab(tok_dir)
    model = build_model(cfg, tokenizer)
    stream = make_stream(cfg, cfg.train_files, tokenizer, vocab, model.config, cfg.seed)
    next(stream.instances(0))  # fail now, with a clear error, on an empty corpus
    run_eval = None
    if cfg.eval_files:
        ev = make_stream(cfg, cfg.eval_files, tokenizer, vocab, model.config, cfg.seed + 1)
        run_eval = lambda: evaluate(model, ev, cfg.eval_batches, cfg.batch_size, info.device)  # noqa: E731
    return Recipe(model, PreTrainingLoss(model, cfg.fused_mlm_loss), step_batches(stream, cfg, info), count, report,
                  LOG_FIELDS, files_from=tok_dir, evaluate=run_eval, default_metric="mlm_loss")


def run(cfg: PretrainConfig) -> Dict:
    return run_recipe(cfg, recipe)
