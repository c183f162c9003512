"""The C++ core behind fastbert.BertTokenizer: a thin wrapper over ``fastbert._C.Tokenizer`` (sources in csrc/).

:class:`Core` is built from a vocabulary and its matching options and runs a batch with the call's resolved
arguments (:class:`fastbert.tokenization_call.CallArgs`); the rest it is asked for (``token_to_id``,
``normalize``, ``split_words``, ``trie_arrays``, ``unk_id``...) is the native tokenizer's own.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# the C++ core's enums (csrc/tokenizer.h: Truncation, Padding)
TRUNCATION = {"do_not_truncate": 0, "longest_first": 1, "only_first": 2, "only_second": 3}
PADDING = {"do_not_pad": 0, "longest": 1, "max_length": 2}


def native():
    """The compiled module ``fastbert._C`` (a clear ImportError when it is not built)."""
    try:
        from . import _C
    except ImportError as e:  # pragma: no cover - a broken install
        raise ImportError(
            "fastbert's C++ tokenizer (fastbert._C) is not built: reinstall with "
            "`pip install --no-build-isolation --no-deps -e .` (needs a C++17 compiler and pybind11)"
        ) from e
    return _C


def default_threads() -> int:
    """$FASTBERT_NUM_THREADS, else every core the process may use."""
    env = os.environ.get("FASTBERT_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Core:
    """``fastbert._C.Tokenizer`` over ``tokens``: ``matched`` (special tokens and never_split) matched verbatim,
    ``added`` / ``added_plain`` ((content, id, normalized) in HF's order, with / without the special ones),
    ``options`` the normalizer and WordPiece settings. The variant that does not match special tokens
    (``split_special_tokens=True``) is built on first use. A core never changes: a new vocabulary or added
    token makes a new one."""

    def __init__(self, tokens: List[str], matched: List[str], never_split: List[str], added: list,
                 added_plain: list, options: Dict):
        self.native = n = native().Tokenizer(tokens, never_split=matched, added=added, **options)
        # the native tokenizer's own, as fastbert (and its tests) call them: bound once, no lookup per call
        self.token_to_id, self.normalize, self.split_words = n.token_to_id, n.normalize, n.split_words
        self.trie_arrays, self.encode_batch = n.trie_arrays, n.encode_batch
        self.unk_id, self.has_normalized_added = n.unk_id, n.has_normalized_added
        self._tokens, self._never_split, self._added_plain, self._options = tokens, never_split, added_plain, options
        self._plain = None

    def plain(self):
        """The core without special-token matching (split_special_tokens=True)."""
        if self._plain is None:
            self._plain = native().Tokenizer(self._tokens, never_split=list(self._never_split),
                                             added=self._added_plain, **self._options)
        return self._plain

    def encode(self, texts: List[str], pairs: Optional[List[str]], args, *, post_ids: Tuple[Optional[int], ...],
               pad_id: Optional[int], threads: int, truncate_left: bool, offsets: bool = False,
               arrays: Sequence[str] = (), as_lists: bool = False) -> dict:
        """``encode_batch`` with the call's resolved arguments (``args``: a CallArgs): packed arrays and
        ``lengths``, or padded rows, or Python lists (``as_lists``); ``arrays`` names the masks to make."""
        core = self.plain() if args.split_special_tokens else self.native
        special = args.add_special_tokens
        return core.encode_batch(
            texts, pairs, add_special_tokens=special, max_length=-1 if args.max_length is None else args.max_length,
            truncation=TRUNCATION[args.truncation], padding=PADDING[args.padding],
            pad_to_multiple_of=args.pad_to_multiple_of, offsets=offsets, num_threads=threads,
            cls_id=post_ids[0] if special else -1, sep_id=post_ids[1] if special else -1,
            pad_id=-1 if pad_id is None else pad_id, type_ids="token_type_ids" in arrays,
            attention_mask="attention_mask" in arrays, special_tokens_mask="special_tokens_mask" in arrays,
            as_lists=as_lists, truncate_left=truncate_left)


def to_lists(a, lengths, pairs: bool) -> list:
    """Rows of an array as Python lists of int, made in C++ (no numpy ``.tolist()`` / ``np.split`` per row):
    ``lengths`` cuts a packed array into rows (None: the rows of a 2-D one); ``pairs``: offsets, as tuples."""
    return native().to_lists(np.ascontiguousarray(a, dtype=np.int64), lengths, pairs)
