"""The call layer of fastbert.BertTokenizer (Hugging Face's ``PreTrainedTokenizerBase`` part): ``__call__``,
``encode``, ``encode_plus``, ``batch_encode_plus``, ``tokenize``, ``encode_packed`` and ``pad``.

A call's keywords are resolved once, by :meth:`TokenizerCallMixin._resolve`, into a :class:`CallArgs` (HF's
padding and truncation strategies, max_length from model_max_length, the padding side, and every check that
needs only the arguments); what follows reads that object by attribute. The texts are then checked and
batched, encoded by the C++ core whole (:class:`fastbert.tokenization_core.Core`) or, for
``is_split_into_words`` and stride windows, row by row (fastbert/tokenization_windows.py), and returned as a
BatchEncoding: Python lists made in C++, or arrays / tensors by ``tokenization_outputs.as_tensors``, the one
place the tokenizer makes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import tokenization_cuda, tokenization_windows
from ._warnings import warn_once
from .tokenization_core import PADDING, TRUNCATION, to_lists
from .tokenization_cuda import cuda_wordpiece_available
from .tokenization_files import VERY_LARGE_INTEGER
from .tokenization_outputs import BatchEncoding, _Alignment, _Sliced, as_tensors, pad_values, round_up


@dataclass(slots=True)
class CallArgs:
    """The keywords of one tokenizer call, resolved (by ``TokenizerCallMixin._resolve``): what the core, the
    windows and the outputs read. Not changed once made: a variant is ``dataclasses.replace(args, ...)``.
    (Not frozen: a frozen dataclass takes ~4x longer to make, a cost every single-text call would pay.)"""
    add_special_tokens: bool = True
    padding: str = "do_not_pad"  # 'do_not_pad' | 'longest' | 'max_length'
    truncation: str = "do_not_truncate"  # 'do_not_truncate' | 'longest_first' | 'only_first' | 'only_second'
    max_length: Optional[int] = None  # None: no limit (model_max_length already applied where HF applies it)
    stride: int = 0
    is_split_into_words: bool = False
    pad_to_multiple_of: int = 0
    padding_side: str = "right"  # the call's, else the tokenizer's
    return_tensors: Optional[str] = None  # None (lists) | 'pt' | 'np'
    return_token_type_ids: bool = True
    return_attention_mask: bool = True
    return_overflowing_tokens: bool = False
    return_special_tokens_mask: bool = False
    return_offsets_mapping: bool = False
    return_length: bool = False
    verbose: bool = True  # taken, as HF's; fastbert has nothing to log
    split_special_tokens: bool = False
    device: Any = None  # where 'pt' tensors go
    num_threads: Optional[int] = None  # None: the tokenizer's (one thread for 32 texts or fewer)
    keys: Tuple[str, ...] = field(init=False)  # the per-token outputs asked for, in HF's order

    def __post_init__(self):
        asked = (("token_type_ids", self.return_token_type_ids), ("attention_mask", self.return_attention_mask),
                 ("special_tokens_mask", self.return_special_tokens_mask),
                 ("offset_mapping", self.return_offsets_mapping))
        self.keys = ("input_ids",) + tuple(k for k, on in asked if on)

    @property
    def left(self) -> bool:
        return self.padding_side == "left"

    @property
    def windowed(self) -> bool:
        """Rows built from per-sequence tokens (tokenization_windows), not by the C++ core whole."""
        return (self.is_split_into_words or self.return_overflowing_tokens
                or (self.stride > 0 and self.truncation != "do_not_truncate" and self.max_length is not None))


CALL_KEYWORDS = frozenset(f.name for f in fields(CallArgs) if f.init)  # __call__'s (HF's, plus device / num_threads)
# a batch's sequences read whole, without special tokens (the windows cut them)
_WHOLE = dict(add_special_tokens=False, padding="do_not_pad", truncation="do_not_truncate", max_length=None,
              pad_to_multiple_of=0)


def check_side(name: str, side) -> str:
    if side not in ("right", "left"):
        raise ValueError(f"{name}={side!r}: use 'right' or 'left'")
    return side


class SideOption:
    """``padding_side`` / ``truncation_side``: 'right' (HF's default, also on the class) or 'left', checked when
    set (constructor, config or attribute), so no call checks it again."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return "right" if obj is None else obj.__dict__.get(self.name, "right")

    def __set__(self, obj, value):
        obj.__dict__[self.name] = check_side(self.name, value)


def padding_strategy(padding) -> str:
    """HF's ``padding`` (bool, str or PaddingStrategy) as 'do_not_pad', 'longest' or 'max_length'."""
    if isinstance(padding, bool):
        padding = "longest" if padding else "do_not_pad"
    padding = getattr(padding, "value", padding)
    if padding not in PADDING:
        raise ValueError(f"padding={padding!r}: use True/'longest', 'max_length' or False/'do_not_pad'")
    return padding


def truncation_strategy(truncation, max_length, padding: str) -> str:
    """HF's ``truncation`` (None, bool, str or TruncationStrategy) as one of the core's strategies."""
    if truncation is None:  # as transformers: max_length alone truncates, but not when padding too
        return "longest_first" if max_length is not None and padding == "do_not_pad" else "do_not_truncate"
    if isinstance(truncation, bool):
        truncation = "longest_first" if truncation else "do_not_truncate"
    truncation = getattr(truncation, "value", truncation)
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation={truncation!r}: use True/'longest_first', 'only_first', "
                         "'only_second' or False/'do_not_truncate'")
    return truncation


