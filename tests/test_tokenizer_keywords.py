"""Every keyword of HF's ``BertTokenizerFast.__call__`` is honoured by fastbert.BertTokenizer (same output as
HF) or raises NotImplementedError / ValueError naming it: none is silently dropped.

The keyword list is read from HF's own signature, so a keyword HF adds later fails this test until it is
handled here.
"""
import inspect
import random

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from fastbert.tokenization_bert import BertTokenizer  # noqa: E402

PIECES = ["hello", "World", "[CLS]", "[SEP]", "[MASK]", "[unused1]", "café", "naïve", "中文", "x\u0301y",
          "don't", ",", "!", "unaffable", "\t", "  ", "supercalifragilistic", "ΟΔΥΣ", "🥰"]


def _texts(rng, n):
    return [" ".join(rng.choice(PIECES) for _ in range(rng.randint(0, 9))) for _ in range(n)]


def _cases(rng):
    """Each HF keyword -> the call that exercises it (the keyword at a non-default value)."""
    a, b = _texts(rng, 5), _texts(rng, 5)
    return {
        "text_pair": dict(text=a, text_pair=b),
        "text_target": dict(text=a, text_target=b),
        "text_pair_target": dict(text=a, text_target=b, text_pair_target=_texts(rng, 5)),
        "add_special_tokens": dict(text=a, add_special_tokens=False),
        "padding": dict(text=a, padding=True),
        "truncation": dict(text=a, text_pair=b, truncation="longest_first", max_length=9),
        "max_length": dict(text=a, padding="max_length", truncation=True, max_length=7),
        "stride": dict(text=a, truncation=True, max_length=6, stride=2, return_overflowing_tokens=True),
        "is_split_into_words": dict(text=[t.split() for t in a], is_split_into_words=True),
        "pad_to_multiple_of": dict(text=a, padding=True, pad_to_multiple_of=8),
        "padding_side": dict(text=a, text_pair=b, padding=True, padding_side="left", return_offsets_mapping=True,
                             return_special_tokens_mask=True),
        "return_tensors": dict(text=a, padding=True, return_tensors="np"),
        "return_token_type_ids": dict(text=a, return_token_type_ids=False),
        "return_attention_mask": dict(text=a, return_attention_mask=False),
        "return_overflowing_tokens": dict(text=a, truncation=True, max_length=5, return_overflowing_tokens=True),
        "return_special_tokens_mask": dict(text=a, text_pair=b, return_special_tokens_mask=True),
        "return_offsets_mapping": dict(text=a, text_pair=b, return_offsets_mapping=True),
        "return_length": dict(text=a, return_length=True),
        "verbose": dict(text=a, verbose=False),
        "tokenizer_kwargs": dict(text=a, padding=False, tokenizer_kwargs={"padding": True, "return_length": True}),
        # taken from **kwargs by HF's __call__
        "split_special_tokens": dict(text=a, split_special_tokens=True, return_offsets_mapping=True),
        "max_target_length": dict(text=a, text_target=b, truncation=True, max_target_length=4),
    }


def _same(x, y):
    assert set(x.keys()) == set(y.keys())
    for k in x:
        if isinstance(x[k], np.ndarray):
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x[k] == y[k], k


@pytest.fixture(scope="module")
def pair(minilm_dir):
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)


def test_every_hf_keyword_is_honoured_or_raises(pair):
    hf, fast = pair
    params = [p for p in inspect.signature(transformers.BertTokenizerFast.__call__).parameters.values()
              if p.name not in ("self", "text") and p.kind is not p.VAR_KEYWORD]
    names = [p.name for p in params] + ["split_special_tokens", "max_target_length"]
    rng = random.Random(13)
    cases = _cases(rng)
    missing = [n for n in names if n not in cases]
    assert not missing, f"HF's __call__ takes {missing}: add a case for it (and honour it or raise)"
    raised = []
    for name in names:
        call = cases[name]
        try:
            got = fast(**call)
        except (NotImplementedError, ValueError) as e:
            assert name in str(e), f"{name}: the error must name the keyword, got {e}"
            raised.append(name)
            continue
        _same(hf(**call), got)
    # what is still unsupported, so the list only shrinks on purpose
    assert not raised, raised


def test_unknown_keyword_raises(pair):
    _, fast = pair
    with pytest.raises(TypeError, match="return_offset_mapping"):
        fast("hello", return_offset_mapping=True)  # a typo HF would only warn about


def test_padding_side_and_split_special_tokens_from_init(minilm_dir):
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir, padding_side="left", split_special_tokens=True)
    fast = BertTokenizer.from_pretrained(minilm_dir, padding_side="left", split_special_tokens=True)
    texts = _texts(random.Random(5), 6)
    _same(hf(texts, padding=True, return_offsets_mapping=True), fast(texts, padding=True, return_offsets_mapping=True))
    with pytest.raises(ValueError, match="padding_side"):
        fast(texts, padding=True, padding_side="middle")
