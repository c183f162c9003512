"""Pre-training data: raw text -> sentence pairs -> masked, packed batches, streamed.

The stream is a pure function of ``(files, tokenizer, seed)``: every random choice (where segment A
ends, whether B is the true next segment or a random one, which tokens are masked and how) is drawn from
a generator seeded by ``(seed, epoch, document index)`` or ``(seed, epoch, instance index)``, never from a
global RNG. So instance ``i`` is the same whichever process builds it, whenever it is built: a resumed run
fast-forwards to its data position and sees the same batches as an uninterrupted one, and a DDP rank takes
its slice of each global batch and the ranks together see the one-process batch.

Documents: one per line (``doc_format="line"``), or paragraphs separated by blank lines
(``doc_format="blank"``). A document is split into sentences at ``. ! ?`` followed by white space (and at
line ends in blank-line mode when a line ends a sentence); a sentence longer than a whole sequence is cut
into pieces rather than dropped.

``step_batches`` cuts a stream into each step's micro-batches for this rank (pre-training, MLM
distillation); ``sentence_batches`` does the same for a list of sentences (embedding distillation), shuffled
per epoch by a seeded generator, so it too resumes exactly.
"""
import glob
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------
def load_tokenizer(path):
    """fastbert's C++ WordPiece tokenizer for a directory holding ``vocab.txt``.

    Falls back to Hugging Face's ``BertTokenizerFast`` only while ``fastbert.tokenization_bert`` is not in
    this build (it is written in parallel); only the HF-shaped surface both share is used here."""
    try:
        from ..tokenization_bert import BertTokenizer
    except ImportError:
        from transformers import BertTokenizerFast

        return BertTokenizerFast.from_pretrained(str(path))
    return BertTokenizer.from_pretrained(str(path))


