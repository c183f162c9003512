"""Knowledge distillation into a smaller BERT, the way DistilBERT was made.

The student has the teacher's config with fewer layers and starts from every other teacher layer
(``student_layers``, default every other one ending with the last: ``1, 3, 5`` of 6; DistilBERT took
``0, 2, 4, 7, 9, 11`` of 12; embeddings, pooler and heads copied), or from random weights
(``student_init: random``, the baseline). Two objectives:

- ``mlm`` (a teacher with an MLM head): DistilBERT's triple loss on masked sentence pairs: the soft targets
  (KL divergence between the student's and teacher's vocabulary distributions at ``temperature``, scaled by
  T^2, on the masked positions) x ``alpha_ce``, the MLM cross-entropy x ``alpha_mlm``, and the cosine loss
  aligning the last hidden states (1 - cos per real token) x ``alpha_cos``.
- ``embedding`` (a sentence-transformers teacher: ``modules.json`` + ``1_Pooling``): the student's sentence
  embedding (the teacher's pooling and normalisation) regressed onto the teacher's (squared L2 distance per
  sentence) x ``alpha_emb``, plus the same hidden-state cosine loss. The saved student directory carries the
  teacher's sentence-transformers files, so it loads as a sentence-transformers model.

``auto`` picks ``embedding`` for a directory with ``modules.json``, else ``mlm``. Evaluation on held-out
text: for ``embedding``, the mean student-teacher cosine of the sentence embeddings, the Spearman
correlation between student and teacher cosine similarities of random sentence pairs, and how often the
student's nearest held-out neighbour of a sentence is the teacher's; for ``mlm``, MLM accuracy and how
often the student's top prediction at a masked position is the teacher's.

    fastbert distill --train-files data/text/pretrain/train --eval-files data/text/pretrain/heldout \
        --max-steps 300 --output-dir runs/distill
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..configuration_bert import BertConfig
from ..encode import pool, sentence_pipeline
from ..modeling_bert import BertForMaskedLM, BertModel
from .data import IGNORE_INDEX, PretrainingStream, check_vocab_matches, held_out_batches, load_tokenizer, \
    masked_positions, read_sentences, read_vocab, sentence_batches, step_batches
from .loop import DistInfo, TrainArgs, check_ranges, evaluate_task
from .recipe import TOKENIZER_FILES, Recipe, resolve_model_dir
from .recipe import run as run_recipe

OBJECTIVES = ("auto", "embedding", "mlm")
# beside the tokenizer's files in the student's directory, so it loads in sentence-transformers
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                               "1_Pooling", "2_Normalize")


@dataclass
class DistillConfig(TrainArgs):
    teacher: Optional[str] = None          # a BERT directory (default: the embedded all-MiniLM-L6-v2)
    objective: str = "auto"                # auto | embedding | mlm
    student_layers: Optional[List[int]] = None  # teacher layers the student starts from (default 1, 3, 5 of 6)
    student_init: str = "teacher"          # teacher | random (the baseline: same shape, random weights)
    train_files: List[str] = field(default_factory=list)
    eval_files: List[str] = field(default_factory=list)
    max_seq_length: int = 128
    batch_size: int = 32
    temperature: float = 2.0
    alpha_ce: float = 5.0                  # mlm: soft targets
    alpha_mlm: float = 2.0                 # mlm: hard targets
    alpha_emb: float = 1.0                 # embedding: sentence-embedding regression
    alpha_cos: float = 1.0                 # both: last hidden states' cosine
    mlm_probability: float = 0.15
    eval_sentences: int = 1000
    resume: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.student_init not in ("teacher", "random"):
            raise ValueError(f"student_init must be 'teacher' or 'random', got {self.student_init!r}")
        check_ranges(self, at_least_1=("batch_size", "eval_sentences"), positive=("temperature",),
                     at_least_0=("alpha_ce", "alpha_mlm", "alpha_emb", "alpha_cos"), unit=("mlm_probability",))
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be >= 8, got {self.max_seq_length}")


# ------------------------------------------------------------------------------------------------------
# The student
# ------------------------------------------------------------------------------------------------------
def default_layers(n_layers: int) -> List[int]:
    """Every other teacher layer, ending with the last: 6 -> [1, 3, 5], 12 -> [1, 3, 5, 7, 9, 11]."""
    return list(range(n_layers - 1, -1, -2))[::-1]


def make_student(teacher: nn.Module, layers: List[int], init: str = "teacher", seed: int = 0) -> nn.Module:
    """A model of the teacher's class and config with ``len(layers)`` layers; with ``init="teacher"`` its
    layer i is a copy of teacher layer ``layers[i]`` and every other weight a copy of the teacher's."""
    base = teacher.bert if hasattr(teacher, "bert") else teacher
    n = base.config.num_hidden_layers
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"student_layers must be distinct teacher layers in [0, {n - 1}], got {layers}")
    config = BertConfig.from_dict({**base.config.to_dict(), "num_hidden_layers": len(layers)})
    torch.manual_seed(seed)
    student = type(teacher)(config)
    if init == "teacher":
        state = teacher.state_dict()
        prefix = "bert.encoder.layer." if hasattr(teacher, "bert") else "encoder.layer."
        mapped = {}
        for key, value in state.items():
            if key.startswith(prefix):
                i, rest = key[len(prefix):].split(".", 1)
                if int(i) in layers:
                    mapped[f"{prefix}{layers.index(int(i))}.{rest}"] = value
            else:
                mapped[key] = value
        student.load_state_dict(mapped, strict=True)
    return student


