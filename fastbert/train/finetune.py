"""Fine-tuning: sequence classification (accuracy), token classification / NER (entity F1) and extractive
QA (exact match + F1), each from a JSON-lines file:

- ``cls``: ``{"text": ..., "label": ...}`` (optionally ``"text_pair"``).
- ``ner``: ``{"tokens": [words], "tags": [BIO tags]}``; a word's tag goes on its first word piece, the other
  pieces are ignored by the loss (-100); predictions are read back from the first pieces.
- ``qa``: ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}`` (SQuAD).
  A context longer than fits is cut into windows ``doc_stride`` tokens apart; a window without the answer is
  labelled at [CLS] (position 0); an answer is the best-scoring span over all windows of its example.
"""
import collections
import itertools
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_bert import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from .data import IGNORE_INDEX, check_vocab_matches, load_tokenizer
from .loop import DistInfo, TrainArgs, check_ranges
from .recipe import Recipe, resolve_model_dir
from .recipe import run as run_recipe

TASKS = ("cls", "ner", "qa")
DEFAULT_METRIC = {"cls": "accuracy", "ner": "f1", "qa": "f1"}  # picks the kept best checkpoint


@dataclass
class FinetuneConfig(TrainArgs):
    task: str = "cls"
    model: Optional[str] = None            # a BERT directory (default: the embedded all-MiniLM-L6-v2)
    tokenizer: Optional[str] = None        # default: the model directory
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    labels: Optional[List[str]] = None     # the label set (cls) / tag set (ner); default: as seen in train_file
    max_length: int = 128
    truncation: bool = True                # False: a text longer than max_length is an error
    doc_stride: int = 64                   # qa: tokens between the starts of two windows of one context
    max_query_length: int = 64
    max_answer_length: int = 30
    batch_size: int = 16
    eval_batch_size: int = 64
    epochs: float = 0.0                    # > 0: max_steps = epochs * steps per epoch
    max_steps: int = 0
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    resume: Optional[str] = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        super().__post_init__()
        check_ranges(self, at_least_1=("max_length", "batch_size", "eval_batch_size", "doc_stride",
                                       "max_query_length", "max_answer_length"),
                     at_least_0=("epochs", "max_steps"))
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels has duplicates: {self.labels}")

    def _check_steps(self):  # max_steps may be 0 when epochs sets it
        if self.max_steps < 1 and self.epochs <= 0:
            raise ValueError("give max_steps or epochs")


# ------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------
def read_jsonl(path) -> List[dict]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object ({e})") from e
    if not rows:
        raise ValueError(f"{path} holds no examples: one JSON object per line is expected")
    return rows


def _need(row, key, path, n):
    if key not in row:
        raise ValueError(f"{path}: example {n} has no {key!r} field (it has {sorted(row)})")
    return row[key]


def label_set(rows, key, path, given: Optional[List[str]]) -> List[str]:
    seen = set()
    for n, r in enumerate(rows, 1):
        v = _need(r, key, path, n)
        seen.update(map(str, v) if isinstance(v, list) else [str(v)])
    return list(given) if given else sorted(seen)


def _label_id(label2id, value, path, n):
    v = str(value)
    if v not in label2id:
        raise ValueError(f"{path}: example {n} has label {v!r}, which is not in the label set {sorted(label2id)}; "
                         "add it to `labels` in the config or fix the data")
    return label2id[v]


def _check_length(n_tokens, max_length, truncation, path, n):
    if n_tokens > max_length and not truncation:
        raise ValueError(f"{path}: example {n} is {n_tokens} tokens long, more than max_length={max_length}: "
                         "set truncation=true, raise max_length (up to the model's max_position_embeddings), "
                         "or shorten the text")


# ------------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------------
def encode_cls(rows, tok, label2id, cfg, path) -> List[dict]:
    feats = []
    for n, r in enumerate(rows, 1):
        text, pair = _need(r, "text", path, n), r.get("text_pair")
        full = tok([text], text_pair=[pair] if pair is not None else None)["input_ids"][0]
        _check_length(len(full), cfg.max_length, cfg.truncation, path, n)
        enc = tok([text], text_pair=[pair] if pair is not None else None, truncation=True, max_length=cfg.max_length)
        feats.append({"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0],
                      "labels": _label_id(label2id, _need(r, "label", path, n), path, n)})
    return feats


