"""Added tokens (HF's AddedVocabulary): add_tokens / add_special_tokens and the vocabulary views, as a mixin
of fastbert.BertTokenizer. The matching itself is in the C++ core (csrc/tokenizer.cpp: special tokens
verbatim in the raw text, the others leftmost-longest in the normalized text); this keeps HF's ids, order,
flags and counts."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .tokenization_files import SPECIAL_ATTRS, _token_str


class AddedTokensMixin:
    """State (set by BertTokenizer.__init__): _added_map (content -> id), _added_by_id (id -> spec),
    _added_special / _added_plain (specs in the order added: HF's pattern order), _added_display (id -> the
    token's string as HF shows it), _extra_special (extra / additional special tokens)."""

    def _added_patterns(self, special: bool = True):
        """(content, id, normalized) of the added tokens in HF's order: special ones, then the others."""
        specs = (self._added_special if special else []) + self._added_plain
        return [(a["content"], self._added_map[a["content"]], bool(a["normalized"])) for a in specs]

    # ---- added tokens (HF's add_tokens / add_special_tokens) ---------------------------------------

    @staticmethod
    def _added_spec(token, special: bool) -> Dict[str, Any]:
        """HF's AddedToken as a dict: from a str (normalized unless special), a tokenizers.AddedToken or a
        dict as tokenizer_config.json's added_tokens_decoder holds it."""
        if isinstance(token, str):
            spec = dict(content=token, single_word=False, lstrip=False, rstrip=False, normalized=not special,
                        special=special)
        elif isinstance(token, dict) and "content" in token:
            spec = dict(content=token["content"], single_word=bool(token.get("single_word", False)),
                        lstrip=bool(token.get("lstrip", False)), rstrip=bool(token.get("rstrip", False)),
                        normalized=bool(token.get("normalized", not token.get("special", special))),
                        special=bool(token.get("special", special)) or special)
        elif hasattr(token, "content"):
            if special and hasattr(token, "special"):
                # as HF's binding, which marks the very object special: its normalized flag then defaults to
                # False unless it was set explicitly (only the object knows which)
                try:
                    token.special = True
                except AttributeError:
                    pass
            spec = dict(content=str(token.content), single_word=bool(getattr(token, "single_word", False)),
                        lstrip=bool(getattr(token, "lstrip", False)), rstrip=bool(getattr(token, "rstrip", False)),
                        normalized=bool(getattr(token, "normalized", not special)),
                        special=bool(getattr(token, "special", False)) or special)
        else:
            raise TypeError(f"an added token must be a str or an AddedToken, not {type(token).__name__}")
        for flag in ("single_word", "lstrip", "rstrip"):
            if spec[flag]:
                raise NotImplementedError(f"added token {spec['content']!r}: {flag}=True is not supported by "
                                          "fastbert.BertTokenizer (BERT's tokens all have it False)")
        return spec

    def _register(self, spec: Dict[str, Any], token_id: int, special: bool) -> None:
        c = spec["content"]
        special = special or spec["special"]
        if special and c not in {a["content"] for a in self._added_special}:
            self._added_special.append(spec)
        self._added_map[c] = token_id
        self._added_by_id[token_id] = spec
        if c not in {a["content"] for a in self._added_special}:
            self._added_plain.append(spec)

    def _add_specs(self, specs: List[Dict[str, Any]], special: bool) -> int:
        n = 0
        for spec in specs:
            c = spec["content"]
            if not c or any(a == spec for a in self._added_by_id.values()):
                continue  # as HF: empty, or this very token is already added
            i = self._added_map.get(c)
            if i is None:
                i = self._tok.token_to_id(c)
            if i is None or i < 0:
                top = max(self._added_by_id, default=-1)
                i = top + 1 if top >= len(self._tokens) else len(self._tokens)
            self._register(spec, i, special)
            n += 1
        if n:
            self._build_core()
        return n

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Adds tokens to the vocabulary, as HF: each is split out of the text before WordPiece (a str is
        matched in the normalized text, so lower-cased and accent-stripped in uncased mode; a special one
        verbatim). Tokens not in the vocabulary get new ids from len(vocab). Returns the number added."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        return self._add_specs([self._added_spec(t, special_tokens) for t in new_tokens], special_tokens)

    def add_special_tokens(self, special_tokens_dict: Dict[str, Any], replace_extra_special_tokens: bool = True,
                           replace_additional_special_tokens: Optional[bool] = None) -> int:
        """HF's add_special_tokens: keys unk/sep/pad/cls/mask_token (the attribute is set) and
        extra_special_tokens (or additional_special_tokens); the tokens are added as special (matched
        verbatim, skipped by decode(skip_special_tokens=True))."""
        if not special_tokens_dict:
            return 0
        if replace_additional_special_tokens is not None:
            replace_extra_special_tokens = replace_additional_special_tokens
        d = dict(special_tokens_dict)
        if "additional_special_tokens" in d and not d.get("extra_special_tokens"):
            d["extra_special_tokens"] = d.pop("additional_special_tokens")
        to_add = []
        for key, value in d.items():
            if key == "extra_special_tokens":
                if not isinstance(value, (list, tuple)):
                    raise ValueError(f"Tokens {value} for key {key} should all be str or AddedToken instances")
                new = [self._added_spec(t, True) for t in value
                       if replace_extra_special_tokens or str(getattr(t, "content", t)) not in self._extra_special]
                names = [t["content"] for t in new]
                if replace_extra_special_tokens and new:
                    self._extra_special = names
                else:
                    self._extra_special.extend(names)
                to_add.extend(new)
            elif key in SPECIAL_ATTRS:
                spec = self._added_spec(value, True)
                setattr(self, key, spec["content"])
                to_add.append(spec)
            elif key in ("bos_token", "eos_token"):
                raise NotImplementedError(f"{key}: BERT has no {key}; fastbert.BertTokenizer does not keep one "
                                          "(add it with extra_special_tokens)")
            else:
                raise ValueError(f"Key {key} is not a valid special token. Valid keys are: "
                                 f"{sorted(set(SPECIAL_ATTRS) | {'extra_special_tokens'})}")
        return self._add_specs(to_add, True)

    def get_added_vocab(self) -> Dict[str, int]:
        """HF's get_added_vocab: the special tokens and the added tokens, content -> id, by id."""
        out = {t: i for t, i in ((t, self._tok.token_to_id(t)) for t in self._matched) if i >= 0}
        out.update(self._added_map)
        return dict(sorted(out.items(), key=lambda kv: kv[1]))

    @property
    def added_tokens_decoder(self) -> Dict[int, Dict[str, Any]]:
        """id -> the added token's flags (dicts, where HF has AddedToken objects)."""
        out = {}
        for t in self._matched:
            i = self._tok.token_to_id(t)
            if i >= 0:
                out[i] = dict(content=t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                              special=True)
        out.update({i: dict(a) for i, a in self._added_by_id.items()})
        return dict(sorted(out.items()))

    @property
    def extra_special_tokens(self) -> List[str]:
        return list(self._extra_special)

    additional_special_tokens = extra_special_tokens

    def _load_added(self, added: Dict[int, Any], extra) -> None:
        """Added tokens saved by transformers or fastbert (id -> AddedToken dict), with their ids."""
        for i, a in sorted(added.items()):
            content = a.get("content") if isinstance(a, dict) else getattr(a, "content", a)
            if not content:
                continue
            if content in self._matched and self._tok.token_to_id(content) == i:
                continue  # the tokenizer's own special tokens (matched verbatim already, whatever their flags)
            spec = self._added_spec(a, False)
            self._register(spec, i, spec["special"])
        self._extra_special = [_token_str(t) for t in extra if _token_str(t)] if isinstance(extra, list) else []
        if self._added_map:
            self._build_core()