# ------------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------------
def _hidden_cosine_sum(s_hidden, t_hidden, mask):
    """Sum over real tokens of 1 - cos(student, teacher) of the last hidden states."""
    cos = F.cosine_similarity(s_hidden.float(), t_hidden.float(), dim=-1)
    return ((1.0 - cos) * mask.float()).sum()


class EmbeddingDistillLoss(nn.Module):
    """Padded batches of sentences in; (loss, [emb_sum, cos_sum, cosine_sum]) out; counts (sentences, tokens)."""

    def __init__(self, student: BertModel, teacher: BertModel, spec: Dict, cfg: DistillConfig):
        super().__init__()
        self.student, self.teacher, self.spec, self.cfg = student, teacher, spec, cfg

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never drops out
        return self

    def forward(self, batch: dict, denom: torch.Tensor):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            t_hidden = self.teacher(**inputs, return_dict=True).last_hidden_state
            t_emb = pool(t_hidden.float(), batch["attention_mask"], self.spec)
        s_hidden = self.student(**inputs, return_dict=True).last_hidden_state
        s_emb = pool(s_hidden.float(), batch["attention_mask"], self.spec)
        emb = ((s_emb - t_emb) ** 2).sum()
        cos = _hidden_cosine_sum(s_hidden, t_hidden, batch["attention_mask"])
        loss = self.cfg.alpha_emb * emb / denom[0] + self.cfg.alpha_cos * cos / denom[1]
        with torch.no_grad():
            agree = F.cosine_similarity(s_emb, t_emb, dim=-1).sum()
        return loss, torch.stack([emb.detach(), cos.detach(), agree])


def embedding_count(batch):
    return torch.tensor([float(batch["input_ids"].shape[0]), float(batch["attention_mask"].sum())])


def embedding_report(sums, counts):
    return {"loss": float(sums[0]) / float(counts[0]), "hidden_cos_loss": float(sums[1]) / float(counts[1]),
            "emb_cos": float(sums[2]) / float(counts[0])}


