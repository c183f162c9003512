"""Rows built from per-sequence tokens: ``is_split_into_words=True`` (NER) and ``stride`` +
``return_overflowing_tokens`` (QA sliding windows), with HF tokenizers' truncation, window order, special
tokens and padding. The plain calls never come here: the C++ core does those whole.

The sequences come from the C++ core without special tokens, as flat arrays (``Side``: ids, offsets, word ids,
and where each item starts); ``plan`` picks each row's windows in Python (a few operations per row), and
``assemble`` lays out every token with numpy index arithmetic: no Python loop per token. It returns the
same dict layout as the core's ``encode_batch`` (packed + lengths, or padded rows), the alignment (sequence
ids, word ids, offsets: what BatchEncoding.word_ids() reads, made per row on first use) and
``overflow_to_sample_mapping``.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from .tokenization_outputs import pad_values, round_up


class Side(NamedTuple):
    """The first (or second) sequences of a batch, flat: token ids, offsets (n, 2), word ids, and each
    item's first token and token count."""
    ids: np.ndarray
    offsets: np.ndarray
    words: np.ndarray
    start: np.ndarray
    count: np.ndarray


def word_ids_by_pieces(ids: np.ndarray, lengths: np.ndarray, starts_word: np.ndarray) -> np.ndarray:
    """Word index of each token, counted per sequence: a token starts a word unless it is a "##" piece
    (``starts_word[id]`` False); a sequence's first token always does."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    begins = starts_word[ids].copy()
    begins[first[lengths > 0]] = True
    cs = np.cumsum(begins)
    return cs - np.repeat(cs[np.minimum(first, n - 1)], lengths)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def windows(n: int, size: int, stride: int, left: bool = False) -> List[Tuple[int, int]]:
    """HF's Encoding.truncate(size, stride) on n tokens: the kept part first, then the overflowing windows,
    each starting size - stride after the previous one, until one reaches the end (left: from the end
    backwards, each ending size - stride before the previous one, until one reaches the start)."""
    if n <= size:
        return [(0, n)]
    if size == 0:  # as HF: nothing kept, the whole sequence is the one overflowing part
        return [(0, 0), (0, n)]
    if stride >= size:
        raise ValueError(f"stride={stride} must be smaller than max_length minus the special tokens ({size}): "
                         "each window must move forward (HF's tokenizers panics here)")
    out, start = [], 0
    if left:
        stop = n
        while True:
            start = max(0, stop - size)
            out.append((start, stop))
            if start == 0:
                return out
            stop -= size - stride
    while True:
        stop = min(start + size, n)
        out.append((start, stop))
        if stop == n:
            return out
        start += size - stride


def plan(n1: int, n2: Optional[int], target: Optional[int], truncation: str, stride: int,
         overflow: bool, left: bool = False) -> List[Tuple[Tuple[int, int], Optional[Tuple[int, int]]]]:
    """The rows of one example as ((a_start, a_stop), (b_start, b_stop) or None), main row first, in the
    order HF's tokenizers lists the overflowing encodings."""
    whole_b = None if n2 is None else (0, n2)
    total = n1 + (n2 or 0)
    if truncation == "do_not_truncate" or target is None or total <= target:
        return [((0, n1), whole_b)]
    to_remove = total - target
    if n2 is None:
        if truncation == "only_second":
            raise ValueError("truncation='only_second' needs a text pair")
        size = n1 - to_remove if truncation == "only_first" else target
        return [(w, None) for w in _cut(windows(n1, size, stride, left), overflow)]
    if truncation == "longest_first":
        s1, s2 = (n1, n2) if n1 <= n2 else (n2, n1)
        s2 = s1 if s1 > target else max(s1, target - s1)
        if s1 + s2 > target:
            s1 = target // 2
            s2 = s1 + target % 2
        if n1 > n2:
            s1, s2 = s2, s1
        if not overflow:
            return [(windows(n1, min(n1, s1), stride, left)[0], windows(n2, min(n2, s2), stride, left)[0])]
        # both texts are windowed; HF's Encoding.merge_with lists a0+b0, then for each later window ai of
        # the first: ai+b0, ai+b1, ai+b2...; then a0+b1, a0+b2...
        wa, wb = windows(n1, min(n1, s1), stride, left), windows(n2, min(n2, s2), stride, left)
        rows = [(wa[0], wb[0])]
        for ai in wa[1:]:
            rows += [(ai, bj) for bj in wb]
        return rows + [(wa[0], bj) for bj in wb[1:]]
    first = truncation == "only_first"
    have = n1 if first else n2
    if have <= to_remove:  # as HF: the truncated sequence must keep at least one token
        raise ValueError(f"the sequence to truncate is too short to fit max_length ({target} tokens besides "
                         "special tokens); use truncation='longest_first' or a larger max_length")
    parts = _cut(windows(have, have - to_remove, stride, left), overflow)
    return [(w, whole_b) for w in parts] if first else [((0, n1), w) for w in parts]


def _cut(parts, overflow):
    """All the windows, or only the kept part (HF still checks the stride against the window size then)."""
    return parts if overflow else parts[:1]