def read_vocab(path) -> List[str]:
    """The tokens of ``vocab.txt`` (a directory or the file itself), in id order."""
    p = Path(path)
    p = p / "vocab.txt" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no vocab.txt at {path}: the tokenizer directory must hold a WordPiece vocab.txt")
    with open(p, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def check_vocab_matches(config, tokenizer, what="model"):
    """A model whose embedding table does not match the tokenizer trains on the wrong ids: refuse."""
    n = len(tokenizer)
    if config.vocab_size != n:
        raise ValueError(
            f"the {what} config has vocab_size={config.vocab_size} but the tokenizer has {n} tokens: they must "
            f"match. Use the tokenizer the model was trained with, or set vocab_size={n} in the model config."
        )


class SpecialIds:
    def __init__(self, tokenizer, vocab: Sequence[str]):
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask, self.pad = tokenizer.mask_token_id, tokenizer.pad_token_id
        if None in (self.cls, self.sep, self.mask, self.pad):
            raise ValueError("the tokenizer lacks one of [CLS], [SEP], [MASK], [PAD]: it is not a BERT tokenizer")
        self.vocab_size = len(vocab)
        # Never masked, never drawn as a random replacement: [PAD] [UNK] [CLS] [SEP] [MASK] and [unusedN].
        special = np.zeros(self.vocab_size, dtype=bool)
        for i, tok in enumerate(vocab):
            if tok.startswith("[") and tok.endswith("]"):
                special[i] = True
        special[[self.cls, self.sep, self.mask, self.pad]] = True
        self.replaceable = np.flatnonzero(~special)
        self.is_continuation = np.array([t.startswith("##") for t in vocab], dtype=bool)


# ------------------------------------------------------------------------------------------------------
# Documents
# ------------------------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


def split_sentences(text: str) -> List[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def iter_documents(files: Sequence, doc_format: str = "blank") -> Iterator[str]:
    """Documents, streamed from ``files`` in order: lines (``"line"``) or blank-line separated paragraphs."""
    if doc_format not in ("line", "blank"):
        raise ValueError(f"doc_format must be 'line' or 'blank', got {doc_format!r}")
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            if doc_format == "line":
                for line in f:
                    if line.strip():
                        yield line.strip()
            else:
                para: List[str] = []
                for line in f:
                    if line.strip():
                        para.append(line.strip())
                    elif para:
                        yield " ".join(para)
                        para = []
                if para:
                    yield " ".join(para)


def resolve_files(patterns) -> List[Path]:
    """Files from paths, directories (every file under them, sorted) and globs; clear errors when empty."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    files: List[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(q) for q in glob.glob(str(pat), recursive=True) if Path(q).is_file())
        if not found:
            raise FileNotFoundError(f"no text files at {pat!r}: give files, directories or globs of raw text")
        files += found
    return files


# ------------------------------------------------------------------------------------------------------
# Instances: sentence pairs and masking
# ------------------------------------------------------------------------------------------------------
@dataclass
class Instance:
    input_ids: np.ndarray       # (L,) int64: [CLS] A [SEP] B [SEP], some positions masked
    token_type_ids: np.ndarray  # (L,) int64: 0 for [CLS] A [SEP], 1 for B [SEP]
    labels: np.ndarray          # (L,) int64: the original id at masked positions, IGNORE_INDEX elsewhere
    next_sentence_label: int    # 0: B follows A in the corpus, 1: B is a random segment (HF's convention)


def _rng(*key) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def mask_tokens(ids: np.ndarray, special: SpecialIds, rng: np.random.Generator, mlm_probability=0.15,
                whole_word=False, max_predictions: Optional[int] = None):
    """BERT's masking: pick ``round(n * p)`` (at least 1) of the n maskable tokens (whole words with
    ``whole_word``); of those, 80% become [MASK], 10% a random token, 10% stay. Returns (ids, labels)."""
    ids = ids.copy()
    labels = np.full_like(ids, IGNORE_INDEX)
    cand = np.flatnonzero(~np.isin(ids, [special.cls, special.sep, special.pad, special.mask]))
    if cand.size == 0:
        return ids, labels
    n_target = max(1, int(round(cand.size * mlm_probability)))
    if max_predictions is not None:
        n_target = min(n_target, max_predictions)
    if whole_word:  # group each word's pieces: a piece starting with ## joins the word before it
        starts = [0] + [j for j in range(1, cand.size)
                        if not (special.is_continuation[ids[cand[j]]] and cand[j] == cand[j - 1] + 1)]
        words = [cand[a:b] for a, b in zip(starts, starts[1:] + [cand.size])]
        chosen: List[int] = []
        for w in rng.permutation(len(words)):
            if len(chosen) >= n_target:
                break
            if len(chosen) + len(words[w]) > n_target:
                continue
            chosen.extend(words[w].tolist())
        positions = np.sort(np.array(chosen, dtype=np.int64))
    else:
        positions = np.sort(rng.choice(cand, size=n_target, replace=False))
    labels[positions] = ids[positions]
    r = rng.random(positions.size)
    random_ids = special.replaceable[rng.integers(0, special.replaceable.size, size=positions.size)]
    ids[positions[r < 0.8]] = special.mask
    rand = (r >= 0.8) & (r < 0.9)
    ids[positions[rand]] = random_ids[rand]
    return ids, labels


class PretrainingStream:
    """Masked sentence-pair instances, streamed from raw text, epoch after epoch.

    ``instances(start)`` yields ``(index, Instance)`` from global instance ``start`` on; instance indices
    count across epochs. Random next sentences come from a buffer of the ``random_doc_buffer`` documents
    read before the current one, so the corpus never has to fit in memory.
    """

    def __init__(self, files, tokenizer, vocab: Sequence[str], max_seq_length=128, seed=0, doc_format="blank",
                 mlm_probability=0.15, whole_word_mask=False, short_seq_prob=0.1, nsp_probability=0.5,
                 max_predictions_per_seq: Optional[int] = None, random_doc_buffer=1000,
                 max_position_embeddings: Optional[int] = None):
        if max_seq_length < 8:
            raise ValueError(f"max_seq_length={max_seq_length} is too short for [CLS] A [SEP] B [SEP]: use >= 8")
        if max_position_embeddings is not None and max_seq_length > max_position_embeddings:
            raise ValueError(
                f"max_seq_length={max_seq_length} is longer than the model allows (max_position_embeddings="
                f"{max_position_embeddings}): lower max_seq_length")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.files = resolve_files(files)
        self.tokenizer = tokenizer
        self.special = SpecialIds(tokenizer, vocab)
        self.max_seq_length = max_seq_length
        self.seed = seed
        self.doc_format = doc_format
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        self.short_seq_prob = short_seq_prob
        self.nsp_probability = nsp_probability
        self.max_predictions = max_predictions_per_seq
        self.random_doc_buffer = random_doc_buffer

    # -- tokenization -----------------------------------------------------------------------------
    def _tokenize_doc(self, text: str) -> List[np.ndarray]:
        sentences = split_sentences(text)
        if not sentences:
            return []
        enc = self.tokenizer(sentences)["input_ids"]
        piece = self.max_seq_length - 3
        out = []
        for ids in enc:
            ids = np.asarray([i for i in ids if i not in (self.special.cls, self.special.sep)], dtype=np.int64)
            for a in range(0, ids.size, piece):  # a sentence longer than a sequence is cut, not dropped
                if ids[a:a + piece].size:
                    out.append(ids[a:a + piece])
        return out

    def _documents(self, epoch: int):
        n = 0
        for text in iter_documents(self.files, self.doc_format):
            doc = self._tokenize_doc(text)
            if doc:
                yield n, doc
                n += 1
        if n == 0 and epoch == 0:
            raise ValueError(
                f"the corpus is empty: no text in {[str(f) for f in self.files]}. Give raw text files with one "
                "document per line (doc_format='line') or blank-line separated documents (doc_format='blank').")

    # -- pairs (BERT's create_instances_from_document, streamed) ----------------------------------
    def _pairs(self, epoch: int):
        max_tokens = self.max_seq_length - 3
        buffer: List[List[np.ndarray]] = []
        for d, doc in self._documents(epoch):
            rng = _rng(self.seed, epoch, d, 1)
            target = max_tokens if rng.random() >= self.short_seq_prob else int(rng.integers(2, max_tokens + 1))
            chunk: List[np.ndarray] = []
            length, i = 0, 0
            while i < len(doc):
                chunk.append(doc[i])
                length += doc[i].size
                if i == len(doc) - 1 or length >= target:
                    a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
                    tokens_a = np.concatenate(chunk[:a_end])
                    is_random = bool(buffer) and rng.random() < self.nsp_probability
                    if not is_random and len(chunk) == 1 and chunk[0].size >= 2:
                        # One segment (a short document): its true continuation is its own second part.
                        cut = int(rng.integers(1, chunk[0].size))
                        chunk = [chunk[0][:cut], chunk[0][cut:]]
                        a_end, tokens_a = 1, chunk[0][:cut]
                    if is_random:
                        other = buffer[int(rng.integers(0, len(buffer)))]
                        start = int(rng.integers(0, len(other)))
                        tokens_b = np.concatenate(other[start:])[: max(1, target - tokens_a.size)]
                        i -= len(chunk) - a_end  # the unused segments of this document are used again
                    elif len(chunk) >= 2:
                        tokens_b = np.concatenate(chunk[a_end:])
                    else:
                        tokens_b = None  # one segment and nothing to pair it with yet: skipped
                    if tokens_b is not None and tokens_b.size:
                        yield self._truncate(tokens_a, tokens_b, max_tokens, rng), int(is_random)
                    chunk, length = [], 0
                i += 1
            buffer.append(doc)
            if len(buffer) > self.random_doc_buffer:
                buffer.pop(0)

    @staticmethod
    def _truncate(a, b, max_tokens, rng):
        while a.size + b.size > max_tokens:  # trim the longer side, at the front or back at random
            if a.size >= b.size:
                a = a[1:] if rng.random() < 0.5 else a[:-1]
            else:
                b = b[1:] if rng.random() < 0.5 else b[:-1]
        return a, b

    # -- instances --------------------------------------------------------------------------------
    def instances(self, start: int = 0) -> Iterator:
        index, epoch = 0, 0
        sp = self.special
        while True:
            produced = 0
            for (a, b), is_random in self._pairs(epoch):
                produced += 1
                if index >= start:
                    ids = np.concatenate([[sp.cls], a, [sp.sep], b, [sp.sep]]).astype(np.int64)
                    types = np.concatenate([np.zeros(a.size + 2, np.int64), np.ones(b.size + 1, np.int64)])
                    masked, labels = mask_tokens(ids, sp, _rng(self.seed, epoch, index, 2), self.mlm_probability,
                                                 self.whole_word_mask, self.max_predictions)
                    yield index, Instance(masked, types, labels, is_random)
                index += 1
            if produced == 0:
                raise ValueError(
                    f"no sentence pairs can be built from {[str(f) for f in self.files]}: every document is a "
                    "single short sentence. Give more text, or documents of several sentences.")
            epoch += 1


# ------------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------------
def collate_packed(instances: Sequence[Instance]) -> dict:
    """Sequences end to end, no padding: what ``model.bert(input_ids, cu_seqlens=..., max_seqlen=...)``
    takes. ``labels`` and ``token_type_ids`` are packed the same way (total_tokens,); ``mlm_index`` holds the
    positions of the masked tokens (labels != IGNORE_INDEX), found here on the host so the loss selects them on
    the GPU without a ``nonzero`` (a host sync)."""
    lengths = [inst.input_ids.size for inst in instances]
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    labels = np.concatenate([i.labels for i in instances])
    return {
        "input_ids": torch.from_numpy(np.concatenate([i.input_ids for i in instances])),
        "token_type_ids": torch.from_numpy(np.concatenate([i.token_type_ids for i in instances])),
        "labels": torch.from_numpy(labels),
        "mlm_index": torch.from_numpy(np.flatnonzero(labels != IGNORE_INDEX).astype(np.int64)),
        "next_sentence_label": torch.tensor([i.next_sentence_label for i in instances], dtype=torch.long),
        "cu_seqlens": torch.from_numpy(cu).to(torch.int32),
        "max_seqlen": int(max(lengths)),
    }


def step_batches(stream: "PretrainingStream", cfg, info):
    """For each step from ``start`` on: this rank's ``cfg.grad_accum`` packed micro-batches of
    ``cfg.batch_size`` instances. Step s uses global instances [s*G, (s+1)*G), G = batch_size * grad_accum *
    world; rank r (``info.rank`` of ``info.world``) takes the r-th contiguous share."""
    per_rank = cfg.batch_size * cfg.grad_accum
    G = per_rank * info.world

    def steps(start: int):
        it = stream.instances(start * G)
        while True:
            insts = [inst for _, inst in itertools.islice(it, G)]
            mine = insts[info.rank * per_rank:(info.rank + 1) * per_rank]
            yield [collate_packed(mine[m * cfg.batch_size:(m + 1) * cfg.batch_size]) for m in range(cfg.grad_accum)]

    return steps


def held_out_batches(stream: "PretrainingStream", batches: int, batch_size: int) -> List[dict]:
    """The first ``batches`` packed batches of ``stream``: the same held-out set at every evaluation."""
    it = stream.instances(0)
    return [collate_packed([inst for _, inst in itertools.islice(it, batch_size)]) for _ in range(batches)]


def read_sentences(files) -> List[str]:
    """The sentences (of three words or more) of blank-line separated documents: distillation's text."""
    return [s for doc in iter_documents(resolve_files(files), "blank") for s in split_sentences(doc)
            if len(s.split()) >= 3]


def sentence_batches(sentences: List[str], tokenizer, cfg, max_length: int, world=1, rank=0):
    """For each step from ``start`` on: this rank's ``cfg.grad_accum`` padded micro-batches of
    ``cfg.batch_size`` sentences, from a shuffle seeded by ``(cfg.seed, epoch)`` (exact resume)."""
    per_rank = cfg.batch_size * cfg.grad_accum
    G = per_rank * world
    if len(sentences) < G:
        raise ValueError(f"{len(sentences)} training sentences are fewer than one global batch ({G})")
    spe = len(sentences) // G

    def encode(texts):
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "token_type_ids": enc["token_type_ids"]}

    def steps(start):
        step = start
        while True:
            epoch, k = divmod(step, spe)
            order = _rng(cfg.seed, epoch, 3).permutation(len(sentences))
            idx = order[k * G:(k + 1) * G][rank * per_rank:(rank + 1) * per_rank]
            yield [encode([sentences[i] for i in idx[m * cfg.batch_size:(m + 1) * cfg.batch_size]])
                   for m in range(cfg.grad_accum)]
            step += 1

    return steps