def encode_ner(rows, tok, label2id, cfg, path) -> List[dict]:
    feats = []
    unk = tok.convert_tokens_to_ids(["[UNK]"])[0]
    for n, r in enumerate(rows, 1):
        words, tags = _need(r, "tokens", path, n), _need(r, "tags", path, n)
        if len(words) != len(tags):
            raise ValueError(f"{path}: example {n} has {len(words)} tokens but {len(tags)} tags")
        ids, labels, first = [tok.cls_token_id], [IGNORE_INDEX], []
        for w, (word, tag) in enumerate(zip(words, tags)):
            pieces = tok.convert_tokens_to_ids(tok.tokenize(word)) or [unk]
            first.append(len(ids))
            ids += pieces
            labels += [_label_id(label2id, tag, path, n)] + [IGNORE_INDEX] * (len(pieces) - 1)
        _check_length(len(ids) + 1, cfg.max_length, cfg.truncation, path, n)
        ids, labels = ids[:cfg.max_length - 1] + [tok.sep_token_id], labels[:cfg.max_length - 1] + [IGNORE_INDEX]
        feats.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "labels": labels,
                      "meta": {"example": n - 1, "first": [i if i < cfg.max_length - 1 else -1 for i in first]}})
    return feats


def encode_qa(rows, tok, cfg, path, with_labels=True) -> List[dict]:
    feats = []
    specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    for n, r in enumerate(rows, 1):
        question, context = _need(r, "question", path, n), _need(r, "context", path, n)
        q = [i for i in tok([question])["input_ids"][0] if i not in specials][:cfg.max_query_length]
        enc = tok([context], return_offsets_mapping=True)
        pairs = [(i, tuple(o)) for i, o in zip(enc["input_ids"][0], enc["offset_mapping"][0]) if i not in specials]
        ctx_ids, offsets = [p[0] for p in pairs], [p[1] for p in pairs]
        room = cfg.max_length - len(q) - 3
        if room < 8:
            raise ValueError(f"{path}: example {n}: the question leaves {room} tokens of max_length={cfg.max_length} "
                             "for the context; raise max_length or lower max_query_length")
        s_char = e_char = None
        if with_labels:
            ans = _need(r, "answers", path, n)
            if ans["text"]:
                s_char = int(ans["answer_start"][0])
                e_char = s_char + len(ans["text"][0])
                if context[s_char:e_char] != ans["text"][0]:
                    raise ValueError(f"{path}: example {n}: answer_start {s_char} does not point at the answer text "
                                     f"{ans['text'][0]!r} in the context")
        start = 0
        while True:
            end = min(start + room, len(ctx_ids))
            ids = [tok.cls_token_id] + q + [tok.sep_token_id] + ctx_ids[start:end] + [tok.sep_token_id]
            types = [0] * (len(q) + 2) + [1] * (end - start + 1)
            base = len(q) + 2
            offs = [None] * base + offsets[start:end] + [None]
            sp = ep = 0
            if s_char is not None:
                toks = [k for k in range(start, end) if offsets[k][1] > s_char and offsets[k][0] < e_char]
                if toks and offsets[toks[0]][0] <= s_char and offsets[toks[-1]][1] >= e_char:
                    sp, ep = base + toks[0] - start, base + toks[-1] - start
            feats.append({"input_ids": ids, "token_type_ids": types, "start_positions": sp, "end_positions": ep,
                          "meta": {"example": n - 1, "offsets": offs}})
            if end >= len(ctx_ids):
                break
            start += min(cfg.doc_stride, room)
    return feats


def collate(feats: List[dict], pad_id: int) -> dict:
    S = max(len(f["input_ids"]) for f in feats)
    B = len(feats)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    types = torch.zeros(B, S, dtype=torch.long)
    mask = torch.zeros(B, S, dtype=torch.long)
    out = {}
    for b, f in enumerate(feats):
        n = len(f["input_ids"])
        ids[b, :n] = torch.tensor(f["input_ids"])
        types[b, :n] = torch.tensor(f["token_type_ids"])
        mask[b, :n] = 1
    out.update(input_ids=ids, token_type_ids=types, attention_mask=mask)
    if "labels" in feats[0]:
        if isinstance(feats[0]["labels"], list):
            lab = torch.full((B, S), IGNORE_INDEX, dtype=torch.long)
            for b, f in enumerate(feats):
                lab[b, :len(f["labels"])] = torch.tensor(f["labels"])
            out["labels"] = lab
        else:
            out["labels"] = torch.tensor([f["labels"] for f in feats], dtype=torch.long)
    if "start_positions" in feats[0]:
        out["start_positions"] = torch.tensor([f["start_positions"] for f in feats], dtype=torch.long)
        out["end_positions"] = torch.tensor([f["end_positions"] for f in feats], dtype=torch.long)
    return out


