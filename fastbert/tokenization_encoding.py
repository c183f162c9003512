"""``BatchEncoding.encodings``: one :class:`Encoding` per row, with the attributes and methods of Hugging Face
``tokenizers.Encoding`` (what a fast tokenizer's ``BatchEncoding.encodings`` holds) and the same values.

fastbert's own class, not ``tokenizers.Encoding``: that one cannot be built from given ids, offsets and word
ids (its Python constructor makes an empty encoding and it has no setters), and fastbert does not need the
``tokenizers`` package. Its behaviour is the Rust one, method by method (``tokenizers/src/tokenizer/encoding.rs``),
including the sequence ranges that ``sequence_ids``, ``char_to_token`` and ``word_to_tokens`` read, ``pad``,
``truncate``, ``set_sequence_id`` and ``Encoding.merge``.

The encodings are built on first access to ``.encodings`` (nothing is spent when nobody reads them): the
tokenizer runs again on the same texts with every output on and the overflowing windows kept, since each
encoding lists its windows in ``overflowing`` whether or not the call asked for them, as Hugging Face's do.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple


class Encoding:
    """The output of tokenizing one row, as Hugging Face ``tokenizers.Encoding``."""

    __slots__ = ("ids", "type_ids", "tokens", "offsets", "attention_mask", "special_tokens_mask", "word_ids",
                 "overflowing", "_ranges")

    def __init__(self, ids=(), type_ids=(), tokens=(), offsets=(), attention_mask=(), special_tokens_mask=(),
                 word_ids=(), overflowing=(), sequence_ranges: Optional[Dict[int, Tuple[int, int]]] = None):
        self.ids: List[int] = list(ids)
        self.type_ids: List[int] = list(type_ids)
        self.tokens: List[str] = list(tokens)
        self.offsets: List[Tuple[int, int]] = [tuple(o) for o in offsets]
        self.attention_mask: List[int] = list(attention_mask)
        self.special_tokens_mask: List[int] = list(special_tokens_mask)
        self.word_ids: List[Optional[int]] = list(word_ids)
        self.overflowing: List["Encoding"] = list(overflowing)
        self._ranges: Dict[int, Tuple[int, int]] = dict(sequence_ranges or {})  # sequence id -> [start, end)

    # ---- what tokenizers.Encoding shows ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"Encoding(num_tokens={len(self)}, attributes=[ids, type_ids, tokens, offsets, attention_mask, "
                "special_tokens_mask, overflowing])")

    def __eq__(self, other):
        return isinstance(other, Encoding) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)

    @property
    def words(self) -> List[Optional[int]]:
        """Deprecated in tokenizers in favour of ``word_ids``; the same list."""
        warnings.warn("Deprecated in 0.9.4: Encoding.words is deprecated, please use Encoding.word_ids instead.",
                      DeprecationWarning, stacklevel=2)
        return self.word_ids

    @property
    def n_sequences(self) -> int:
        return len(self._ranges) if self._ranges else 1

    @property
    def sequence_ids(self) -> List[Optional[int]]:
        out: List[Optional[int]] = [None] * len(self)
        for s in range(self.n_sequences):
            start, end = self._range(s)
            out[start:end] = [s] * (end - start)
        return out

    def _range(self, sequence_index: int) -> Tuple[int, int]:
        return self._ranges.get(sequence_index, (0, len(self)))

    # ---- alignment ------------------------------------------------------------------------------------
    def token_to_sequence(self, token_index: int) -> Optional[int]:
        token_index = _unsigned(token_index)
        if token_index > len(self):
            return None
        if not self._ranges:
            return 0
        return next((s for s, (a, b) in self._ranges.items() if a <= token_index < b), None)

    def token_to_word(self, token_index: int) -> Optional[int]:
        if self.token_to_sequence(token_index) is None or token_index >= len(self):
            return None
        return self.word_ids[token_index]

    def token_to_chars(self, token_index: int) -> Optional[Tuple[int, int]]:
        if self.token_to_sequence(token_index) is None or token_index >= len(self):
            return None
        return self.offsets[token_index]

    def char_to_token(self, char_pos: int, sequence_index: int = 0) -> Optional[int]:
        char_pos, sequence_index = _unsigned(char_pos), _unsigned(sequence_index)
        start, end = self._range(sequence_index)
        for i in range(start, min(end, len(self))):
            a, b = self.offsets[i]
            if a <= char_pos < b:
                return i
        return None

    def char_to_word(self, char_pos: int, sequence_index: int = 0) -> Optional[int]:
        token = self.char_to_token(char_pos, sequence_index)
        return None if token is None else self.token_to_word(token)

    def word_to_tokens(self, word_index: int, sequence_index: int = 0) -> Optional[Tuple[int, int]]:
        word_index, sequence_index = _unsigned(word_index), _unsigned(sequence_index)
        start, end = self._range(sequence_index)
        first = last = None
        for i in range(start, min(end, len(self))):  # the Rust take_while: None sorts before any word
            w = self.word_ids[i]
            if w is not None and w > word_index:
                break
            if w == word_index:
                first = i if first is None else first
                last = i + 1
        return None if first is None else (first, last)

    def word_to_chars(self, word_index: int, sequence_index: int = 0) -> Optional[Tuple[int, int]]:
        span = self.word_to_tokens(word_index, sequence_index)
        if span is None or span[1] == 0:
            return None
        return self.offsets[span[0]][0], self.offsets[span[1] - 1][1]

    # ---- changes (tokenizers' in-place methods) -------------------------------------------------------
    def set_sequence_id(self, sequence_id: int):
        self._ranges[_unsigned(sequence_id)] = (0, len(self))

    def pad(self, length: int, direction: str = "right", pad_id: int = 0, pad_type_id: int = 0,
            pad_token: str = "[PAD]"):
        """Pad to ``length`` tokens (the overflowing encodings too), as tokenizers does."""
        if direction not in ("left", "right"):
            raise ValueError(f"Invalid padding direction: {direction!r} (use 'left' or 'right')")
        for o in self.overflowing:
            o.pad(length, direction, pad_id, pad_type_id, pad_token)
        n = _unsigned(length) - len(self)
        if n <= 0:
            return
        pads = {"ids": [pad_id] * n, "type_ids": [pad_type_id] * n, "tokens": [pad_token] * n,
                "word_ids": [None] * n, "attention_mask": [0] * n, "special_tokens_mask": [1] * n,
                "offsets": [(0, 0)] * n}
        for name, fill in pads.items():
            setattr(self, name, fill + getattr(self, name) if direction == "left" else getattr(self, name) + fill)
        if direction == "left":
            self._ranges = {s: (a + n, b + n) for s, (a, b) in self._ranges.items()}

    def truncate(self, max_length: int, stride: int = 0, direction: str = "right"):
        """Keep ``max_length`` tokens; the rest becomes ``overflowing`` windows overlapping by ``stride``
        (the previous overflowing and the sequence ranges are dropped, as tokenizers does)."""
        if direction not in ("left", "right"):
            raise ValueError(f"Invalid truncation direction: {direction!r} (use 'left' or 'right')")
        max_length, stride, n = _unsigned(max_length), _unsigned(stride), len(self)
        if max_length >= n:
            return
        if max_length == 0:
            whole = self._copy()
            self._assign(Encoding(overflowing=[whole]))
            return
        if stride >= max_length:
            raise ValueError(f"`stride` must be strictly less than `max_len={max_length}` (note that `max_len` may "
                             "be shorter than the max length of the original model, as it subtracts the number of "
                             "special characters")
        step, parts = max_length - stride, []
        if direction == "right":
            for start in range(0, n, step):
                stop = min(start + max_length, n)
                parts.append((start, stop))
                if stop == n:
                    break
        else:
            for last in range(n - 1, -1, -step):
                stop = last + 1
                start = max(0, stop - max_length)
                parts.append((start, stop))
                if start == 0:
                    break
        pieces = [self._slice(a, b) for a, b in parts]
        pieces[0].overflowing = pieces[1:]
        self._assign(pieces[0])

    @staticmethod
    def merge(encodings: Sequence["Encoding"], growing_offsets: bool = True) -> "Encoding":
        """One encoding from several, as ``tokenizers.Encoding.merge``."""
        out = Encoding()
        for e in encodings:
            out._merge_with(e._copy(), growing_offsets)
        return out

    # ---- helpers --------------------------------------------------------------------------------------
    _LISTS = ("ids", "type_ids", "tokens", "offsets", "attention_mask", "special_tokens_mask", "word_ids")

    def _copy(self) -> "Encoding":
        return Encoding(*(getattr(self, k) for k in self._LISTS), overflowing=[o._copy() for o in self.overflowing],
                        sequence_ranges=self._ranges)

    def _assign(self, other: "Encoding"):
        for k in self.__slots__:
            setattr(self, k, getattr(other, k))

    def _slice(self, a: int, b: int) -> "Encoding":
        return Encoding(*(getattr(self, k)[a:b] for k in self._LISTS))

    def _merge_with(self, pair: "Encoding", growing_offsets: bool):
        overflowing = []
        for mine in self.overflowing:
            e = mine._copy()
            e._merge_with(pair._copy(), growing_offsets)
            overflowing.append(e)
            for theirs in pair.overflowing:
                e = mine._copy()
                e._merge_with(theirs._copy(), growing_offsets)
                overflowing.append(e)
        for theirs in pair.overflowing:
            e = self._copy()
            e._merge_with(theirs._copy(), growing_offsets)
            overflowing.append(e)
        n = len(self)
        self._ranges.update({s: (a + n, b + n) for s, (a, b) in pair._ranges.items()})
        shift = self.offsets[-1][1] if growing_offsets and self.offsets else 0
        for k in self._LISTS:
            extra = getattr(pair, k)
            if k == "offsets":
                extra = [(a + shift, b + shift) for a, b in extra]
            setattr(self, k, getattr(self, k) + list(extra))
        self.overflowing = overflowing


def _unsigned(i) -> int:
    """tokenizers takes usize arguments: a negative one raises as PyO3 does."""
    i = int(i)
    if i < 0:
        raise OverflowError("can't convert negative int to unsigned")
    return i


def _ranges(seq: Sequence[Optional[int]], n_sequences: int) -> Dict[int, Tuple[int, int]]:
    """Each sequence's [start, end) token range (tokens of one sequence are contiguous); an empty one for a
    sequence with no token, as Hugging Face's post-processor leaves it."""
    out = {}
    for s in range(n_sequences):
        hits = [i for i, x in enumerate(seq) if x == s]
        out[s] = (hits[0], hits[-1] + 1) if hits else (0, 0)
    return out