def masked_positions(batch: dict) -> torch.Tensor:
    """(M,) positions of the masked tokens of a packed batch: its host-computed ``mlm_index`` when it has one
    (no host sync), else ``nonzero`` on the labels (one)."""
    if batch.get("mlm_index") is not None:
        return batch["mlm_index"]
    return torch.nonzero(batch["labels"] != IGNORE_INDEX).squeeze(1)


def packed_to_padded(batch: dict, pad_id: int = 0) -> dict:
    """The same batch as Hugging Face takes it: (B, max_seqlen) with an attention mask."""
    cu = batch["cu_seqlens"].tolist()
    B, S = len(cu) - 1, batch["max_seqlen"]
    out = {"input_ids": torch.full((B, S), pad_id, dtype=torch.long),
           "token_type_ids": torch.zeros(B, S, dtype=torch.long),
           "attention_mask": torch.zeros(B, S, dtype=torch.long),
           "labels": torch.full((B, S), IGNORE_INDEX, dtype=torch.long),
           "next_sentence_label": batch["next_sentence_label"].clone()}
    for b in range(B):
        n = cu[b + 1] - cu[b]
        out["input_ids"][b, :n] = batch["input_ids"][cu[b]:cu[b + 1]]
        out["token_type_ids"][b, :n] = batch["token_type_ids"][cu[b]:cu[b + 1]]
        out["labels"][b, :n] = batch["labels"][cu[b]:cu[b + 1]]
        out["attention_mask"][b, :n] = 1
    return out


def unigram_baseline(labels: torch.Tensor) -> float:
    """Accuracy of always predicting the most frequent masked target of this very set (an upper bound on
    any context-free, one-token guess)."""
    t = labels[labels != IGNORE_INDEX]
    if t.numel() == 0:
        return 0.0
    return float(torch.bincount(t).max()) / t.numel()


__all__ = ["load_tokenizer", "read_vocab", "check_vocab_matches", "PretrainingStream", "Instance", "mask_tokens",
           "collate_packed", "step_batches", "held_out_batches", "read_sentences", "sentence_batches",
           "masked_positions", "packed_to_padded", "iter_documents", "split_sentences", "resolve_files",
           "unigram_baseline", "IGNORE_INDEX"]