def _texts(texts, what: str) -> List[str]:
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


def _as_batch(text, what: str) -> Tuple[List[str], bool]:
    """(texts, batched) of a str or a list/tuple of str."""
    if isinstance(text, (str, bytes, bytearray)):
        return _texts([text], what), False
    if text is None:
        raise TypeError(f"{what} is None: pass a str or a list of str")
    if isinstance(text, (list, tuple)):
        return _texts(text, what), True
    raise TypeError(f"{what} must be a str or a list/tuple of str, not {type(text).__name__}")


def _check_pairs(texts: List[str], pairs: List[str]) -> None:
    if len(pairs) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs: they must match one to one")


def _as_text_batch(text, text_pair):
    """(texts, pairs or None, batched): a str, a list of str, or a batch of (text, pair) tuples."""
    if (text_pair is None and isinstance(text, (list, tuple)) and text
            and all(isinstance(t, (list, tuple)) and len(t) == 2 for t in text)):
        text, text_pair = [t[0] for t in text], [t[1] for t in text]  # a batch of (text, pair) tuples
    texts, batched = _as_batch(text, "text")
    pairs = None
    if not batched and isinstance(text_pair, str) and not text_pair:
        text_pair = None  # as HF: a single empty pair means no pair (in a batch it stays an empty pair)
    if text_pair is not None:
        pairs, pair_batched = _as_batch(text_pair, "text_pair")
        if pair_batched != batched:
            raise TypeError("text and text_pair must both be a str or both be a list of str")
        _check_pairs(texts, pairs)
    return texts, pairs, batched


def _as_word_batch(text, text_pair):
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
            _texts(words, f"{what}[{i}]" if batched else what)
        return [list(w) for w in items], batched
    texts, batched = examples(text, "text")
    pairs = None
    if text_pair is not None:
        pairs, pair_batched = examples(text_pair, "text_pair")
        if pair_batched != batched or len(pairs) != len(texts):
            raise TypeError("text and text_pair must both be lists of words, or both batches of the same size")
    return texts, pairs, batched