class MLMDistillLoss(nn.Module):
    """Packed masked sentence pairs in; (loss, [soft_sum, mlm_sum, cos_sum, correct, agree]) out;
    counts (masked tokens, tokens)."""

    def __init__(self, student: BertForMaskedLM, teacher: BertForMaskedLM, cfg: DistillConfig):
        super().__init__()
        self.student, self.teacher, self.cfg = student, teacher, cfg

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def _run(self, model, batch, sel):
        out = model.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                         cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"], return_dict=True)
        hidden = out.last_hidden_state                                  # (T, H)
        return hidden, model.cls.predictions(hidden.index_select(0, sel)).float()  # (M, V)

    def forward(self, batch: dict, denom: torch.Tensor):
        labels = batch["labels"]
        sel = masked_positions(batch)
        target = labels.index_select(0, sel)
        with torch.no_grad():
            t_hidden, t_logits = self._run(self.teacher, batch, sel)
        s_hidden, s_logits = self._run(self.student, batch, sel)
        T = self.cfg.temperature
        soft = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), reduction="sum",
                        log_target=True) * T * T
        mlm = F.cross_entropy(s_logits, target, reduction="sum")
        cos = _hidden_cosine_sum(s_hidden, t_hidden, torch.ones(s_hidden.shape[0], device=s_hidden.device))
        loss = (self.cfg.alpha_ce * soft + self.cfg.alpha_mlm * mlm) / denom[0] + self.cfg.alpha_cos * cos / denom[1]
        with torch.no_grad():
            pred = s_logits.argmax(-1)
            sums = torch.stack([soft.detach(), mlm.detach(), cos.detach(), (pred == target).sum().float(),
                                (pred == t_logits.argmax(-1)).sum().float()])
        return loss, sums


def mlm_count(batch):
    return torch.tensor([float((batch["labels"] != IGNORE_INDEX).sum()), float(batch["input_ids"].numel())])


def mlm_report(sums, counts):
    n, t = float(counts[0]), float(counts[1])
    return {"loss": float(sums[0] + sums[1]) / n, "soft_loss": float(sums[0]) / n, "mlm_loss": float(sums[1]) / n,
            "hidden_cos_loss": float(sums[2]) / t, "mlm_acc": float(sums[3]) / n, "teacher_agree": float(sums[4]) / n}


