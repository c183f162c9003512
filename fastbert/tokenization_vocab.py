"""The vocabulary side of fastbert.BertTokenizer (Hugging Face's ``SpecialTokensMixin`` and vocabulary views):
token <-> id, the special tokens and their ids, the special-token layout HF's helpers build
(``build_inputs_with_special_tokens``...), and decoding. A mixin of BertTokenizer, next to the added tokens
(tokenization_added); the files are read and written by tokenization_files."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .tokenization_files import SPECIAL_ATTRS


def _clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: English spacing artefacts of token-by-token decoding."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class VocabularyMixin:
    """State (set by BertTokenizer.__init__): ``_tokens`` (the vocabulary, by id), the special tokens
    (``unk_token``...), ``_matched`` (those and never_split, matched verbatim), ``_tok`` (the C++ core: ids of
    matched tokens), the added tokens (tokenization_added) and the caches ``_vocab`` / ``_starts_cache``."""

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        """Size of the vocabulary with the added tokens (HF: len(get_vocab()))."""
        if not self._added_map:
            return len(self._tokens)
        if self._vocab is None:
            self.get_vocab()
        return len(self._vocab)

    def get_vocab(self) -> Dict[str, int]:
        if self._vocab is None:
            self._vocab = {t: i for i, t in enumerate(self._tokens)}
            self._vocab.update(self._added_map)
        return dict(self._vocab)

    def _id(self, token: Optional[str]) -> Optional[int]:
        if token is None:
            return None
        i = self._added_map.get(token)
        if i is not None:
            return i
        i = self._tok.token_to_id(token)
        return i if i >= 0 else None

    unk_token_id = property(lambda self: self._id(self.unk_token))
    sep_token_id = property(lambda self: self._id(self.sep_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))
    cls_token_id = property(lambda self: self._id(self.cls_token))
    mask_token_id = property(lambda self: self._id(self.mask_token))
    pad_token_type_id = 0

    @property
    def all_special_tokens(self) -> List[str]:
        named = [t for t in (self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token) if t]
        return named + [t for t in self._extra_special if t not in named]

    @property
    def all_special_ids(self) -> List[int]:
        return [i for i in (self._id(t) for t in self.all_special_tokens) if i is not None]

    @property
    def special_tokens_map(self) -> Dict[str, str]:
        return {a: getattr(self, a) for a in SPECIAL_ATTRS if getattr(self, a)}

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        unk = self.unk_token_id
        if isinstance(tokens, str):
            i = self._id(tokens)
            return i if i is not None else unk
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(int(ids))
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special]

    def _id_to_token(self, i: int) -> str:
        if i in self._added_display:  # HF: a normalized added token reads as its normalized content
            return self._added_display[i]
        if not 0 <= i < len(self._tokens):
            raise IndexError(f"token id {i} is out of range for a vocabulary of {len(self._tokens)} tokens")
        return self._tokens[i]

    def build_inputs_with_special_tokens(self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None):
        """[CLS] A [SEP] (B [SEP])."""
        out = [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        return out if token_ids_1 is None else out + list(token_ids_1) + [self.sep_token_id]

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None) -> List[int]:
        n0 = len(token_ids_0) + 2
        return [0] * n0 if token_ids_1 is None else [0] * n0 + [1] * (len(token_ids_1) + 1)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        """1 where build_inputs_with_special_tokens puts a special token (or, already_has_special_tokens,
        where an id is one of all_special_ids)."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("with already_has_special_tokens=True pass one sequence (token_ids_1=None)")
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        out = [1] + [0] * len(token_ids_0) + [1]
        return out if token_ids_1 is None else out + [0] * len(token_ids_1) + [1]

    def _word_starts(self) -> np.ndarray:
        """Per token id: whether it starts a word (anything but a "##" piece of the vocabulary; added and
        special tokens do). Cached until the vocabulary changes."""
        if getattr(self, "_starts_cache", None) is None:
            starts = np.ones(self._id_space(), dtype=bool)
            matched = set(self._matched)
            for i, t in enumerate(self._tokens):
                if t.startswith("##") and t not in matched:
                    starts[i] = False
            starts[list(self._added_by_id)] = True
            self._starts_cache = starts
        return self._starts_cache

    def _id_space(self) -> int:
        return max(len(self._tokens), max(self._added_by_id, default=-1) + 1)

    # ---- decoding ----------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens).replace(" ##", "").strip()

    def decode(self, token_ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: Optional[bool] = None) -> str:
        """Text of a list of ids, as HF's WordPiece decoder writes it (## joined, spaces before punctuation
        removed), then, when ``clean_up_tokenization_spaces`` (default: the tokenizer's own, False unless set),
        HF's English clean-up (``" 's"`` -> ``"'s"``, ``" n't"`` -> ``"n't"``, ...)."""
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = [self._id_to_token(int(i)) for i in token_ids]
        if skip_special_tokens:  # HF's backend: a token whose string is a special token's content
            special = set(self._init_specials) | set(self.all_special_tokens)
            special |= {a["content"] for a in self._added_by_id.values() if a["special"]}
            tokens = [t for t in tokens if t not in special]
        parts = []
        for i, tok in enumerate(tokens):
            if i and tok.startswith("##"):
                tok = tok[2:]
            elif i:
                tok = " " + tok
            parts.append(_cleanup(tok))
        text = "".join(parts)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> List[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]


def _cleanup(s: str) -> str:
    """HF tokenizers' WordPiece decoder clean-up, applied to each token as it does."""
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" do not", " don't").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))
