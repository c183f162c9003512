"""BERT tokenizer files: vocab.txt, HF `tokenizers`' tokenizer.json (what transformers 5 saves),
tokenizer_config.json and special_tokens_map.json; what BertTokenizer.from_pretrained reads and save_pretrained
writes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

VERY_LARGE_INTEGER = int(1e30)  # HF's "no model_max_length"
SPECIAL_ATTRS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")  # BERT's named special tokens
# the keys of tokenizer_config.json / special_tokens_map.json that are BertTokenizer's constructor options
CONFIG_OPTIONS = frozenset({"do_lower_case", "do_basic_tokenize", "never_split", "tokenize_chinese_chars",
                            "strip_accents", "model_max_length", "padding_side", "truncation_side",
                            "split_special_tokens", "clean_up_tokenization_spaces", *SPECIAL_ATTRS})


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


def _from_tokenizer_json(path: Path):
    """Tokens, options and added tokens of a HF `tokenizers` tokenizer.json holding a BERT WordPiece pipeline."""
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
    return tokens, opts, data.get("added_tokens") or []


def read_pretrained(path: Union[str, os.PathLike], kwargs: Dict[str, Any]):
    """What ``from_pretrained(path, **kwargs)`` reads from a local directory (vocab.txt or tokenizer.json, with
    special_tokens_map.json and tokenizer_config.json) or a vocab.txt path: (the vocab file or its tokens, the
    constructor keywords (``kwargs`` over tokenizer.json's over the config's), added tokens by id, the extra
    special tokens)."""
    p = Path(path)
    added: Dict[int, Any] = {}
    kwargs = dict(kwargs)
    if p.is_file():
        vocab, cfg_dir = p, p.parent
    elif p.is_dir():
        vocab, cfg_dir = p / "vocab.txt", p
        if not vocab.is_file() and (p / "tokenizer.json").is_file():  # what transformers 5 writes
            vocab, opts, added_tokens = _from_tokenizer_json(p / "tokenizer.json")
            kwargs = {**opts, **kwargs}
            added = {int(a["id"]): a for a in added_tokens if "id" in a}
        elif not vocab.is_file():
            raise FileNotFoundError(f"{p} has no vocab.txt or tokenizer.json: fastbert.BertTokenizer needs a "
                                    "BERT WordPiece vocab")
    else:
        raise FileNotFoundError(
            f"{path} is not a local directory or vocab file (fastbert loads tokenizers from disk only; "
            "download the model first, e.g. with huggingface_hub.snapshot_download)")
    config: Dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = cfg_dir / name
        if f.is_file() and p.is_dir():
            try:
                config.update(json.loads(f.read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{f} is not valid JSON: {e}") from None
    args = {k: v for k, v in config.items() if k in CONFIG_OPTIONS}
    if args.get("model_max_length") is not None and args["model_max_length"] >= VERY_LARGE_INTEGER:
        args["model_max_length"] = None
    if isinstance(config.get("added_tokens_decoder"), dict):
        added.update({int(i): a for i, a in config["added_tokens_decoder"].items()})
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    return vocab, {**args, **kwargs}, added, extra


def write_vocab(path: Union[str, os.PathLike], tokens: List[str]) -> None:
    """A vocab.txt: one token per line, in id order."""
    Path(path).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


def write_pretrained(save_directory: Union[str, os.PathLike], tokens: List[str], config: Dict[str, Any],
                     special_tokens_map: Dict[str, str]) -> Tuple[str, ...]:
    """vocab.txt, tokenizer_config.json and special_tokens_map.json in ``save_directory`` (made if missing):
    the files transformers' and fastbert's from_pretrained load. Returns their paths."""
    d = Path(save_directory)
    if d.is_file():
        raise ValueError(f"{d} is a file: save_pretrained needs a directory")
    d.mkdir(parents=True, exist_ok=True)
    files = (d / "tokenizer_config.json", d / "special_tokens_map.json", d / "vocab.txt")
    write_vocab(files[2], tokens)
    for f, data in zip(files, (config, special_tokens_map)):
        f.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tuple(str(f) for f in files)