def assemble(a: Side, b: Optional[Side], args, *, cls_id: int, sep_id: int, pad_id: Optional[int],
             left_truncation: bool = False):
    """Rows of the examples (a[i], b[i] or none) as the call's resolved arguments (``args``: a CallArgs) say:
    (encode_batch-like dict, Rows alignment, sample mapping)."""
    pair = b is not None
    sp = args.add_special_tokens
    specials = (3 if pair else 2) if sp else 0
    truncation, max_length, stride = args.truncation, args.max_length, args.stride
    overflow = args.return_overflowing_tokens
    target = None
    if truncation != "do_not_truncate" and max_length is not None:
        target = max_length - specials
        if target < 0:
            raise ValueError(f"max_length={max_length} is smaller than the {specials} special tokens added to each "
                             "sequence")
    a_lo, a_hi, b_lo, b_hi, mapping, grid = [], [], [], [], [], []
    a_start, a_count = a.start.tolist(), a.count.tolist()
    b_start, b_count = (b.start.tolist(), b.count.tolist()) if pair else (None, None)
    for k in range(len(a_count)):
        n2 = b_count[k] if pair else None
        nth_a, nth_b = {}, {}  # window -> its index, by first appearance (the row order is HF's)
        for (x0, x1), wb in plan(a_count[k], n2, target, truncation, stride, overflow, left_truncation):
            a_lo.append(a_start[k] + x0)
            a_hi.append(a_start[k] + x1)
            if pair:
                b_lo.append(b_start[k] + wb[0])
                b_hi.append(b_start[k] + wb[1])
            mapping.append(k)
            grid.append((nth_a.setdefault((x0, x1), len(nth_a)), nth_b.setdefault(wb, len(nth_b))))
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    a_lo, a_hi = i64(a_lo), i64(a_hi)
    la = a_hi - a_lo
    lb = (i64(b_hi) - i64(b_lo)) if pair else np.zeros_like(la)
    lengths = la + lb + specials
    rows = len(lengths)
    row_start = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if rows else i64([])
    total = int(lengths.sum())
    ids = np.empty(total, dtype=np.int64)
    types = np.zeros(total, dtype=np.int64)
    special = np.zeros(total, dtype=np.int64)
    offs = np.zeros((total, 2), dtype=np.int64)
    seq = np.full(total, -1, dtype=np.int64)
    word = np.full(total, -1, dtype=np.int64)
    a_dst = row_start + (1 if sp else 0)
    if sp:
        ids[row_start], special[row_start] = cls_id, 1
        sep1 = a_dst + la
        ids[sep1], special[sep1] = sep_id, 1
    src, dst = _ranges(a_lo, la), _ranges(a_dst, la)
    ids[dst], offs[dst], seq[dst], word[dst] = a.ids[src], a.offsets[src], 0, a.words[src]
    if pair:
        b_dst = a_dst + la + (1 if sp else 0)
        src, dst = _ranges(i64(b_lo), lb), _ranges(b_dst, lb)
        ids[dst], offs[dst], seq[dst], word[dst], types[dst] = b.ids[src], b.offsets[src], 1, b.words[src], 1
        if sp:
            sep2 = b_dst + lb
            ids[sep2], special[sep2], types[sep2] = sep_id, 1, 1
    padded = args.padding != "do_not_pad"
    width = int(lengths.max()) if rows else 0
    if args.padding == "max_length" and max_length is not None:
        width = max(width, max_length)
    if padded:
        width = round_up(width, args.pad_to_multiple_of)
    out = {"lengths": lengths, "padded": padded}
    flat = {"input_ids": ids, "token_type_ids": types, "special_tokens_mask": special, "offset_mapping": offs,
            "attention_mask": np.ones(total, dtype=np.int64)}
    if padded:
        row_of = np.repeat(np.arange(rows), lengths)
        col = np.arange(total) - np.repeat(row_start, lengths)
        fills = pad_values(pad_id)
        for name, v in flat.items():
            m = np.full((rows, width) + v.shape[1:], fills[name], dtype=np.int64)
            m[row_of, col] = v
            out[name] = m
    else:
        out.update(flat)
    rows_out = Rows(seq, word, offs, row_start, lengths, width if padded else None, args.left)
    rows_out.grid = grid
    return out, rows_out, mapping


class Rows:
    """Alignment of assembled rows (sequence ids, word ids, offsets), each row made on first use."""

    def __init__(self, seq, word, offs, row_start, lengths, width, left):
        self.seq, self.word, self.offs = seq, word, offs
        self.row_start, self.lengths, self.width, self.left = row_start.tolist(), lengths.tolist(), width, left
        self.mapping = None
        self.grid = None  # per row: (window of the text, window of the pair), 0 = the kept part

    def __len__(self):
        return len(self.lengths)

    def row(self, i: int):
        if not -len(self.lengths) <= i < len(self.lengths):
            raise IndexError(f"batch index {i} is out of range for {len(self.lengths)} rows")
        a, n = self.row_start[i], self.lengths[i]
        seq = [None if x < 0 else x for x in self.seq[a:a + n].tolist()]
        word = [None if x < 0 else x for x in self.word[a:a + n].tolist()]
        offs = [tuple(o) for o in self.offs[a:a + n].tolist()]
        gap = (self.width - n) if self.width is not None else 0
        if gap:
            pads = ([None] * gap, [None] * gap, [(0, 0)] * gap)
            seq, word, offs = ((p + x) if self.left else (x + p) for p, x in zip(pads, (seq, word, offs)))
        return seq, word, offs
