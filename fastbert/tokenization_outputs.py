"""What fastbert.BertTokenizer returns: BatchEncoding (a dict with HF's alignment methods: word_ids,
sequence_ids, char_to_token...) and the alignment rows behind those methods, computed on first use."""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np


class CharSpan(NamedTuple):
    """A span of characters in the original text (transformers' ``CharSpan``)."""
    start: int
    end: int


class TokenSpan(NamedTuple):
    """A span of tokens in an encoded row (transformers' ``TokenSpan``)."""
    start: int
    end: int


class BatchEncoding(dict):
    """A dict of model inputs with attribute access and ``.to(device)``, like HF's BatchEncoding; ``enc[i]``
    (an int or a slice) is the encoding of row ``i``, as in HF."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, item):
        if isinstance(item, str):
            return dict.__getitem__(self, item)
        encodings = self.encodings
        if encodings is not None:
            return encodings[item]
        if isinstance(item, slice):
            return {k: v[item] for k, v in self.items()}
        raise KeyError("Invalid key. Only three types of key are available: (1) string, (2) integers for backend "
                       "Encoding, and (3) slices for data subsetting.")

    # ---- HF fast tokenizers' Encoding objects -------------------------------------------------------
    # (tokenizer, texts, pairs, the call's CallArgs): set by BertTokenizer.__call__
    _encodings_source = None
    _encodings = None

    @property
    def encodings(self):
        """One ``fastbert.tokenization_encoding.Encoding`` per row (the attributes and methods of
        ``tokenizers.Encoding``, with its values), built on first access; None for a ``pad()`` result, as HF."""
        if self._encodings is None and self._encodings_source is not None:
            from .tokenization_encoding import build_encodings

            self._encodings = build_encodings(*self._encodings_source)
        return self._encodings

    def to(self, device):
        for k, v in self.items():
            if hasattr(v, "to"):
                self[k] = v.to(device)
        return self

    @property
    def data(self):
        return dict(self)

    # ---- alignment (HF's fast-tokenizer BatchEncoding methods) --------------------------------------
    # Computed on first use by re-running the C++ core on the same texts with offsets (the hot path
    # pays nothing): _origin is set by BertTokenizer.__call__.
    _origin = None
    is_fast = True

    def _row(self, i: int):
        if self._origin is None:
            raise ValueError("this BatchEncoding was not made by fastbert.BertTokenizer.__call__ on texts "
                             "(pad() output has no alignment): word_ids / char_to_token are not available")
        return self._origin.row(i)

    @staticmethod
    def _split(batch_or_index, index):
        return (0, batch_or_index) if index is None else (batch_or_index, index)

    def sequence_ids(self, batch_index: int = 0) -> List[Optional[int]]:
        return list(self._row(batch_index)[0])

    def word_ids(self, batch_index: int = 0) -> List[Optional[int]]:
        return list(self._row(batch_index)[1])

    words = word_ids

    def token_to_sequence(self, batch_or_token_index: int, token_index: Optional[int] = None):
        b, t = self._split(batch_or_token_index, token_index)
        return self._row(b)[0][t]

    def token_to_word(self, batch_or_token_index: int, token_index: Optional[int] = None):
        b, t = self._split(batch_or_token_index, token_index)
        return self._row(b)[1][t]

    def token_to_chars(self, batch_or_token_index: int, token_index: Optional[int] = None):
        """(start, end) code point offsets of a token, None for special tokens and padding."""
        b, t = self._split(batch_or_token_index, token_index)
        seq, _, offs = self._row(b)
        return None if seq[t] is None else CharSpan(*offs[t])

    def char_to_token(self, batch_or_char_index: int, char_index: Optional[int] = None,
                      sequence_index: int = 0) -> Optional[int]:
        """Index of the token holding character `char_index` of sequence `sequence_index`, or None."""
        b, c = self._split(batch_or_char_index, char_index)
        seq, _, offs = self._row(b)
        for t, (s, o) in enumerate(zip(seq, offs)):
            if s == sequence_index and o[0] <= c < o[1]:
                return t
        return None

    def word_to_tokens(self, batch_or_word_index: int, word_index: Optional[int] = None, sequence_index: int = 0):
        """(start, end) token span of a word, or None."""
        b, w = self._split(batch_or_word_index, word_index)
        seq, words, _ = self._row(b)
        hits = [t for t, (s, x) in enumerate(zip(seq, words)) if s == sequence_index and x == w]
        return TokenSpan(hits[0], hits[-1] + 1) if hits else None

    # ---- read from the Encoding objects (built on first use), as HF's BatchEncoding reads them -------
    def _encoding(self, i: int):
        if self.encodings is None:
            raise ValueError("this BatchEncoding was not made by fastbert.BertTokenizer.__call__ on texts (pad() "
                             "output has no encodings)")
        return self.encodings[i]

    @property
    def n_sequences(self) -> Optional[int]:
        """1 (single texts) or 2 (pairs); None when unknown (pad() output), as HF."""
        return None if self._encodings_source is None else 1 if self._encodings_source[2] is None else 2

    def tokens(self, batch_index: int = 0) -> List[str]:
        return self._encoding(batch_index).tokens

    def char_to_word(self, batch_or_char_index: int, char_index: Optional[int] = None, sequence_index: int = 0):
        b, c = self._split(batch_or_char_index, char_index)
        return self._encoding(b).char_to_word(c, sequence_index)

    def word_to_chars(self, batch_or_word_index: int, word_index: Optional[int] = None, sequence_index: int = 0):
        b, w = self._split(batch_or_word_index, word_index)
        span = self._encoding(b).word_to_chars(w, sequence_index)
        return None if span is None else CharSpan(*span)

    def convert_to_tensors(self, tensor_type: Optional[str] = None, prepend_batch_axis: bool = False):
        """Lists to 'pt' tensors or 'np' arrays, in place (None: unchanged), as HF."""
        if tensor_type is None:
            return self
        data = {k: [v] if prepend_batch_axis else v for k, v in self.items()}
        dict.update(self, as_tensors(data, getattr(tensor_type, "value", tensor_type), what="tensor_type"))
        return self


def as_tensors(data: Dict[str, Any], tensor_type: str, device=None, what: str = "return_tensors",
               ragged: str = "pad them (padding=True) to make a tensor") -> Dict[str, Any]:
    """``data``'s values (numpy arrays or rectangular lists) as 'np' arrays or 'pt' tensors (on ``device``):
    where the tokenizer makes every array it returns. Rows of different lengths raise (``ragged``: what to do)."""
    if tensor_type not in ("pt", "np"):
        raise ValueError(f"{what}={tensor_type!r}: use 'pt', 'np' or None")
    out = {}
    for k, v in data.items():
        try:
            a = np.asarray(v)
        except ValueError:
            a = np.empty(0, dtype=object)
        if a.dtype == object:
            raise ValueError(f"{k!r} has rows of different lengths: {ragged}")
        out[k] = a
    if tensor_type == "pt":
        import torch

        out = {k: torch.from_numpy(a) for k, a in out.items()}  # no copy
        if device is not None:
            out = {k: t.to(device) for k, t in out.items()}
    return out


def pad_values(pad_id: Optional[int], pad_type_id: int = 0) -> Dict[str, Any]:
    """What padding puts in each output, as HF: the pad id, type 0, attention 0, special 1, offsets (0, 0)."""
    return {"input_ids": pad_id, "token_type_ids": pad_type_id, "attention_mask": 0, "special_tokens_mask": 1,
            "offset_mapping": 0}


def round_up(width: int, multiple: Optional[int]) -> int:
    """``width`` rounded up to a multiple of ``pad_to_multiple_of`` (0 or None: unchanged)."""
    if multiple and width % multiple:
        width += multiple - width % multiple
    return width


class _Sliced:
    """Alignment rows cut to per-row widths (padding='max_length' rows left longer, as HF)."""

    def __init__(self, origin, widths, left: bool):
        self.origin, self.widths, self.left = origin, [int(w) for w in widths], left
        self.mapping = getattr(origin, "mapping", None)
        self.grid = getattr(origin, "grid", None)

    def row(self, i: int):
        w = self.widths[i]
        return tuple((x[len(x) - w:] if self.left else x[:w]) for x in self.origin.row(i))


class _Alignment:
    """Sequence ids, word ids and offsets of the rows of one __call__ (its resolved CallArgs), computed on
    first use."""

    def __init__(self, tok, texts, pairs, args):
        self.tok, self.texts, self.pairs, self.args = tok, texts, pairs, args
        self.rows = None

    def row(self, i: int):
        if self.rows is None:
            self.rows = self._compute()
        if not -len(self.rows) <= i < len(self.rows):
            raise IndexError(f"batch index {i} is out of range for {len(self.rows)} rows")
        return self.rows[i]

    def _compute(self):
        tok = self.tok
        if tok.truncation_side == "left":  # word ids count the words cut from the front: whole sequences first
            rows = tok._assembled(self.texts, self.pairs, self.args)[1]
            return [rows.row(i) for i in range(len(rows))]
        keys = ("input_ids", "token_type_ids", "special_tokens_mask", "offset_mapping")
        r = tok._run(self.texts, self.pairs, self.args, offsets=True, arrays=keys)
        lengths = r["lengths"]
        if r["padded"] and self.args.left:
            tok._pad_left(r, keys, lengths)
        if r["padded"]:
            rows = [[r[k][i] for k in keys] for i in range(len(lengths))]
        else:
            cut = np.cumsum(lengths)[:-1]
            rows = list(zip(*(np.split(r[k], cut) for k in keys))) if len(lengths) else []
        matched = ({tok._tok.token_to_id(t) for t in tok._matched} - {-1}) | set(tok._added_by_id)
        tokens = tok._tokens
        out = []
        for ids, types, special, offs in rows:
            seq = [None if m else int(t) for t, m in zip(types.tolist(), special.tolist())]
            words, w, last = [], -1, None
            for s, i in zip(seq, ids.tolist()):
                if s is None:
                    words.append(None)
                    continue
                if s != last:
                    w, last = -1, s
                if i in matched or i >= len(tokens) or not tokens[i].startswith("##") or w < 0:
                    w += 1  # a continuation piece ("##...") stays in its word; anything else starts one
                words.append(w)
            out.append((seq, words, [tuple(o) for o in offs.tolist()]))
        return out