# ------------------------------------------------------------------------------------------------------
# Losses (sums over the batch, divided by the step's global count: see loop.py)
# ------------------------------------------------------------------------------------------------------
class TaskLoss(nn.Module):
    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch, denom):
        inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        out = self.model(**inputs, return_dict=True)
        if self.task == "qa":
            s = F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
            e = F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")
            loss_sum = (s + e) / 2
            correct = ((out.start_logits.argmax(-1) == batch["start_positions"])
                       & (out.end_logits.argmax(-1) == batch["end_positions"])).sum()
        else:
            logits = out.logits.float()
            labels = batch["labels"]
            loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="sum",
                                       ignore_index=IGNORE_INDEX)
            correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
        return loss_sum / denom[0], torch.stack([loss_sum.detach(), correct.float()])


def _counter(task):
    def count(batch):
        if task == "ner":
            return torch.tensor([float((batch["labels"] != IGNORE_INDEX).sum())])
        return torch.tensor([float(batch["input_ids"].shape[0])])
    return count


def _report(sums, counts):
    n = max(float(counts[0]), 1.0)
    return {"loss": float(sums[0]) / n, "acc": float(sums[1]) / n}


# ------------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------------
def accuracy(pred: List[int], gold: List[int]) -> float:
    return sum(p == g for p, g in zip(pred, gold)) / max(len(gold), 1)


def bio_spans(tags: List[str]) -> set:
    """Entity spans (type, start, end) of a BIO (or IOB1) sequence; an I- without a matching B- opens one."""
    spans, start, kind = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        inside = t.startswith("I-") and kind == t[2:]
        if start is not None and not inside:
            spans.add((kind, start, i))
            start, kind = None, None
        if t.startswith("B-") or (t.startswith("I-") and not inside):
            start, kind = i, t[2:]
    return spans


def entity_f1(pred: List[List[str]], gold: List[List[str]]) -> Dict[str, float]:
    tp = n_pred = n_gold = 0
    for p, g in zip(pred, gold):
        ps, gs = bio_spans(p), bio_spans(g)
        tp, n_pred, n_gold = tp + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gold if n_gold else 0.0
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0}


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return float(p == g)
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def squad_scores(preds: List[str], golds: List[List[str]]) -> Dict[str, float]:
    em = [max(float(normalize_answer(p) == normalize_answer(g)) for g in gs) for p, gs in zip(preds, golds)]
    f1 = [max(squad_f1(p, g) for g in gs) for p, gs in zip(preds, golds)]
    n = max(len(preds), 1)
    return {"exact_match": 100 * sum(em) / n, "f1": 100 * sum(f1) / n}