# ------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # float similarities: ties negligible
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def evaluate_embeddings(student, teacher, sentences: List[str], tokenizer, spec, max_length, device,
                        batch_size=64, seed=0) -> Dict[str, float]:
    """Held-out agreement of the student's sentence embeddings with the teacher's."""
    embs = {"student": [], "teacher": []}
    was = student.training
    student.eval()
    for a in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[a:a + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        inputs = {k: enc[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        for name, model in (("student", student), ("teacher", teacher)):
            h = model(**inputs, return_dict=True).last_hidden_state.float()
            embs[name].append(F.normalize(pool(h, inputs["attention_mask"], spec), dim=-1).cpu())
    student.train(was)
    s, t = torch.cat(embs["student"]), torch.cat(embs["teacher"])
    n = s.shape[0]
    rng = np.random.default_rng([seed, 7])
    i, j = rng.integers(0, n, 4 * n), rng.integers(0, n, 4 * n)
    keep = i != j
    i, j = i[keep], j[keep]
    s_sim, t_sim = (s @ s.T), (t @ t.T)
    s_sim.fill_diagonal_(-2.0)
    t_sim.fill_diagonal_(-2.0)
    return {"emb_cos": float((s * t).sum(-1).mean()),
            "pair_spearman": _spearman(s_sim[i, j].numpy(), t_sim[i, j].numpy()),
            "nn_agreement": float((s_sim.argmax(-1) == t_sim.argmax(-1)).float().mean()),
            "sentences": n}


@torch.no_grad()
def evaluate_mlm(student, teacher, stream: PretrainingStream, batches, batch_size, device) -> Dict[str, float]:
    was = student.training
    student.eval()
    task = MLMDistillLoss(student, teacher, DistillConfig(max_steps=1))
    sums, counts = evaluate_task(task, held_out_batches(stream, batches, batch_size), mlm_count, device)
    student.train(was)
    return mlm_report(sums, counts)


# ------------------------------------------------------------------------------------------------------
# The recipe (recipe.py runs it)
# ------------------------------------------------------------------------------------------------------
def _teacher(cfg: DistillConfig, teacher_dir: Path):
    """(objective, teacher model, sentence pipeline or None), checked."""
    objective = cfg.objective
    if objective == "auto":
        objective = "embedding" if (teacher_dir / "modules.json").is_file() else "mlm"
    if objective == "embedding":
        spec = sentence_pipeline(teacher_dir)
        return objective, BertModel.from_pretrained(teacher_dir), spec
    from ..modeling_utils import load_state_dict

    if not any(k.startswith("cls.predictions.transform") for k in load_state_dict(str(teacher_dir))):
        raise ValueError(f"{teacher_dir} has no MLM head (cls.predictions.*): distil it with "
                         "objective=embedding (a sentence-transformers directory), or give a teacher with one")
    return objective, BertForMaskedLM.from_pretrained(teacher_dir), None


def recipe(cfg: DistillConfig, info: DistInfo) -> Recipe:
    teacher_dir = resolve_model_dir(cfg.teacher, "teacher")
    if not cfg.train_files:
        raise ValueError("train_files is empty: give raw text files to distil on")
    tokenizer = load_tokenizer(teacher_dir)
    objective, teacher, spec = _teacher(cfg, teacher_dir)
    check_vocab_matches(teacher.config, tokenizer, "teacher")
    layers = list(cfg.student_layers) if cfg.student_layers else default_layers(teacher.config.num_hidden_layers)
    student = make_student(teacher, layers, cfg.student_init, cfg.seed)
    teacher.eval().requires_grad_(False)
    max_length = min(cfg.max_seq_length, teacher.config.max_position_embeddings)
    common = dict(files_from=teacher_dir, extra_state={"objective": objective, "layers": layers},
                  result={"objective": objective, "student_layers": layers, "student_init": cfg.student_init})

    if objective == "embedding":
        steps = sentence_batches(read_sentences(cfg.train_files), tokenizer, cfg, max_length, info.world, info.rank)
        run_eval = None
        if cfg.eval_files:
            held = read_sentences(cfg.eval_files)[:cfg.eval_sentences]
            run_eval = lambda: evaluate_embeddings(student, teacher, held, tokenizer, spec, max_length,  # noqa: E731
                                                   info.device, seed=cfg.seed)
        return Recipe(student, EmbeddingDistillLoss(student, teacher, spec, cfg), steps, embedding_count,
                      embedding_report, ["loss", "hidden_cos_loss", "emb_cos", "grad_norm"],
                      files=TOKENIZER_FILES + SENTENCE_TRANSFORMERS_FILES, evaluate=run_eval,
                      default_metric="pair_spearman", **common)

    vocab = read_vocab(teacher_dir)

    def stream(files, seed):
        return PretrainingStream(files, tokenizer, vocab, max_length, seed=seed, mlm_probability=cfg.mlm_probability,
                                 max_position_embeddings=teacher.config.max_position_embeddings)

    steps = step_batches(stream(cfg.train_files, cfg.seed), cfg, info)
    run_eval = None
    if cfg.eval_files:
        ev = stream(cfg.eval_files, cfg.seed + 1)
        run_eval = lambda: evaluate_mlm(student, teacher, ev, 10, cfg.batch_size, info.device)  # noqa: E731
    return Recipe(student, MLMDistillLoss(student, teacher, cfg), steps, mlm_count, mlm_report,
                  ["loss", "soft_loss", "mlm_loss", "hidden_cos_loss", "mlm_acc", "teacher_agree", "grad_norm"],
                  evaluate=run_eval, default_metric="teacher_agree", **common)


def run(cfg: DistillConfig) -> Dict:
    return run_recipe(cfg, recipe)
