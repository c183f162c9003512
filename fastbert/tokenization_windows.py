"""Rows built in Python from per-sequence tokens: ``is_split_into_words=True`` (NER) and ``stride`` +
``return_overflowing_tokens`` (QA sliding windows), with HF tokenizers' truncation, window order,
special tokens and padding. The plain calls never come here: the C++ core does those whole.

A sequence is (ids, offsets (n, 2), word ids): from the C++ core without special tokens. ``assemble``
returns the same dict layout as the core's ``encode_batch`` (packed + lengths, or padded rows), the
alignment of every row (sequence ids, word ids, offsets: what BatchEncoding.word_ids() reads) and
``overflow_to_sample_mapping``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

Seq = Tuple[np.ndarray, np.ndarray, List[int]]  # ids (n,), offsets (n, 2), word ids (n)


def word_ids(ids: Sequence[int], starts_word) -> List[int]:
    """Word index of each token of one sequence: a token starts a word unless it is a "##" piece."""
    out, w = [], -1
    for i in ids:
        if starts_word(i) or w < 0:
            w += 1
        out.append(w)
    return out


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


def assemble(examples: List[Tuple[Seq, Optional[Seq]]], *, add_special_tokens: bool, truncation: str,
             max_length: Optional[int], stride: int, overflow: bool, padding: str, pad_to_multiple_of: int,
             cls_id: int, sep_id: int, pad_id: Optional[int], left: bool = False,
             left_truncation: bool = False):
    """Rows of (first, pair or None) sequences: (encode_batch-like dict, alignment rows, sample mapping)."""
    pair = any(b is not None for _, b in examples)
    specials = (3 if pair else 2) if add_special_tokens else 0
    target = None
    if truncation != "do_not_truncate" and max_length is not None:
        target = max_length - specials
        if target < 0:
            raise ValueError(f"max_length={max_length} is smaller than the {specials} special tokens added to each "
                             "sequence")
    rows, mapping = [], []  # rows: (ids, type ids, special mask, offsets, seq ids, word ids)
    for k, (a, b) in enumerate(examples):
        for (a0, a1), wb in plan(len(a[0]), None if b is None else len(b[0]), target, truncation, stride, overflow,
                                 left_truncation):
            ids, types, special, offs, seqs, words = [], [], [], [], [], []

            def put(tok_id, seq, word=None, off=(0, 0), t=0):
                ids.append(tok_id)
                types.append(t)
                special.append(1 if seq is None else 0)
                offs.append(off)
                seqs.append(seq)
                words.append(word)

            if add_special_tokens:
                put(cls_id, None)
            for i in range(a0, a1):
                put(int(a[0][i]), 0, a[2][i], (int(a[1][i][0]), int(a[1][i][1])))
            if add_special_tokens:
                put(sep_id, None)
            if b is not None:
                for i in range(wb[0], wb[1]):
                    put(int(b[0][i]), 1, b[2][i], (int(b[1][i][0]), int(b[1][i][1])), 1)
                if add_special_tokens:
                    put(sep_id, None, t=1)
            rows.append((ids, types, special, offs, seqs, words))
            mapping.append(k)
    lengths = np.array([len(r[0]) for r in rows], dtype=np.int64)
    longest = int(lengths.max()) if len(rows) else 0
    padded = padding != "do_not_pad"
    width = longest
    if padding == "max_length" and max_length is not None:
        width = max(longest, max_length)
    if padded and pad_to_multiple_of and width % pad_to_multiple_of:
        width += pad_to_multiple_of - width % pad_to_multiple_of
    names = ("input_ids", "token_type_ids", "special_tokens_mask", "offset_mapping")
    fills = (pad_id, 0, 1, (0, 0))
    out = {}
    for j, (name, fill) in enumerate(zip(names, fills)):
        if padded:
            data = [r[j] + [fill] * (width - len(r[j])) for r in rows]
        else:
            data = [x for r in rows for x in r[j]]
        out[name] = np.array(data, dtype=np.int64).reshape(
            ((len(rows), width) if padded else (-1,)) + ((2,) if name == "offset_mapping" else ()))
    mask = [[1] * len(r[0]) + [0] * ((width if padded else len(r[0])) - len(r[0])) for r in rows]
    out["attention_mask"] = (np.array(mask, dtype=np.int64).reshape(len(rows), width) if padded
                             else np.array([x for m in mask for x in m], dtype=np.int64))
    out["lengths"], out["padded"] = lengths, padded
    align = []
    for r in rows:
        gap = (width - len(r[0])) if padded else 0
        pad = ([None] * gap, [None] * gap, [(0, 0)] * gap)
        mine = (r[4], r[5], [tuple(o) for o in r[3]])
        align.append(tuple(p + m if left else m + p for p, m in zip(pad, mine)))
    return out, align, mapping
