"""Reading BERT tokenizer files: vocab.txt, and HF `tokenizers`' tokenizer.json (what transformers 5 saves)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

VERY_LARGE_INTEGER = int(1e30)  # HF's "no model_max_length"


def load_vocab(vocab_file: Union[str, os.PathLike]) -> List[str]:
    """Tokens of a BERT vocab.txt, one per line, in id order (trailing whitespace trimmed, as HF does)."""
    path = Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(f"vocab file not found: {path} (a BERT vocab.txt, one token per line)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"vocab file {path} is not valid UTF-8 ({e}); is it really a BERT vocab.txt?") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.rstrip() for line in lines]
    if not any(tokens):
        raise ValueError(f"vocab file {path} is empty (a BERT vocab.txt has one token per line)")
    return tokens


def _token_str(value) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:  # AddedToken serialized by transformers
        return value["content"]
    return str(value)


def _from_tokenizer_json(path: Path, kwargs: Dict[str, Any]):
    """Tokens and options of a HF `tokenizers` tokenizer.json holding a BERT WordPiece pipeline."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    model, norm = data.get("model") or {}, data.get("normalizer") or {}
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"{path} is not a BERT WordPiece tokenizer (model type {model.get('type')!r}): "
                         "fastbert.BertTokenizer reads WordPiece vocabularies with the '##' prefix only")
    if norm.get("type") != "BertNormalizer":
        raise ValueError(f"{path}: normalizer {norm.get('type')!r} is not BertNormalizer; fastbert runs BERT's only")
    vocab = model["vocab"]
    tokens = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    opts = {"do_lower_case": norm.get("lowercase", True), "strip_accents": norm.get("strip_accents"),
            "tokenize_chinese_chars": norm.get("handle_chinese_chars", True),
            "clean_text": norm.get("clean_text", True),
            "max_input_chars_per_word": model.get("max_input_chars_per_word", 100),
            "unk_token": model.get("unk_token", "[UNK]")}
    opts.update(kwargs)
    if data.get("added_tokens"):
        opts["_added_tokens"] = data["added_tokens"]
    return tokens, opts
