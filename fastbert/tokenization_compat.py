"""Small parts of transformers' tokenizer API that BertTokenizer answers from what it already holds (the
vocabulary, ``model_max_length``, the added tokens). docs/compat.md lists each name transformers has, and how
fastbert answers it."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from .tokenization_files import write_vocab
from .tokenization_vocab import _clean_up_tokenization


class TokenizerCompatMixin:
    name_or_path = ""  # the directory or file from_pretrained read
    verbose = False

    @property
    def vocab(self) -> Dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_encoder(self) -> Dict[str, int]:
        """content -> id of the added tokens (the special tokens of the vocabulary among them), as HF."""
        return {a["content"]: i for i, a in self.added_tokens_decoder.items()}

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2  # [CLS] A [SEP] (B [SEP])

    @property
    def max_len_single_sentence(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(False)

    @property
    def max_len_sentences_pair(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(True)

    def clean_up_tokenization(self, out_string: str) -> str:
        return _clean_up_tokenization(out_string)

    def save_vocabulary(self, save_directory, filename_prefix: Optional[str] = None) -> Tuple[str]:
        """Writes ``[prefix-]vocab.txt`` (what transformers 4's BERT tokenizers write) and returns its path."""
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_vocabulary needs an existing directory, got {save_directory!r}")
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.txt")
        write_vocab(path, self._tokens)
        return (path,)


__all__ = ["TokenizerCompatMixin"]