def build_encodings(tok, texts, pairs, args) -> List[Encoding]:
    """The encodings of the rows a tokenizer call returned (``args``: its CallArgs): its texts run again with
    every output on and the overflowing windows kept (those of a row become its ``overflowing``, nested as
    tokenizers' merge nests the windows of a pair; listed as rows only when the call asked for them)."""
    full = tok._encode(texts, pairs, True, replace(
        args, return_tensors=None, return_token_type_ids=True, return_attention_mask=True,
        return_overflowing_tokens=True, return_special_tokens_mask=True, return_offsets_mapping=True,
        return_length=False, device=None))
    origin, n_seq = full._origin, 1 if pairs is None else 2
    rows = []
    for i, ids in enumerate(full["input_ids"]):
        seq, word_ids, _ = origin.row(i)
        rows.append(Encoding(ids, full["token_type_ids"][i], tok.convert_ids_to_tokens(ids), full["offset_mapping"][i],
                             full["attention_mask"][i], full["special_tokens_mask"][i], word_ids,
                             sequence_ranges=_ranges(seq, n_seq)))
    # each example's rows: main first, then its windows in tokenizers' order; (i, j) = windows of text and pair
    by_example: Dict[int, List[int]] = {}
    for r, k in enumerate(full["overflow_to_sample_mapping"]):
        by_example.setdefault(k, []).append(r)
    grid = origin.grid
    for members in by_example.values():
        cell = {grid[r]: rows[r] for r in members}
        for r in members:  # tokenizers' Encoding.merge_with: who lists whom as overflowing
            i, j = grid[r]
            if (i, j) == (0, 0):
                rows[r].overflowing = [rows[m] for m in members[1:]]
            elif j == 0:
                rows[r].overflowing = [e for (a, b), e in cell.items() if a == i and b > 0]
            elif i == 0:
                rows[r].overflowing = [e for (a, b), e in cell.items() if b == j and a > 0]
    if args.return_overflowing_tokens:
        return [_deep(e) for e in rows]
    return [_deep(rows[members[0]]) for members in by_example.values()]


def _deep(e: Encoding) -> Encoding:
    """A row's encoding with its own copies of the overflowing ones (tokenizers hands out copies too)."""
    return e._copy()