@torch.no_grad()
def evaluate(model, task, feats, rows, id2label, cfg, device, pad_id) -> Dict[str, float]:
    was = model.training
    model.eval()
    outs = []
    for a in range(0, len(feats), cfg.eval_batch_size):
        chunk = feats[a:a + cfg.eval_batch_size]
        b = collate(chunk, pad_id)
        o = model(**{k: b[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")}, return_dict=True)
        if task == "qa":
            outs += list(zip(o.start_logits.float().cpu(), o.end_logits.float().cpu()))
        else:
            outs += list(o.logits.float().argmax(-1).cpu())
    model.train(was)
    if task == "cls":
        return {"accuracy": accuracy([int(p) for p in outs], [f["labels"] for f in feats]), "examples": len(feats)}
    if task == "ner":
        pred, gold = [], []
        for f, p in zip(feats, outs):
            row = rows[f["meta"]["example"]]
            pred.append([id2label[int(p[i])] if i >= 0 else "O" for i in f["meta"]["first"]])
            gold.append([str(t) for t in row["tags"]])
        res = entity_f1(pred, gold)
        res["examples"] = len(feats)
        return res
    best: Dict[int, tuple] = {}
    for f, (sl, el) in zip(feats, outs):
        offs, ex = f["meta"]["offsets"], f["meta"]["example"]
        ctx = [i for i, o in enumerate(offs) if o is not None]
        top_s = sorted(ctx, key=lambda i: -float(sl[i]))[:20]
        top_e = sorted(ctx, key=lambda i: -float(el[i]))[:20]
        for i, j in itertools.product(top_s, top_e):
            if i <= j < i + cfg.max_answer_length:
                score = float(sl[i] + el[j])
                if ex not in best or score > best[ex][0]:
                    best[ex] = (score, rows[ex]["context"][offs[i][0]:offs[j][1]])
    preds = [best.get(k, (0.0, ""))[1] for k in range(len(rows))]
    golds = [r["answers"]["text"] or [""] for r in rows]
    res = squad_scores(preds, golds)
    res["examples"] = len(rows)
    return res


# ------------------------------------------------------------------------------------------------------
# The recipe (recipe.py runs it)
# ------------------------------------------------------------------------------------------------------
def prepare(cfg: FinetuneConfig):
    """Model, tokenizer, features and label maps; every input check happens here, before any training."""
    model_dir = resolve_model_dir(cfg.model, "model")
    tok = load_tokenizer(cfg.tokenizer or model_dir)
    if cfg.train_file is None:
        raise ValueError("give train_file (JSON lines)")
    train_rows = read_jsonl(cfg.train_file)
    eval_rows = read_jsonl(cfg.eval_file) if cfg.eval_file else None
    labels, label2id = None, None
    if cfg.task in ("cls", "ner"):
        labels = label_set(train_rows, "label" if cfg.task == "cls" else "tags", cfg.train_file, cfg.labels)
        label2id = {l: i for i, l in enumerate(labels)}
    from ..configuration_bert import BertConfig

    base = BertConfig.from_pretrained(str(model_dir))
    check_vocab_matches(base, tok)
    if cfg.max_length > base.max_position_embeddings:
        raise ValueError(f"max_length={cfg.max_length} is longer than the model allows (max_position_embeddings="
                         f"{base.max_position_embeddings}): lower max_length")
    kw = {}
    if labels is not None:
        kw = dict(num_labels=len(labels), id2label={i: l for i, l in enumerate(labels)}, label2id=label2id)
    cls = {"cls": BertForSequenceClassification, "ner": BertForTokenClassification,
           "qa": BertForQuestionAnswering}[cfg.task]
    model = cls.from_pretrained(str(model_dir), **kw)

    def encode(rows, path):
        if cfg.task == "cls":
            return encode_cls(rows, tok, label2id, cfg, path)
        if cfg.task == "ner":
            return encode_ner(rows, tok, label2id, cfg, path)
        return encode_qa(rows, tok, cfg, path)

    train = encode(train_rows, cfg.train_file)
    ev = encode(eval_rows, cfg.eval_file) if eval_rows else None
    return model, tok, str(model_dir), train, ev, eval_rows, labels


def step_batches(feats, cfg, info, pad_id):
    """torch's DistributedSampler (one shuffle per epoch, seeded) cut into steps of batch * grad_accum per
    rank; a resumed run re-enters the epoch at its step."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(feats, num_replicas=info.world, rank=info.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_rank = cfg.batch_size * cfg.grad_accum
    spe = max(1, len(sampler) // per_rank)

    def steps(start):
        step, epoch, order = start, None, None
        while True:
            if step // spe != epoch:
                epoch = step // spe
                sampler.set_epoch(epoch)
                order = list(sampler)
            k = step % spe
            idx = order[k * per_rank:(k + 1) * per_rank]
            yield [collate([feats[i] for i in idx[m * cfg.batch_size:(m + 1) * cfg.batch_size]], pad_id)
                   for m in range(cfg.grad_accum)]
            step += 1

    return steps, spe


def recipe(cfg: FinetuneConfig, info: DistInfo) -> Recipe:
    model, tok, tok_dir, train, ev, eval_rows, labels = prepare(cfg)
    per_step = cfg.batch_size * cfg.grad_accum * info.world
    if len(train) < per_step:
        raise ValueError(f"{len(train)} training examples (features) are fewer than one global batch ({per_step})")
    steps, spe = step_batches(train, cfg, info, tok.pad_token_id)
    if cfg.epochs > 0:
        cfg.max_steps = max(1, int(round(cfg.epochs * spe)))
    run_eval = None
    if ev is not None:
        id2label = {i: l for i, l in enumerate(labels)} if labels else None
        run_eval = lambda: evaluate(model, cfg.task, ev, eval_rows, id2label, cfg, info.device,  # noqa: E731
                                    tok.pad_token_id)
    return Recipe(model, TaskLoss(model, cfg.task), steps, _counter(cfg.task), _report, ["loss", "acc"],
                  files_from=cfg.tokenizer or tok_dir, evaluate=run_eval, default_metric=DEFAULT_METRIC[cfg.task],
                  result={"task": cfg.task, "train_features": len(train)})


def run(cfg: FinetuneConfig) -> Dict:
    return run_recipe(cfg, recipe)
