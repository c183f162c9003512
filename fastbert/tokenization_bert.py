"""fastbert.BertTokenizer: a drop-in for Hugging Face's BERT WordPiece tokenizer, run by a C++ core.

The C++ core (``fastbert._C``, sources in csrc/) does everything per text: special-token matching, BERT
normalization, pre-tokenization, LinMaxMatch WordPiece, truncation, special tokens, padding and offsets,
for a whole batch across threads with the GIL released. The Python side, as Hugging Face splits it between
the call layer and the backend:

- tokenization_call: the call layer (``__call__``, ``encode``, ``batch_encode_plus``, ``encode_packed``,
  ``pad``...), the call's keywords resolved once into a ``CallArgs``;
- tokenization_core: the thin wrapper over ``fastbert._C`` that runs a batch with those arguments;
- tokenization_vocab, tokenization_added, tokenization_files: the vocabulary, special and added tokens,
  decoding, and the files (vocab.txt, tokenizer.json, tokenizer_config.json);
- tokenization_outputs (BatchEncoding, tensors), tokenization_windows (is_split_into_words, overflowing
  windows), tokenization_encoding (``BatchEncoding.encodings``), tokenization_cuda (encode_packed on a GPU).

This module holds the class that puts them together: its options, construction, pickling and
from_pretrained / save_pretrained.

Output is identical to Hugging Face `tokenizers` (``transformers.BertTokenizer`` in transformers >= 5,
``BertTokenizerFast`` before): ids, token type ids, attention mask, special tokens mask and offsets
(code point offsets into the input str). Where HF's Rust and legacy Python tokenizers disagree, fastbert
follows the Rust one; docs/tokenizer.md lists the differences and the few places fastbert raises a clear
error where HF returns something surprising (max_length smaller than the special tokens, ragged tensors).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Union

from .tokenization_added import AddedTokensMixin
from .tokenization_call import TokenizerCallMixin
from .tokenization_compat import TokenizerCompatMixin
from .tokenization_core import Core, default_threads
from .tokenization_cuda import cuda_wordpiece_available  # noqa: F401 - public
from .tokenization_files import VERY_LARGE_INTEGER, _token_str, load_vocab, read_pretrained, write_pretrained
from .tokenization_outputs import BatchEncoding  # noqa: F401 - public
from .tokenization_vocab import VocabularyMixin

# Keywords transformers' tokenizers accept that change nothing for a local WordPiece tokenizer: taken and
# ignored, so code written for AutoTokenizer runs unchanged. Any other unknown keyword raises TypeError.
_NO_EFFECT_KWARGS = frozenset({"use_fast", "trust_remote_code", "_from_auto", "_commit_hash", "name_or_path",
                               "local_files_only", "cache_dir", "tokenizer_class", "auto_map"})


class BertTokenizer(TokenizerCallMixin, VocabularyMixin, AddedTokensMixin, TokenizerCompatMixin):
    """BERT WordPiece tokenizer with Hugging Face's API and output, computed in C++.

    Args mirror ``transformers.BertTokenizer``: ``do_lower_case``, ``strip_accents`` (None: same as
    do_lower_case), ``tokenize_chinese_chars``, ``never_split`` (extra strings kept whole, matched
    verbatim like special tokens), the special tokens, ``model_max_length``. ``num_threads`` (default: all
    cores the process may use, or $FASTBERT_NUM_THREADS) is used for batches.
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    is_fast = True  # the whole pipeline runs in native code, like HF's fast tokenizers

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
        self.padding_side, self.truncation_side = padding_side, truncation_side  # checked when set (SideOption)
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
        self.num_threads = int(num_threads) if num_threads else default_threads()
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
        self._init_specials = specials

    def __getstate__(self):  # the C++ core is rebuilt from the vocabulary on unpickling (DataLoader workers)
        return {k: v for k, v in self.__dict__.items() if k not in ("_tok", "_device_tries", "_starts_cache")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build_core()
        if "_post_ids" not in state:  # pickled by an older fastbert
            self._post_ids = (self.cls_token_id, self.sep_token_id)
            self._init_specials = list(self.all_special_tokens)

    def _build_core(self):
        """The C++ core for the vocabulary, special and added tokens as they are now (again after each change)."""
        self._tok = Core(self._tokens, self._matched, self.never_split, self._added_patterns(),
                         self._added_patterns(special=False), self._core_args)
        self._vocab = None
        self._starts_cache = None
        self._added_display = {i: (self._tok.normalize(a["content"]) if a["normalized"] else a["content"])
                               for i, a in self._added_by_id.items()}

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

    def __repr__(self) -> str:
        return (f"fastbert.BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars}, "
                f"model_max_length={self.model_max_length})")
