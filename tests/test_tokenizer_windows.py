"""is_split_into_words (NER) and stride + return_overflowing_tokens + overflow_to_sample_mapping (QA) against
transformers' BertTokenizer(Fast) on fresh random inputs (the fuzzer's awkward Unicode): ids, type ids,
masks, offsets, word ids, sequence ids, char_to_token, padding either side, tensors; and the same errors."""
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from fastbert.tokenization_bert import BertTokenizer  # noqa: E402

_SPEC = importlib.util.spec_from_file_location("fuzz_tokenizer",
                                               Path(__file__).resolve().parent.parent / "scripts" / "fuzz_tokenizer.py")
_fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_fuzz)


@pytest.fixture(scope="module")
def pair(minilm_dir):
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    fast = BertTokenizer.from_pretrained(minilm_dir)
    for t in (hf, fast):  # added tokens go through these paths too
        t.add_tokens(["NewTok"])
        t.add_tokens(["<ent>"], special_tokens=True)
    return hf, fast


def _words(rng):
    text = _fuzz.random_text(rng) + rng.choice(["", " NewTok", " <ent>x", " New York"])
    words = text.split(" ")
    if rng.random() < 0.3:
        words.insert(rng.randint(0, len(words)), rng.choice(["", "a b", "[CLS]", "中文", "don't"]))
    return words


def _same(ref, got, rows, what):
    ref, got = dict(ref), dict(got)
    assert set(ref) == set(got), what
    for k in ref:
        a, b = ref[k], got[k]
        if hasattr(a, "tolist"):
            assert type(a) is type(b) and a.dtype == b.dtype, (what, k)
            a, b = a.tolist(), b.tolist()
        assert a == b, (what, k)


def _same_alignment(ref, got, rows, what):
    for i in range(rows):
        assert got.word_ids(i) == ref.word_ids(i), (what, i)
        assert got.sequence_ids(i) == ref.sequence_ids(i), (what, i)
        for c in (0, 1, 3, 7):
            assert got.char_to_token(i, c) == ref.char_to_token(i, c), (what, i, c)


def _call(tok, *args, **kw):
    try:
        return tok(*args, **kw)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: B036 - HF's tokenizers panics (pyo3 PanicException) on a bad stride
        return e


def _check(hf, fast, args, kw, what):
    ref, got = _call(hf, *args, **kw), _call(fast, *args, **kw)
    if isinstance(ref, BaseException):
        assert isinstance(got, (ValueError, NotImplementedError)), (what, ref, got)
        return 0
    assert not isinstance(got, BaseException), (what, got)
    _same(ref, got, 0, what)
    ids = ref["input_ids"]
    if hasattr(ids, "ndim"):
        rows = ids.shape[0] if ids.ndim == 2 else 1
    else:
        rows = len(ids) if ids and isinstance(ids[0], list) else 1
    _same_alignment(ref, got, rows, what)
    return rows