class TokenizerCallMixin:
    """The call layer of BertTokenizer. Reads from the tokenizer: ``_tok`` (the Core), ``_post_ids`` (the
    [CLS] / [SEP] ids put around sequences), ``pad_token_id``, ``model_max_length``, ``num_threads``,
    ``split_special_tokens`` and the vocabulary's ``_word_starts()``."""

    padding_side = SideOption()
    truncation_side = SideOption()

    def _resolve(self, *, add_special_tokens=True, padding=False, truncation=None, max_length=None, stride=0,
                 is_split_into_words=False, pad_to_multiple_of=None, padding_side=None, return_tensors=None,
                 return_token_type_ids=None, return_attention_mask=None, return_overflowing_tokens=False,
                 return_special_tokens_mask=False, return_offsets_mapping=False, return_length=False,
                 verbose=True, split_special_tokens=False, device=None, num_threads=None) -> CallArgs:
        """A call's keywords (HF's meanings and defaults) as a CallArgs; raises on any that cannot be run."""
        if not isinstance(stride, (int, np.integer)) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        padding_side = check_side("padding_side", self.padding_side if padding_side is None else padding_side)
        padding = padding_strategy(padding)
        truncation = truncation_strategy(truncation, max_length, padding)
        if max_length is None and (truncation != "do_not_truncate" or padding == "max_length"):
            max_length = self.model_max_length if self.model_max_length < VERY_LARGE_INTEGER else None
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        if stride and truncation != "do_not_truncate" and max_length is not None and stride > max_length - 2:
            # HF's check up front (each window is checked again when cut: tokenization_windows)
            raise ValueError(f"stride={stride} is larger than max_length={max_length} minus 2 special tokens: each "
                             "window must move forward (HF's tokenizers raises the same)")
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: use 'pt', 'np' or None")
        if add_special_tokens and None in self._post_ids:
            raise ValueError(f"the vocabulary has no {self.cls_token!r} / {self.sep_token!r} token: "
                             "pass add_special_tokens=False")
        if padding != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(f"the vocabulary has no pad token {self.pad_token!r}: cannot pad")
        return CallArgs(
            add_special_tokens=bool(add_special_tokens), padding=padding, truncation=truncation,
            max_length=None if max_length is None else int(max_length), stride=int(stride),
            is_split_into_words=bool(is_split_into_words), pad_to_multiple_of=int(pad_to_multiple_of or 0),
            padding_side=padding_side, return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids is None or bool(return_token_type_ids),
            return_attention_mask=return_attention_mask is None or bool(return_attention_mask),
            return_overflowing_tokens=bool(return_overflowing_tokens),
            return_special_tokens_mask=bool(return_special_tokens_mask),
            return_offsets_mapping=bool(return_offsets_mapping), return_length=bool(return_length),
            verbose=verbose, split_special_tokens=bool(split_special_tokens), device=device, num_threads=num_threads)

    # ---- the public calls --------------------------------------------------------------------------

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
        raw = dict(add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                   max_length=max_length, stride=stride, is_split_into_words=is_split_into_words,
                   pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side, return_tensors=return_tensors,
                   return_token_type_ids=return_token_type_ids, return_attention_mask=return_attention_mask,
                   return_overflowing_tokens=return_overflowing_tokens,
                   return_special_tokens_mask=return_special_tokens_mask,
                   return_offsets_mapping=return_offsets_mapping, return_length=return_length, verbose=verbose,
                   split_special_tokens=kwargs.pop("split_special_tokens", self.split_special_tokens))
        max_target_length = kwargs.pop("max_target_length", None)
        if tokenizer_kwargs:  # as HF: tokenizer_kwargs override the keywords above, **kwargs override both
            raw.update(tokenizer_kwargs)
        raw.update(kwargs)
        unknown = sorted(set(raw) - CALL_KEYWORDS)
        if unknown:
            raise TypeError(f"fastbert.BertTokenizer.__call__ got unexpected keyword argument(s) {unknown}")
        if text is None and text_target is None:
            raise ValueError("You need to specify either `text` or `text_target`.")
        enc = self._encode_call(text, text_pair, self._resolve(**raw)) if text is not None else None
        if text_target is None:
            return enc
        if max_target_length is not None:
            raw["max_length"] = max_target_length
        target = self._encode_call(text_target, text_pair_target, self._resolve(**raw))
        if enc is None:
            return target
        enc["labels"] = target["input_ids"]
        return enc

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
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: encode_packed returns 'pt' or 'np' arrays")
        texts, _ = _as_batch(text, "text")
        pairs = None
        if text_pair is not None:
            pairs, _ = _as_batch(text_pair, "text_pair")
            _check_pairs(texts, pairs)
        args = self._resolve(add_special_tokens=add_special_tokens, truncation=truncation, max_length=max_length,
                             device=device, num_threads=num_threads)
        if device is not None and return_tensors == "pt":
            import torch

            if torch.device(device).type == "cuda":
                why = ("text pairs" if pairs is not None else
                       "added tokens matched in the normalized text" if self._tok.has_normalized_added else
                       "truncation_side='left'" if self.truncation_side != "right" else
                       None if cuda_wordpiece_available() else "fastbert._C_cuda is not built or no GPU is visible")
                if why is None:
                    return self._encode_packed_device(texts, args, torch.device(device),
                                                      tokenization_cuda.launch_cuda)
                warn_once(("encode_packed", str(device), why),
                          f"encode_packed(device={str(device)!r}): the CUDA WordPiece path does not take {why}; "
                          "tokenizing on the CPU and copying the result to the device (same output)")
        r = self._run(texts, pairs, args, arrays=("token_type_ids",))
        lengths = r["lengths"]
        cu = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu[1:])
        out = as_tensors({"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"], "cu_seqlens": cu},
                         return_tensors, device)
        out["max_seqlen"] = int(lengths.max()) if len(lengths) else 0
        return BatchEncoding(out)

    def _encode_packed_device(self, texts, args: CallArgs, device, launch) -> BatchEncoding:
        """encode_packed with WordPiece on `device` by `launch` (fastbert/tokenization_cuda.py)."""
        return tokenization_cuda.encode_packed_device(self, texts, args, device, launch)

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
        # the same resolution as a call's (nothing is truncated: the rows are already made)
        args = self._resolve(add_special_tokens=False, padding=padding, truncation=False, max_length=max_length,
                             pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
                             return_attention_mask=return_attention_mask, return_tensors=return_tensors)
        rows = data["input_ids"]
        if args.return_attention_mask:
            if "attention_mask" not in data:
                data["attention_mask"] = [[1] * len(r) for r in rows]
        else:
            data.pop("attention_mask", None)
        if args.padding == "max_length" and args.max_length is None:
            raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
        if args.padding != "do_not_pad":
            width = max((len(r) for r in rows), default=0) if args.padding == "longest" else args.max_length
            width = round_up(width, args.pad_to_multiple_of)
            fill = pad_values(self.pad_token_id, self.pad_token_type_id)
            del fill["offset_mapping"]  # as HF: offsets pass through unpadded
            for k, value in fill.items():
                if k in data:
                    gaps = [[value] * max(0, width - len(r)) for r in data[k]]
                    data[k] = [g + list(r) if args.left else list(r) + g for r, g in zip(data[k], gaps)]
        if single:
            data = {k: v[0] for k, v in data.items()}
        if args.return_tensors is None:
            return BatchEncoding(data)
        return BatchEncoding(as_tensors(data, args.return_tensors,
                                        ragged="pass padding=True to pad() to get tensors"))

    # ---- encoding a batch --------------------------------------------------------------------------

    def _encode_call(self, text, text_pair, args: CallArgs) -> BatchEncoding:
        if args.is_split_into_words:
            texts, pairs, batched = _as_word_batch(text, text_pair)
        else:
            texts, pairs, batched = _as_text_batch(text, text_pair)
        return self._encode(texts, pairs, batched, args)

    def _encode(self, texts, pairs, batched: bool, args: CallArgs) -> BatchEncoding:
        extra = {}
        if args.windowed:
            r, origin = self._assembled(texts, pairs, args)
            if args.return_overflowing_tokens:
                extra["overflow_to_sample_mapping"] = origin.mapping
                batched = True  # as HF: the windows of one text come back as a batch
        else:
            # Python lists straight from C++ unless left padding (moved on the numpy arrays) or tensors
            as_lists = args.return_tensors is None and not args.left
            r = self._run(texts, pairs, args, offsets=args.return_offsets_mapping, arrays=args.keys,
                          as_lists=as_lists)
            origin = _Alignment(self, texts, pairs, args)
        widths = self._ragged_widths(r, args)
        if widths is not None:  # padding='max_length' without truncation, rows longer than max_length: as HF
            if args.return_tensors is not None:
                raise ValueError(f"padding='max_length' without truncation leaves rows longer than max_length="
                                 f"{args.max_length}: pass truncation=True to get a tensor")
            r = self._unpad_rows(r, args.keys, widths, args.left)
            origin = _Sliced(origin, widths, args.left)
        out = self._outputs(r, batched, origin, extra, args)
        out._encodings_source = (self, texts, pairs, args)  # .encodings, built on first access, runs it again
        return out

    def _run(self, texts: List[str], pairs: Optional[List[str]], args: CallArgs, *, offsets: bool = False,
             arrays=(), as_lists: bool = False) -> dict:
        """The C++ core on a batch: packed arrays + lengths, padded rows, or Python lists (``as_lists``)."""
        threads = args.num_threads or (self.num_threads if len(texts) > 32 else 1)
        return self._tok.encode(texts, pairs, args, post_ids=self._post_ids, pad_id=self.pad_token_id,
                                threads=threads, truncate_left=self.truncation_side == "left", offsets=offsets,
                                arrays=arrays, as_lists=as_lists)

    def _sequences(self, items, args: CallArgs) -> tokenization_windows.Side:
        """The items' tokens without special tokens, flat (tokenization_windows.Side): texts, or lists of words
        (each word tokenized alone, offsets relative to it, its index as word id, as HF's pre-tokenized input)."""
        words = args.is_split_into_words
        flat = [w for item in items for w in item] if words else list(items)
        r = self._run(flat, None, replace(args, **_WHOLE), offsets=True)
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

    def _assembled(self, texts, pairs, args: CallArgs):
        """Rows built from the sequences' tokens (tokenization_windows.assemble) and their alignment."""
        first = self._sequences(texts, args)
        second = self._sequences(pairs, args) if pairs is not None else None
        r, rows, mapping = tokenization_windows.assemble(
            first, second, args, cls_id=self._post_ids[0], sep_id=self._post_ids[1], pad_id=self.pad_token_id,
            left_truncation=self.truncation_side == "left")
        rows.mapping = mapping
        return r, rows

    def _ragged_widths(self, r, args: CallArgs):
        """Per-row widths when padding='max_length' meets rows longer than max_length (no truncation): HF
        pads each row to max_length and leaves the longer ones as they are."""
        if not r["padded"] or args.padding != "max_length" or args.max_length is None:
            return None
        target = round_up(args.max_length, args.pad_to_multiple_of)
        lengths = r["lengths"]
        if not len(lengths) or int(lengths.max()) <= target:
            return None
        return np.maximum(lengths, target)

    def _unpad_rows(self, r, keys, widths, left: bool):
        """The padded rows of r cut to their own widths (Python lists; left padding applied first)."""
        if left and not r.get("lists"):
            self._pad_left(r, keys, r["lengths"])
        out = dict(r, lists=True, padded=True, ragged=widths)
        for k in keys:
            rows = r[k] if r.get("lists") else to_lists(r[k], None, k == "offset_mapping")
            out[k] = [row[len(row) - w:] if left else row[:w] for row, w in zip(rows, widths.tolist())]
        return out

    def _pad_left(self, r, keys, lengths):
        """Moves right-padded rows of r to the right end (HF's padding_side='left')."""
        width = r["input_ids"].shape[1]
        src = np.arange(width)[None, :] - (width - lengths)[:, None]  # (rows, width): source column or < 0
        valid = src >= 0
        src = np.maximum(src, 0)
        fill = pad_values(self.pad_token_id, self.pad_token_type_id)
        for k in keys:
            a = r[k]
            if a.ndim == 3:
                moved = np.take_along_axis(a, src[:, :, None], axis=1)
                r[k] = np.where(valid[:, :, None], moved, fill[k])
            else:
                r[k] = np.where(valid, np.take_along_axis(a, src, axis=1), fill[k]).astype(a.dtype)

    def _outputs(self, r, batched: bool, origin, extra: dict, args: CallArgs) -> BatchEncoding:
        keys, lengths = args.keys, r["lengths"]
        if r["padded"] and args.left and not r.get("lists"):
            self._pad_left(r, keys, lengths)
        # HF's "length" counts padding too
        if r.get("ragged") is not None:
            out_lengths = r["ragged"]
        elif r["padded"]:
            width = len(r["input_ids"][0]) if r.get("lists") and len(lengths) else np.shape(r["input_ids"])[-1]
            out_lengths = np.full_like(lengths, width)
        else:
            out_lengths = lengths
        if r.get("lists") or args.return_tensors is None:  # Python lists, made in C++
            if not r.get("lists"):
                cut = None if r["padded"] else lengths
                r = dict(r, **{k: to_lists(r[k], cut, k == "offset_mapping") for k in keys})
            out = BatchEncoding({k: r[k] if batched else r[k][0] for k in keys})
            if args.return_length:
                out["length"] = out_lengths.tolist()  # HF: a list even for one text
            out.update(extra)
        else:
            if r["padded"]:
                arrays = {k: r[k] for k in keys}
            else:
                if len(lengths) and (lengths != lengths[0]).any():
                    raise ValueError("the texts have different lengths: pass padding=True (or 'max_length') to get "
                                     "a tensor, or use encode_packed() for the unpadded (flat + cu_seqlens) layout")
                width = int(lengths[0]) if len(lengths) else 0
                arrays = {k: r[k].reshape((len(lengths), width) + r[k].shape[1:]) for k in keys}
            if args.return_length:
                arrays["length"] = out_lengths
            arrays.update({k: np.asarray(v, dtype=np.int64) for k, v in extra.items()})
            out = BatchEncoding(as_tensors(arrays, args.return_tensors, args.device))
        out._origin = origin
        return out
