"""fastbert.BertTokenizer: a drop-in for Hugging Face's BERT WordPiece tokenizer, run by a C++ core.

The C++ core (``fastbert._C``, sources in csrc/) does everything per text: special-token matching, BERT
normalization, pre-tokenization, LinMaxMatch WordPiece, truncation, special tokens, padding and offsets,
for a whole batch across threads with the GIL released. This module only parses arguments, reads
vocab.txt / tokenizer_config.json and wraps the numpy arrays it gets back.

Output is identical to Hugging Face `tokenizers` (``transformers.BertTokenizer`` in transformers >= 5,
``BertTokenizerFast`` before): ids, token type ids, attention mask, special tokens mask and offsets
(code point offsets into the input str). Where HF's Rust and legacy Python tokenizers disagree, fastbert
follows the Rust one; docs/tokenizer.md lists the differences and the few places fastbert raises a clear
error where HF returns something surprising (max_length smaller than the special tokens, ragged tensors).

Packed output for the variable-length kernels: :meth:`BertTokenizer.encode_packed`. The rest of the API
lives next door: tokenization_vocab (token <-> id, special tokens, decode), tokenization_outputs
(BatchEncoding), tokenization_added (add_tokens), tokenization_windows (is_split_into_words, overflowing
windows), tokenization_files (vocab.txt, tokenizer.json, from_pretrained / save_pretrained's files),
tokenization_cuda (encode_packed on a GPU).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Union

import numpy as np

from . import tokenization_cuda, tokenization_windows
from ._warnings import warn_once
from .tokenization_added import AddedTokensMixin
from .tokenization_compat import TokenizerCompatMixin
from .tokenization_cuda import _launch_cuda, cuda_wordpiece_available  # noqa: F401 - public / used by tests
from .tokenization_files import VERY_LARGE_INTEGER, _token_str, load_vocab, read_pretrained, write_pretrained
from .tokenization_outputs import BatchEncoding, _Alignment, _Sliced  # noqa: F401 - BatchEncoding is public
from .tokenization_vocab import VocabularyMixin
_TRUNCATION = {"do_not_truncate": 0, "longest_first": 1, "only_first": 2, "only_second": 3}
_PADDING = {"do_not_pad": 0, "longest": 1, "max_length": 2}
# the keywords __call__ honours (HF's __call__ signature, plus fastbert's device / num_threads)
_CALL_KEYWORDS = frozenset({
    "add_special_tokens", "padding", "truncation", "max_length", "stride", "is_split_into_words",
    "pad_to_multiple_of", "padding_side", "return_tensors", "return_token_type_ids", "return_attention_mask",
    "return_overflowing_tokens", "return_special_tokens_mask", "return_offsets_mapping", "return_length",
    "verbose", "split_special_tokens", "device", "num_threads"})


def _core():
    try:
        from . import _C
    except ImportError as e:  # pragma: no cover - a broken install
        raise ImportError(
            "fastbert's C++ tokenizer (fastbert._C) is not built: reinstall with "
            "`pip install --no-build-isolation --no-deps -e .` (needs a C++17 compiler and pybind11)"
        ) from e
    return _C


def _default_threads() -> int:
    env = os.environ.get("FASTBERT_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# Keywords transformers' tokenizers accept that change nothing for a local WordPiece tokenizer: taken and
# ignored, so code written for AutoTokenizer runs unchanged. Any other unknown keyword raises TypeError.
_NO_EFFECT_KWARGS = frozenset({"use_fast", "trust_remote_code", "_from_auto", "_commit_hash", "name_or_path",
                               "local_files_only", "cache_dir", "tokenizer_class", "auto_map"})


class BertTokenizer(VocabularyMixin, AddedTokensMixin, TokenizerCompatMixin):
    """BERT WordPiece tokenizer with Hugging Face's API and output, computed in C++.

    Args mirror ``transformers.BertTokenizer``: ``do_lower_case``, ``strip_accents`` (None: same as
    do_lower_case), ``tokenize_chinese_chars``, ``never_split`` (extra strings kept whole, matched
    verbatim like special tokens), the special tokens, ``model_max_length``. ``num_threads`` (default: all
    cores the process may use, or $FASTBERT_NUM_THREADS) is used for batches.
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    def __init__(self, vocab_file, do_lower_case: bool = True, do_basic_tokenize: bool = True,
                 never_split: Optional[Iterable[str]] = None, unk_token="[UNK]", sep_token="[SEP]",
                 pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", tokenize_chinese_chars: bool = True,
                 strip_accents: Optional[bool] = None, model_max_length: Optional[int] = None,
                 max_input_chars_per_word: int = 100, clean_text: bool = True,
                 num_threads: Optional[int] = None, split_special_tokens: bool = False,
                 padding_side: str = "right", truncation_side: str = "right",
                 clean_up_tokenization_spaces: bool = False, **kwargs):
        unknown = sorted(k for k in kwargs if k not in _NO_EFFECT_KWARGS)
        if unknown:
            raise TypeError(f"BertTokenizer got unexpected keyword argument(s) {unknown}; it takes the BERT tokenizer "
                            "options of transformers' BertTokenizerFast (do_lower_case, strip_accents, "
                            "tokenize_chinese_chars, never_split, model_max_length, padding_side, truncation_side, "
                            "split_special_tokens, the special tokens, ...)")
        if not do_basic_tokenize:
            raise NotImplementedError("do_basic_tokenize=False is not supported by fastbert.BertTokenizer")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: use 'right' or 'left'")
        if truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side={truncation_side!r}: use 'right' or 'left'")
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)  # decode's default, as in HF
        self.split_special_tokens = bool(split_special_tokens)
        if isinstance(vocab_file, (list, tuple)):  # the tokens themselves (tokenizer.json's vocab)
            self.vocab_file, self._tokens = None, [str(t) for t in vocab_file]
        else:
            self.vocab_file, self._tokens = str(vocab_file), load_vocab(vocab_file)
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.clean_text = bool(clean_text)
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.num_threads = int(num_threads) if num_threads else _default_threads()
        self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token = (
            _token_str(t) for t in (unk_token, sep_token, pad_token, cls_token, mask_token))
        self.never_split = [s for s in (never_split or []) if s]
        specials = [t for t in (self.pad_token, self.unk_token, self.cls_token, self.sep_token, self.mask_token) if t]
        self._matched = list(dict.fromkeys(specials + self.never_split))
        strip = self.do_lower_case if strip_accents is None else bool(strip_accents)
        self._core_args = dict(clean_text=self.clean_text, tokenize_chinese_chars=self.tokenize_chinese_chars,
                               strip_accents=strip, lowercase=self.do_lower_case,
                               max_input_chars_per_word=self.max_input_chars_per_word, unk_token=self.unk_token or "",
                               continuing_subword_prefix="##")
        # added tokens (HF's AddedVocabulary): content -> id, id -> spec, the special ones and the others in
        # the order added (HF's pattern order), and the extra special tokens (additional_special_tokens)
        self._added_map: Dict[str, int] = {}
        self._added_by_id: Dict[int, Dict[str, Any]] = {}
        self._added_special: List[Dict[str, Any]] = []
        self._added_plain: List[Dict[str, Any]] = []
        self._added_display: Dict[int, str] = {}
        self._extra_special: List[str] = []
        try:
            self._build_core()
        except ValueError as e:
            raise ValueError(f"cannot build a tokenizer from {self.vocab_file}: {e}") from None
        # the [CLS] / [SEP] ids put around sequences are fixed here, as in HF's post-processor (setting
        # cls_token later, e.g. by add_special_tokens, does not change them)
        self._post_ids = (self.cls_token_id, self.sep_token_id)
        self._init_specials = [t for t in (self.pad_token, self.unk_token, self.cls_token, self.sep_token,
                                           self.mask_token) if t]

    is_fast = True  # the whole pipeline runs in native code, like HF's fast tokenizers

    def __getstate__(self):  # the C++ core is rebuilt from the vocabulary on unpickling (DataLoader workers)
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_tok", "_tok_plain", "_device_tries", "_starts_cache")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build_core()
        if "_post_ids" not in state:  # pickled by an older fastbert
            self._post_ids = (self.cls_token_id, self.sep_token_id)
            self._init_specials = list(self.all_special_tokens)

    def _build_core(self):
        self._tok = _core().Tokenizer(self._tokens, never_split=self._matched, added=self._added_patterns(),
                                      **self._core_args)
        self._tok_plain = None
        self._vocab = None
        self._starts_cache = None
        self._added_display = {i: (self._tok.normalize(a["content"]) if a["normalized"] else a["content"])
                               for i, a in self._added_by_id.items()}

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], **kwargs) -> "BertTokenizer":
        """Load from a local directory (vocab.txt + optional tokenizer_config.json / special_tokens_map.json,
        or tokenizer.json) or a vocab.txt path. Keyword arguments override the config."""
        vocab, args, added, extra = read_pretrained(path, kwargs)
        tok = cls(vocab, **args)
        tok._load_added(added, extra)
        tok.name_or_path = str(path)
        return tok

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs) -> tuple:
        """Writes vocab.txt, tokenizer_config.json and special_tokens_map.json: the files
        ``transformers.AutoTokenizer`` / ``BertTokenizerFast.from_pretrained`` and fastbert load."""
        if kwargs:
            raise NotImplementedError(f"save_pretrained({sorted(kwargs)}): fastbert saves to a local directory only")
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces, "padding_side": self.padding_side,
                  "truncation_side": self.truncation_side, "split_special_tokens": self.split_special_tokens,
                  "model_max_length": self.model_max_length, **self.special_tokens_map}
        if self.never_split:
            config["never_split"] = self.never_split
        if self._added_map or self._extra_special:  # what transformers writes and reads back
            config["added_tokens_decoder"] = {str(i): a for i, a in self.added_tokens_decoder.items()}
            config["extra_special_tokens"] = list(self._extra_special)
        return write_pretrained(save_directory, self._tokens, config, self.special_tokens_map)

    # ---- encoding ----------------------------------------------------------------------------------

    def _texts(self, texts, what: str) -> List[str]:
        out = []
        for i, t in enumerate(texts):
            if isinstance(t, str):
                out.append(t)
            elif isinstance(t, (bytes, bytearray)):
                try:
                    out.append(bytes(t).decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise ValueError(f"{what}[{i}] is bytes that are not valid UTF-8 ({e}); decode it with the "
                                     "right codec and pass str") from None
            else:
                raise TypeError(f"{what}[{i}] is {type(t).__name__}, not str: every text must be a str")
        return out

    def _as_batch(self, text, what: str):
        if isinstance(text, (str, bytes, bytearray)):
            return self._texts([text], what), False
        if text is None:
            raise TypeError(f"{what} is None: pass a str or a list of str")
        if isinstance(text, (list, tuple)):
            return self._texts(text, what), True
        raise TypeError(f"{what} must be a str or a list/tuple of str, not {type(text).__name__}")

    def _resolve(self, n_texts, pairs, add_special_tokens, padding, truncation, max_length):
        """HF's padding / truncation / max_length arguments as (padding, truncation, max_length or None)."""
        if isinstance(padding, bool):
            padding = "longest" if padding else "do_not_pad"
        padding = getattr(padding, "value", padding)
        if padding not in _PADDING:
            raise ValueError(f"padding={padding!r}: use True/'longest', 'max_length' or False/'do_not_pad'")
        if truncation is None:  # as transformers: max_length alone truncates, but not when padding too
            truncation = "longest_first" if max_length is not None and padding == "do_not_pad" else "do_not_truncate"
        elif isinstance(truncation, bool):
            truncation = "longest_first" if truncation else "do_not_truncate"
        truncation = getattr(truncation, "value", truncation)
        if truncation not in _TRUNCATION:
            raise ValueError(f"truncation={truncation!r}: use True/'longest_first', 'only_first', "
                             "'only_second' or False/'do_not_truncate'")
        if max_length is None and (truncation != "do_not_truncate" or padding == "max_length"):
            max_length = self.model_max_length if self.model_max_length < VERY_LARGE_INTEGER else None
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        if pairs is not None and len(pairs) != n_texts:
            raise ValueError(f"got {n_texts} texts but {len(pairs)} text pairs: they must match one to one")
        if add_special_tokens and None in self._post_ids:
            raise ValueError(f"the vocabulary has no {self.cls_token!r} / {self.sep_token!r} token: "
                             "pass add_special_tokens=False")
        if padding != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(f"the vocabulary has no pad token {self.pad_token!r}: cannot pad")
        return padding, truncation, max_length

    def _run(self, texts: List[str], pairs: Optional[List[str]], *, add_special_tokens=True, padding=False,
             truncation=None, max_length=None, pad_to_multiple_of=None, offsets=False, num_threads=None,
             arrays=("token_type_ids", "attention_mask", "special_tokens_mask"), split_special_tokens=False,
             as_lists=False):
        padding, truncation, max_length = self._resolve(len(texts), pairs, add_special_tokens, padding, truncation,
                                                        max_length)
        threads = num_threads or (self.num_threads if len(texts) > 32 else 1)
        core = self._plain_core() if split_special_tokens else self._tok
        return core.encode_batch(
            texts, pairs, add_special_tokens=add_special_tokens,
            max_length=-1 if max_length is None else int(max_length), truncation=_TRUNCATION[truncation],
            padding=_PADDING[padding], pad_to_multiple_of=int(pad_to_multiple_of or 0), offsets=offsets,
            num_threads=threads, cls_id=self._post_ids[0] if add_special_tokens else -1,
            sep_id=self._post_ids[1] if add_special_tokens else -1,
            pad_id=-1 if self.pad_token_id is None else self.pad_token_id,
            type_ids="token_type_ids" in arrays, attention_mask="attention_mask" in arrays,
            special_tokens_mask="special_tokens_mask" in arrays, as_lists=as_lists,
            truncate_left=self.truncation_side == "left")

    def _plain_core(self):
        """The C++ core without special-token matching, for split_special_tokens=True (built on first use)."""
        if self._tok_plain is None:
            self._tok_plain = _core().Tokenizer(self._tokens, never_split=list(self.never_split),
                                                added=self._added_patterns(special=False), **self._core_args)
        return self._tok_plain

    def _pad_left(self, r, keys, lengths):
        """Moves right-padded rows of r to the right end (HF's padding_side='left')."""
        width = r["input_ids"].shape[1]
        src = np.arange(width)[None, :] - (width - lengths)[:, None]  # (rows, width): source column or < 0
        valid = src >= 0
        src = np.maximum(src, 0)
        fill = {"input_ids": self.pad_token_id, "token_type_ids": self.pad_token_type_id, "attention_mask": 0,
                "special_tokens_mask": 1, "offset_mapping": 0}
        for k in keys:
            a = r[k]
            if a.ndim == 3:
                moved = np.take_along_axis(a, src[:, :, None], axis=1)
                r[k] = np.where(valid[:, :, None], moved, fill[k])
            else:
                r[k] = np.where(valid, np.take_along_axis(a, src, axis=1), fill[k]).astype(a.dtype)

    def __call__(self, text=None, text_pair=None, text_target=None, text_pair_target=None,
                 add_special_tokens: bool = True, padding=False, truncation=None, max_length: Optional[int] = None,
                 stride: int = 0, is_split_into_words: bool = False, pad_to_multiple_of: Optional[int] = None,
                 padding_side: Optional[str] = None, return_tensors: Optional[str] = None,
                 return_token_type_ids: Optional[bool] = None, return_attention_mask: Optional[bool] = None,
                 return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                 return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
                 tokenizer_kwargs: Optional[Dict[str, Any]] = None, **kwargs) -> BatchEncoding:
        """Encode one text (or pair) or a batch, like HF's tokenizer ``__call__``.

        Every keyword HF's ``BertTokenizerFast.__call__`` takes is either honoured with HF's output or
        raises NotImplementedError naming it; an unknown keyword raises TypeError (HF would warn and drop it).
        """
        args = dict(add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, stride=stride, is_split_into_words=is_split_into_words,
                    pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side, return_tensors=return_tensors,
                    return_token_type_ids=return_token_type_ids, return_attention_mask=return_attention_mask,
                    return_overflowing_tokens=return_overflowing_tokens,
                    return_special_tokens_mask=return_special_tokens_mask,
                    return_offsets_mapping=return_offsets_mapping, return_length=return_length, verbose=verbose,
                    split_special_tokens=kwargs.pop("split_special_tokens", self.split_special_tokens))
        max_target_length = kwargs.pop("max_target_length", None)
        if tokenizer_kwargs:  # as HF: tokenizer_kwargs override the keywords above, **kwargs override both
            args.update(tokenizer_kwargs)
        args.update(kwargs)
        unknown = sorted(set(args) - _CALL_KEYWORDS)
        if unknown:
            raise TypeError(f"fastbert.BertTokenizer.__call__ got unexpected keyword argument(s) {unknown}")
        if text is None and text_target is None:
            raise ValueError("You need to specify either `text` or `text_target`.")
        enc = self._encode_call(text, text_pair, **args) if text is not None else None
        if text_target is None:
            return enc
        if max_target_length is not None:
            args["max_length"] = max_target_length
        target = self._encode_call(text_target, text_pair_target, **args)
        if enc is None:
            return target
        enc["labels"] = target["input_ids"]
        return enc

    def _encode_call(self, text, text_pair, *, add_special_tokens, padding, truncation, max_length, stride,
                     is_split_into_words, pad_to_multiple_of, padding_side, return_tensors, return_token_type_ids,
                     return_attention_mask, return_overflowing_tokens, return_special_tokens_mask,
                     return_offsets_mapping, return_length, verbose, split_special_tokens, device=None,
                     num_threads=None) -> BatchEncoding:
        if not isinstance(stride, (int, np.integer)) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        padding_side = self.padding_side if padding_side is None else padding_side
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: use 'right' or 'left'")
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side={self.truncation_side!r}: use 'right' or 'left'")
        keys = ["input_ids"]
        if return_token_type_ids is None or return_token_type_ids:
            keys.append("token_type_ids")
        if return_attention_mask is None or return_attention_mask:
            keys.append("attention_mask")
        if return_special_tokens_mask:
            keys.append("special_tokens_mask")
        if return_offsets_mapping:
            keys.append("offset_mapping")
        run_args = dict(add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                        max_length=max_length, pad_to_multiple_of=pad_to_multiple_of, num_threads=num_threads,
                        split_special_tokens=split_special_tokens)
        if is_split_into_words:
            texts, pairs, batched = self._as_word_batch(text, text_pair)
        else:
            if (text_pair is None and isinstance(text, (list, tuple)) and text
                    and all(isinstance(t, (list, tuple)) and len(t) == 2 for t in text)):
                text, text_pair = [t[0] for t in text], [t[1] for t in text]  # a batch of (text, pair) tuples
            texts, pairs, batched = self._as_text_batch(text, text_pair)
        extra = {}
        strided = False
        if stride:  # HF's checks: stride against max_length - 2 up front, against each window when cutting
            _, trunc, ml = self._resolve(len(texts), pairs, add_special_tokens, padding, truncation, max_length)
            strided = trunc != "do_not_truncate" and ml is not None
            if strided and stride > ml - 2:
                raise ValueError(f"stride={stride} is larger than max_length={ml} minus 2 special tokens: each window "
                                 "must move forward (HF's tokenizers raises the same)")
        if is_split_into_words or return_overflowing_tokens or strided:
            r, origin = self._assembled(texts, pairs, is_split_into_words, stride, return_overflowing_tokens,
                                        padding_side, run_args)
            if return_overflowing_tokens:
                extra["overflow_to_sample_mapping"] = origin.mapping
                batched = True  # as HF: the windows of one text come back as a batch
        else:
            # Python lists straight from C++ unless left padding (moved on the numpy arrays) or tensors
            as_lists = return_tensors is None and padding_side == "right"
            r = self._run(texts, pairs, offsets=return_offsets_mapping, arrays=keys, as_lists=as_lists, **run_args)
            origin = _Alignment(self, texts, pairs, run_args, padding_side)
        widths = self._ragged_widths(r, len(texts), pairs, run_args)
        if widths is not None:  # padding='max_length' without truncation, rows longer than max_length: as HF
            if return_tensors is not None:
                raise ValueError(f"padding='max_length' without truncation leaves rows longer than max_length="
                                 f"{run_args['max_length']}: pass truncation=True to get a tensor")
            r = self._unpad_rows(r, keys, widths, padding_side)
            origin = _Sliced(origin, widths, padding_side == "left")
        out = self._outputs(r, keys, batched, origin, extra, padding_side, return_tensors, return_length, device)
        # .encodings, built on first access (tokenization_encoding), runs the same call again
        out._encodings_source = (self, texts, pairs, is_split_into_words, dict(
            add_special_tokens=add_special_tokens, padding=padding, truncation=truncation, max_length=max_length,
            stride=stride, pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
            return_overflowing_tokens=return_overflowing_tokens, verbose=verbose,
            split_special_tokens=split_special_tokens, num_threads=num_threads))
        return out

    def _ragged_widths(self, r, n_texts, pairs, run_args):
        """Per-row widths when padding='max_length' meets rows longer than max_length (no truncation): HF
        pads each row to max_length and leaves the longer ones as they are."""
        if not r["padded"]:
            return None
        padding, _, max_length = self._resolve(n_texts, pairs, run_args["add_special_tokens"], run_args["padding"],
                                               run_args["truncation"], run_args["max_length"])
        if padding != "max_length" or max_length is None:
            return None
        target, multiple = int(max_length), int(run_args["pad_to_multiple_of"] or 0)
        if multiple and target % multiple:
            target += multiple - target % multiple
        lengths = r["lengths"]
        if not len(lengths) or int(lengths.max()) <= target:
            return None
        return np.maximum(lengths, target)

    def _unpad_rows(self, r, keys, widths, padding_side):
        """The padded rows of r cut to their own widths (Python lists; left padding applied first)."""
        if padding_side == "left" and not r.get("lists"):
            self._pad_left(r, keys, r["lengths"])
        out = dict(r, lists=True, padded=True, ragged=widths)
        for k in keys:
            rows = r[k] if r.get("lists") else _core().to_lists(np.ascontiguousarray(r[k], dtype=np.int64), None,
                                                                 k == "offset_mapping")
            out[k] = [row[len(row) - w:] if padding_side == "left" else row[:w]
                      for row, w in zip(rows, widths.tolist())]
        return out

    def _as_text_batch(self, text, text_pair):
        texts, batched = self._as_batch(text, "text")
        pairs = None
        if not batched and isinstance(text_pair, str) and not text_pair:
            text_pair = None  # as HF: a single empty pair means no pair (in a batch it stays an empty pair)
        if text_pair is not None:
            pairs, pair_batched = self._as_batch(text_pair, "text_pair")
            if pair_batched != batched:
                raise TypeError("text and text_pair must both be a str or both be a list of str")
        return texts, pairs, batched

    def _as_word_batch(self, text, text_pair):
        """is_split_into_words: one list of words, or a batch of them (HF: batched when text[0] is a list)."""
        def examples(x, what):
            if not isinstance(x, (list, tuple)):
                raise TypeError(f"with is_split_into_words=True, {what} must be a list of words (str) or a list "
                                f"of such lists, not {type(x).__name__}")
            batched = bool(x) and isinstance(x[0], (list, tuple))
            items = list(x) if batched else [x]
            for i, words in enumerate(items):
                if not isinstance(words, (list, tuple)):
                    raise TypeError(f"{what}[{i}] is {type(words).__name__}: with is_split_into_words=True each item "
                                    "is a list of words")
                self._texts(words, f"{what}[{i}]" if batched else what)
            return [list(w) for w in items], batched
        texts, batched = examples(text, "text")
        pairs = None
        if text_pair is not None:
            pairs, pair_batched = examples(text_pair, "text_pair")
            if pair_batched != batched or len(pairs) != len(texts):
                raise TypeError("text and text_pair must both be lists of words, or both batches of the same size")
        return texts, pairs, batched

    def _sequences(self, items, words: bool, split_special_tokens: bool, num_threads):
        """The items' tokens without special tokens, flat (tokenization_windows.Side): texts, or lists of words
        (each word tokenized alone, offsets relative to it, its index as word id, as HF's pre-tokenized input)."""
        flat = [w for item in items for w in item] if words else list(items)
        r = self._run(flat, None, add_special_tokens=False, offsets=True, arrays=(), num_threads=num_threads,
                      split_special_tokens=split_special_tokens)
        ids, offs, lengths = r["input_ids"], r["offset_mapping"].reshape(-1, 2), r["lengths"]
        if not words:
            wids = tokenization_windows.word_ids_by_pieces(ids, lengths, self._word_starts())
            count = lengths
        else:
            k = np.array([len(item) for item in items], dtype=np.int64)  # words per item
            first_word = np.concatenate(([0], np.cumsum(k)[:-1])).astype(np.int64)
            word_in_item = np.arange(len(flat), dtype=np.int64) - np.repeat(first_word, k)
            wids = np.repeat(word_in_item, lengths)
            item_of_word = np.repeat(np.arange(len(items)), k)
            count = np.bincount(item_of_word, weights=lengths, minlength=len(items)).astype(np.int64)
        start = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.int64)
        return tokenization_windows.Side(ids, offs, wids, start, count)

    def _assembled(self, texts, pairs, words, stride, overflow, padding_side, run_args):
        padding, truncation, max_length = self._resolve(len(texts), pairs, run_args["add_special_tokens"],
                                                        run_args["padding"], run_args["truncation"],
                                                        run_args["max_length"])
        a = self._sequences(texts, words, run_args["split_special_tokens"], run_args["num_threads"])
        b = self._sequences(pairs, words, run_args["split_special_tokens"], run_args["num_threads"]) \
            if pairs is not None else None
        r, rows, mapping = tokenization_windows.assemble(
            a, b, add_special_tokens=run_args["add_special_tokens"], truncation=truncation,
            max_length=max_length, stride=int(stride), overflow=bool(overflow), padding=padding,
            left_truncation=self.truncation_side == "left",
            pad_to_multiple_of=int(run_args["pad_to_multiple_of"] or 0), cls_id=self._post_ids[0],
            sep_id=self._post_ids[1], pad_id=self.pad_token_id, left=padding_side == "left")
        rows.mapping = mapping
        return r, rows

    def _outputs(self, r, keys, batched, origin, extra, padding_side, return_tensors, return_length, device):
        lengths = r["lengths"]
        if r["padded"] and padding_side == "left" and not r.get("lists"):
            self._pad_left(r, keys, lengths)
        # HF's "length" counts padding too
        if r.get("ragged") is not None:
            out_lengths = r["ragged"]
        elif r["padded"]:
            width = len(r["input_ids"][0]) if r.get("lists") and len(lengths) else np.shape(r["input_ids"])[-1]
            out_lengths = np.full_like(lengths, width)
        else:
            out_lengths = lengths
        if r.get("lists"):
            out = BatchEncoding({k: r[k] if batched else r[k][0] for k in keys})
            if return_length:
                out["length"] = out_lengths.tolist()
            out.update(extra)
            out._origin = origin
            return out
        if return_tensors is None:
            out = BatchEncoding()
            to_lists = _core().to_lists  # C++: no numpy .tolist() / np.split per row
            for k in keys:
                a = np.ascontiguousarray(r[k], dtype=np.int64)
                rows = to_lists(a, None if r["padded"] else lengths, k == "offset_mapping")
                out[k] = rows if batched else rows[0]
            if return_length:
                out["length"] = out_lengths.tolist()  # HF: a list even for one text
            out.update(extra)
            out._origin = origin
            return out
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: use 'pt', 'np' or None")
        if not r["padded"]:
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError("the texts have different lengths: pass padding=True (or 'max_length') to get "
                                 "a tensor, or use encode_packed() for the unpadded (flat + cu_seqlens) layout")
            width = int(lengths[0]) if len(lengths) else 0
            arrays = {k: r[k].reshape((len(lengths), width) + r[k].shape[1:]) for k in keys}
        else:
            arrays = {k: r[k] for k in keys}
        if return_length:
            arrays["length"] = out_lengths
        arrays.update({k: np.asarray(v, dtype=np.int64) for k, v in extra.items()})
        out = BatchEncoding(arrays)
        if return_tensors == "pt":
            import torch
            out = BatchEncoding({k: torch.from_numpy(v) for k, v in arrays.items()})
            if device is not None:
                out = out.to(device)
        out._origin = origin
        return out

    def pad(self, encoded_inputs, padding=True, max_length: Optional[int] = None,
            pad_to_multiple_of: Optional[int] = None, padding_side: Optional[str] = None,
            return_attention_mask: Optional[bool] = None, return_tensors: Optional[str] = None,
            verbose: bool = True) -> BatchEncoding:
        """Pads encodings (one dict of lists, or a list of dicts as DataCollatorWithPadding passes), like HF:
        input_ids, token_type_ids, attention_mask (made if missing) and special_tokens_mask are padded;
        other keys pass through unchanged."""
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and hasattr(encoded_inputs[0], "keys"):
            encoded_inputs = {k: [ex[k] for ex in encoded_inputs] for k in encoded_inputs[0].keys()}
        if not hasattr(encoded_inputs, "keys") or "input_ids" not in encoded_inputs:
            raise ValueError("pad() needs a dict (or a list of dicts) with 'input_ids', as the tokenizer returns")
        tolist = lambda v: v.tolist() if hasattr(v, "tolist") else v  # noqa: E731
        data = {k: tolist(v) for k, v in encoded_inputs.items()}
        single = not data["input_ids"] or not isinstance(data["input_ids"][0], (list, tuple))
        if single:
            data = {k: [v] for k, v in data.items()}
        if isinstance(padding, bool):
            padding = "longest" if padding else "do_not_pad"
        padding = getattr(padding, "value", padding)
        if padding not in _PADDING:
            raise ValueError(f"padding={padding!r}: use True/'longest', 'max_length' or False/'do_not_pad'")
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side={side!r}: use 'right' or 'left'")
        rows = data["input_ids"]
        if return_attention_mask is None or return_attention_mask:
            if "attention_mask" not in data:
                data["attention_mask"] = [[1] * len(r) for r in rows]
        else:
            data.pop("attention_mask", None)
        if padding == "max_length" and max_length is None:
            if self.model_max_length >= VERY_LARGE_INTEGER:
                raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
            max_length = self.model_max_length
        width = max((len(r) for r in rows), default=0) if padding == "longest" else max_length
        if padding != "do_not_pad":
            if pad_to_multiple_of and width % pad_to_multiple_of:
                width += pad_to_multiple_of - width % pad_to_multiple_of
            if self.pad_token_id is None:
                raise ValueError(f"the vocabulary has no pad token {self.pad_token!r}: cannot pad")
            fill = {"input_ids": self.pad_token_id, "token_type_ids": self.pad_token_type_id, "attention_mask": 0,
                    "special_tokens_mask": 1}
            for k, value in fill.items():
                if k not in data:
                    continue
                out = []
                for r in data[k]:
                    r = list(r)
                    gap = [value] * max(0, width - len(r))
                    out.append(gap + r if side == "left" else r + gap)
                data[k] = out
        if single:
            data = {k: v[0] for k, v in data.items()}
        if return_tensors is None:
            return BatchEncoding(data)
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: use 'pt', 'np' or None")
        try:
            arrays = {k: np.asarray(v) for k, v in data.items()}
        except ValueError:
            raise ValueError("the rows have different lengths: pass padding=True to pad() to get tensors") from None
        if any(a.dtype == object for a in arrays.values()):
            raise ValueError("the rows have different lengths: pass padding=True to pad() to get tensors")
        if return_tensors == "pt":
            import torch
            return BatchEncoding({k: torch.as_tensor(v) for k, v in arrays.items()})
        return BatchEncoding(arrays)

    def encode_plus(self, text, text_pair=None, **kwargs) -> BatchEncoding:
        """One text (or pair), like HF's ``encode_plus`` (the same as ``__call__`` on one text)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"encode_plus() takes one text (str), not {type(text).__name__}; use batch_encode_plus")
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs, **kwargs) -> BatchEncoding:
        """A list of texts or of (text, pair) tuples, like HF's ``batch_encode_plus``."""
        if isinstance(batch_text_or_text_pairs, (str, bytes, bytearray)):
            raise TypeError("batch_encode_plus() takes a list of texts or (text, pair) tuples, not one str")
        return self(list(batch_text_or_text_pairs), **kwargs)

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
               max_length: Optional[int] = None, return_tensors: Optional[str] = None, **kwargs):
        """Ids of one text (or pair): a list of int, or a (1, n) tensor with return_tensors."""
        if not isinstance(text, (str, bytes, bytearray)) and not kwargs.get("is_split_into_words"):
            raise TypeError(f"encode() takes one text (str), not {type(text).__name__}; use __call__ for batches")
        enc = self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                   max_length=max_length, return_tensors=return_tensors, return_token_type_ids=False,
                   return_attention_mask=False, **kwargs)
        return enc["input_ids"]

    def tokenize(self, text: str, pair: Optional[str] = None, add_special_tokens: bool = False, **kwargs) -> List[str]:
        """Word-piece strings of one text (no special tokens unless asked)."""
        ids = self.encode(text, pair, add_special_tokens=add_special_tokens, **kwargs)
        return [self._id_to_token(i) for i in ids]

    def encode_packed(self, text, text_pair=None, *, truncation=True, max_length: Optional[int] = None,
                      return_tensors: str = "pt", add_special_tokens: bool = True, device=None,
                      num_threads: Optional[int] = None) -> BatchEncoding:
        """Packed (unpadded) encoding for variable-length kernels.

        Returns ``input_ids`` and ``token_type_ids`` of shape (total_tokens,) int64 (rows laid end to end),
        ``cu_seqlens`` (batch + 1,) int32 starting at 0, and ``max_seqlen`` (python int). With
        ``truncation=True`` rows are cut to ``max_length`` (default: model_max_length).
        """
        texts, _ = self._as_batch(text, "text")
        pairs = None
        if text_pair is not None:
            pairs, _ = self._as_batch(text_pair, "text_pair")
        if device is not None and return_tensors == "pt":
            import torch

            if torch.device(device).type == "cuda":
                why = ("text pairs" if pairs is not None else
                       "added tokens matched in the normalized text" if self._tok.has_normalized_added else
                       "truncation_side='left'" if self.truncation_side != "right" else
                       None if cuda_wordpiece_available() else "fastbert._C_cuda is not built or no GPU is visible")
                if why is None:
                    return self._encode_packed_device(texts, truncation, max_length, add_special_tokens,
                                                      torch.device(device), _launch_cuda)
                warn_once(("encode_packed", str(device), why),
                          f"encode_packed(device={str(device)!r}): the CUDA WordPiece path does not take {why}; "
                          "tokenizing on the CPU and copying the result to the device (same output)")
        r = self._run(texts, pairs, add_special_tokens=add_special_tokens, padding=False, truncation=truncation,
                      max_length=max_length, num_threads=num_threads, arrays=("token_type_ids",))
        lengths = r["lengths"]
        cu = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu[1:])
        out = {"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"], "cu_seqlens": cu}
        if return_tensors == "pt":
            import torch
            out = {k: torch.from_numpy(v) for k, v in out.items()}
            if device is not None:
                out = {k: v.to(device) for k, v in out.items()}
        elif return_tensors != "np":
            raise ValueError(f"return_tensors={return_tensors!r}: encode_packed returns 'pt' or 'np' arrays")
        out["max_seqlen"] = int(lengths.max()) if len(lengths) else 0
        return BatchEncoding(out)

    def _encode_packed_device(self, texts, truncation, max_length, add_special_tokens, device, launch):
        """encode_packed with WordPiece on `device` (fastbert/tokenization_cuda.py)."""
        return tokenization_cuda.encode_packed_device(self, texts, truncation, max_length, add_special_tokens,
                                                      device, launch)

    def __repr__(self) -> str:
        return (f"fastbert.BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars}, "
                f"model_max_length={self.model_max_length})")