def test_is_split_into_words_matches_hf(pair):
    hf, fast = pair
    rng = random.Random(21)
    done = 0
    for trial in range(40):
        batch = [_words(rng) for _ in range(rng.randint(1, 6))]
        pairs = [_words(rng) for _ in batch] if trial % 3 == 0 else None
        kw = dict(is_split_into_words=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        if trial % 2:
            kw.update(truncation="only_second" if pairs and trial % 4 == 1 else True,
                      max_length=rng.choice([8, 16, 40]), padding=rng.choice([True, "max_length"]),
                      padding_side=rng.choice(["left", "right"]))
        if trial % 5 == 0:
            kw.update(return_tensors="np", padding=True)
        args = (batch, pairs) if pairs else (batch,)
        done += _check(hf, fast, args, kw, (trial, "batch"))
        args = (batch[0], pairs[0]) if pairs else (batch[0],)
        done += _check(hf, fast, args, kw, (trial, "one"))
    assert done > 40


def test_overflowing_windows_match_hf(pair):
    hf, fast = pair
    rng = random.Random(22)
    done = 0
    for trial in range(40):
        n = rng.randint(1, 5)
        contexts = [_fuzz.random_text(rng) * rng.randint(1, 3) for _ in range(n)]
        questions = [_fuzz.random_text(rng)[:30] for _ in range(n)]
        max_length = rng.choice([16, 24, 48, 96])
        kw = dict(max_length=max_length, stride=rng.choice([0, 1, 3, 6]), return_overflowing_tokens=True,
                  return_offsets_mapping=True, return_special_tokens_mask=rng.random() < 0.5,
                  padding=rng.choice([False, True, "max_length"]), return_length=rng.random() < 0.3)
        if kw["padding"]:
            kw["padding_side"] = rng.choice(["left", "right"])
        if trial % 3 == 0:  # single texts
            kw["truncation"] = True
            done += _check(hf, fast, (contexts,), kw, (trial, "single"))
            done += _check(hf, fast, (contexts[0],), kw, (trial, "one"))
        else:  # QA: question + context, only the context is windowed (or only_first)
            kw["truncation"] = "only_second" if trial % 3 == 1 else rng.choice(["only_first", "longest_first"])
            a, b = (questions, contexts) if kw["truncation"] == "only_second" else (contexts, questions)
            done += _check(hf, fast, (a, b), kw, (trial, "pairs"))
            if kw["padding"]:
                t = dict(kw, return_tensors="np")
                done += _check(hf, fast, (a, b), t, (trial, "np"))
    assert done > 60


def test_overflow_without_truncation_and_errors(pair):
    hf, fast = pair
    kw = dict(return_overflowing_tokens=True, stride=2)
    for args in (("one two",), (["one", "two three"],), ("q", "one two")):
        _check(hf, fast, args, kw, args)
    # max_length alone truncates, but not with padding (transformers' default); max_length = the special
    # tokens: nothing kept, the whole text overflows
    for kw in (dict(max_length=3), dict(max_length=3, padding="max_length"), dict(max_length=3, padding=True),
               dict(max_length=3, padding="max_length", return_overflowing_tokens=True),
               dict(max_length=2, truncation=True, return_overflowing_tokens=True, stride=1),
               dict(max_length=2, truncation=True), dict(max_length=4, padding="max_length", padding_side="left",
                                                         return_offsets_mapping=True, return_length=True),
               dict(max_length=3, padding="max_length", pad_to_multiple_of=4, return_special_tokens_mask=True)):
        _check(hf, fast, (["", "a b c d e"],), kw, kw)
        if kw["max_length"] >= 3:  # below the 3 special tokens of a pair fastbert raises (HF logs and goes on)
            _check(hf, fast, (["a b c d e"], ["x"]), kw, kw)
    for kw in (dict(max_length=3, stride=1), dict(max_length=3, stride=2), dict(max_length=6, stride=4),
               dict(max_length=4, stride=2, add_special_tokens=False),
               dict(max_length=4, stride=3, add_special_tokens=False),
               dict(max_length=3, stride=9, truncation=False)):
        kw = dict(dict(truncation=True), **kw)
        _check(hf, fast, (["a b c d e", "x"],), kw, kw)  # stride without overflow: HF's checks still apply
        _check(hf, fast, (["a b c d e", "x"], ["y", "z"]), kw, kw)
    with pytest.raises(ValueError, match="truncation=True"):
        fast(["", "a b c d e"], max_length=4, padding="max_length", return_tensors="np")
    with pytest.raises(ValueError, match="stride"):
        fast("one two three four five six", max_length=6, truncation=True, stride=4, return_overflowing_tokens=True)
    for a, b, n, s in (("a b c d e f g", "one two three four five", 9, 1), ("a b c d e f g", "one two", 8, 0)):
        _check(hf, fast, (a, b), dict(max_length=n, stride=s, truncation=True, return_overflowing_tokens=True), a)
    with pytest.raises(TypeError, match="list of words"):
        fast("not a list", is_split_into_words=True)
    with pytest.raises(ValueError, match="stride"):
        fast("x", stride=-1)
    enc = fast(["one two three four five six seven"] * 2, max_length=6, truncation=True, stride=1,
               return_overflowing_tokens=True, padding=True, return_tensors="pt")
    assert enc["overflow_to_sample_mapping"].tolist() == [0, 0, 1, 1]
    assert np.array_equal(enc["input_ids"].numpy()[:2], enc["input_ids"].numpy()[2:])


def test_truncation_side_left_matches_hf(minilm_dir):
    """truncation_side='left' keeps the last tokens: plain calls (the C++ core), pairs with each strategy,
    overflowing windows counted from the end, words; as an init option and set on the instance."""
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir, truncation_side="left")
    fast = BertTokenizer.from_pretrained(minilm_dir, truncation_side="left")
    rng = random.Random(23)
    done = 0
    for trial in range(30):
        n = rng.randint(1, 4)
        a = [_fuzz.random_text(rng) * rng.randint(1, 3) for _ in range(n)]
        b = [_fuzz.random_text(rng) for _ in range(n)]
        kw = dict(max_length=rng.choice([8, 16, 32]), return_offsets_mapping=True, padding=rng.random() < 0.5,
                  truncation=rng.choice([True, "only_first", "only_second"]))
        if trial % 2:
            kw.update(stride=rng.choice([0, 1, 3]), return_overflowing_tokens=True)
        done += _check(hf, fast, (a, b), kw, (trial, "pairs"))
        if kw["truncation"] != "only_second":
            done += _check(hf, fast, (a,), kw, (trial, "single"))
            w = dict(kw, is_split_into_words=True)
            done += _check(hf, fast, ([t.split(" ") for t in a],), w, (trial, "words"))
    assert done > 40
    fast.truncation_side = hf.truncation_side = "right"
    _check(hf, fast, (["a b c d e f g"],), dict(max_length=5, truncation=True), "back to right")
    with pytest.raises(ValueError, match="truncation_side"):
        BertTokenizer.from_pretrained(minilm_dir, truncation_side="middle")
