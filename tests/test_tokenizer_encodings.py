"""``BatchEncoding.encodings`` against transformers' fast tokenizer (``tokenizers.Encoding``) on fresh random texts
(the fuzzer's awkward Unicode, added tokens among them): every attribute and every alignment method, the nested
``overflowing`` windows, single texts, pairs, ``stride`` + ``return_overflowing_tokens``, ``is_split_into_words``,
padding on either side; the in-place methods (``pad``, ``truncate``, ``set_sequence_id``, ``Encoding.merge``);
built lazily; and without the ``tokenizers`` package."""
import importlib.util
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from fastbert import tokenization_encoding  # noqa: E402
from fastbert.tokenization_bert import BertTokenizer  # noqa: E402
from fastbert.tokenization_encoding import Encoding  # noqa: E402

_SPEC = importlib.util.spec_from_file_location("fuzz_tokenizer",
                                               Path(__file__).resolve().parent.parent / "scripts" / "fuzz_tokenizer.py")
_fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_fuzz)

ATTRIBUTES = ("ids", "type_ids", "tokens", "offsets", "attention_mask", "special_tokens_mask", "word_ids", "words",
              "sequence_ids", "n_sequences")


@pytest.fixture(scope="module")
def pair(minilm_dir):
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    fast = BertTokenizer.from_pretrained(minilm_dir)
    for t in (hf, fast):
        t.add_tokens(["NewTok", "hello"])
        t.add_tokens(["<ent>"], special_tokens=True)
    return hf, fast


def _texts(rng, n):
    return [_fuzz.random_text(rng) + rng.choice(["", " NewTok", " <ent>x", " Hello"]) for _ in range(n)]


def _alignment(e):
    """The alignment answers of one encoding: every token index (and past the end), the character and word
    indices of the first tokens and a fixed sample of the others (and past the end)."""
    n = len(e)
    last_char = max((b for _, b in e.offsets), default=0) + 2
    chars = sorted(set(range(min(last_char, 24))) | set(range(24, last_char, 7)) | {last_char - 1})
    last_word = max((w for w in e.word_ids if w is not None), default=-1) + 2
    words = sorted(set(range(min(last_word, 8))) | set(range(8, last_word, 5)) | {last_word - 1})
    out = {"len": n,
           "token_to_sequence": [e.token_to_sequence(t) for t in range(n + 2)],
           "token_to_word": [e.token_to_word(t) for t in range(n + 2)],
           "token_to_chars": [_t(e.token_to_chars(t)) for t in range(n + 2)]}
    for s in range(3):
        out[f"char_to_token/{s}"] = [e.char_to_token(c, s) for c in chars]
        out[f"char_to_word/{s}"] = [e.char_to_word(c, s) for c in chars]
        out[f"word_to_tokens/{s}"] = [_t(e.word_to_tokens(w, s)) for w in words]
        out[f"word_to_chars/{s}"] = [_t(e.word_to_chars(w, s)) for w in words]
    return out


def _t(x):
    return None if x is None else tuple(x)


def _describe(e, depth=0):
    """An encoding as plain data: attributes, alignment answers and its overflowing encodings, recursively."""
    with pytest.warns(DeprecationWarning, match="word_ids"):  # both say `words` is deprecated
        assert e.words == e.word_ids
    out = {k: [_t(o) for o in getattr(e, k)] if k == "offsets" else getattr(e, k) for k in ATTRIBUTES if k != "words"}
    out.update(_alignment(e))
    out["overflowing"] = [_describe(o, depth + 1) for o in e.overflowing]
    return out


def _same(ref, got, what):
    assert len(got.encodings) == len(ref.encodings), what
    for i, (a, b) in enumerate(zip(ref.encodings, got.encodings)):
        assert isinstance(b, Encoding) and got[i] is b, what
        da, db = _describe(a), _describe(b)
        for key in da:
            assert db[key] == da[key], (what, i, key)


def _call(tok, *args, **kw):
    """The output, or the exception (HF's Rust errors and panics, fastbert's ValueError)."""
    try:
        return tok(*args, **kw)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - both must refuse alike (a Rust panic is a BaseException)
        return e


def _both_refuse(ref, got, what):
    if isinstance(ref, BaseException):
        assert isinstance(got, ValueError), (what, ref, got)
        return True
    assert not isinstance(got, BaseException), (what, got)
    return False


def test_single_texts_and_pairs(pair):
    hf, fast = pair
    rng = random.Random(31)
    for trial in range(8):
        n = rng.randint(1, 6)
        a, b = _texts(rng, n), _texts(rng, n)
        kw = dict(padding=rng.choice([False, True, "max_length"]), return_tensors=rng.choice([None, "pt"]))
        if kw["padding"]:
            kw["padding_side"] = rng.choice(["left", "right"])
        if kw["padding"] == "max_length" or rng.random() < 0.5:
            kw.update(truncation=True, max_length=rng.choice([8, 16, 40]))
        if not kw["padding"]:
            kw["return_tensors"] = None  # ragged rows
        for args in ((a,), (a, b), (a[0],), (a[0], b[0] or "x")):
            ref = _call(hf, *args, **kw)
            got = _call(fast, *args, **kw)
            if _both_refuse(ref, got, (trial, args, kw)):
                continue
            _same(ref, got, (trial, len(args), kw))


def test_overflowing_windows(pair):
    """QA-style windows: asked for (every window a row, and each row's own overflowing), or not (windows only in
    ``overflowing``, nested as tokenizers nests those of a pair when both texts are cut)."""
    hf, fast = pair
    rng = random.Random(32)
    for trial in range(8):
        n = rng.randint(1, 4)
        contexts = [_fuzz.random_text(rng) * rng.randint(1, 3) for _ in range(n)]
        questions = [_fuzz.random_text(rng)[:40] for _ in range(n)]
        kw = dict(max_length=rng.choice([12, 20, 32]), stride=rng.choice([0, 1, 3]),
                  return_overflowing_tokens=trial % 2 == 0, padding=rng.choice([False, True]))
        if kw["padding"]:
            kw["padding_side"] = rng.choice(["left", "right"])
        for args, truncation in (((contexts,), True), ((questions, contexts), "only_second"),
                                 ((contexts, questions), "only_first"), ((contexts, contexts[::-1]), "longest_first")):
            ref = _call(hf, *args, truncation=truncation, **kw)
            got = _call(fast, *args, truncation=truncation, **kw)
            if _both_refuse(ref, got, (trial, truncation, kw)):
                continue
            _same(ref, got, (trial, truncation, kw))
    # a pair cut on both sides: windows of windows
    ref = hf("a b c d e f", "g h i j k l", truncation=True, max_length=7)
    got = fast("a b c d e f", "g h i j k l", truncation=True, max_length=7)
    assert len(got.encodings[0].overflowing) == 8 and len(got.encodings[0].overflowing[0].overflowing) == 2
    _same(ref, got, "both sides")


def test_is_split_into_words(pair):
    hf, fast = pair
    rng = random.Random(33)
    for trial in range(8):
        words = [[w for w in _fuzz.random_text(rng).split(" ")] + ["NewTok"] for _ in range(rng.randint(1, 4))]
        kw = dict(is_split_into_words=True, padding=rng.choice([False, True]))
        if rng.random() < 0.5:
            kw.update(truncation=True, max_length=rng.choice([6, 12, 24]), stride=rng.choice([0, 2]),
                      return_overflowing_tokens=rng.random() < 0.5)
        for args in ((words,), (words, words[::-1]), (words[0],)):
            ref = _call(hf, *args, **kw)
            got = _call(fast, *args, **kw)
            if _both_refuse(ref, got, (trial, kw)):
                continue
            _same(ref, got, (trial, len(args), kw))


def test_in_place_methods_match_tokenizers(pair):
    """pad, truncate, set_sequence_id and Encoding.merge do to fastbert's encodings what tokenizers' do to
    theirs."""
    hf, fast = pair
    rng = random.Random(34)
    a, b = _texts(rng, 6), _texts(rng, 6)
    ref, got = hf(a, b, truncation=True, max_length=24), fast(a, b, truncation=True, max_length=24)
    for i, (x, y) in enumerate(zip(ref.encodings, got.encodings)):
        length, stride = rng.randint(0, 30), rng.randint(0, 3)
        direction = rng.choice(["left", "right"])
        x.pad(length + 5, direction=direction, pad_id=7, pad_type_id=1, pad_token="<p>")
        y.pad(length + 5, direction=direction, pad_id=7, pad_type_id=1, pad_token="<p>")
        assert _describe(y) == _describe(x), ("pad", i)
        if stride < length:
            x.truncate(length, stride=stride, direction=direction)
            y.truncate(length, stride=stride, direction=direction)
            assert _describe(y) == _describe(x), ("truncate", i, length, stride, direction)
        x.set_sequence_id(1)
        y.set_sequence_id(1)
        assert _describe(y) == _describe(x), ("set_sequence_id", i)
    import tokenizers

    for growing in (True, False):
        merged_ref = tokenizers.Encoding.merge(ref.encodings[:3], growing_offsets=growing)
        merged = Encoding.merge(got.encodings[:3], growing_offsets=growing)
        assert _describe(merged) == _describe(merged_ref), growing
    with pytest.raises(ValueError, match="stride"):
        got.encodings[0].truncate(3, stride=3)
    with pytest.raises(OverflowError):
        got.encodings[0].char_to_token(-1)


def test_built_lazily_and_only_once(pair, monkeypatch):
    hf, fast = pair
    calls = []
    build = tokenization_encoding.build_encodings
    monkeypatch.setattr(tokenization_encoding, "build_encodings", lambda *a: calls.append(1) or build(*a))
    enc = fast(["hello world", "a b c"], padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[0] == 2 and enc.word_ids(0) and not calls  # the plain call builds none
    first = enc.encodings
    assert enc.encodings is first and enc[1] is first[1] and len(calls) == 1
    assert enc[0:1] == first[0:1]
    padded = fast.pad({"input_ids": [[1, 2], [3]]})
    ref = hf.pad({"input_ids": [[1, 2], [3]]})
    assert padded.encodings is None and ref.encodings is None  # as HF: pad() output has none
    with pytest.raises(KeyError):
        ref[0]
    with pytest.raises(KeyError):
        padded[0]
    assert padded[0:1] == ref[0:1]
    e = pickle.loads(pickle.dumps(first[0]))
    assert e == first[0] and e.tokens == ["[CLS]", "hello", "world", "[SEP]", "[PAD]"]


_WITHOUT_TOKENIZERS = """
import json, sys
sys.modules["tokenizers"] = None
sys.modules["transformers"] = None
from fastbert.tokenization_bert import BertTokenizer
tok = BertTokenizer.from_pretrained(sys.argv[1])
want = json.loads(sys.argv[2])
enc = tok(want["texts"], truncation=True, max_length=9, stride=2, padding=True)
got = [{"ids": e.ids, "tokens": e.tokens, "offsets": [list(o) for o in e.offsets], "word_ids": e.word_ids,
        "sequence_ids": e.sequence_ids, "overflowing": [o.ids for o in e.overflowing],
        "char_to_token": [e.char_to_token(c) for c in range(12)]} for e in enc.encodings]
assert got == want["encodings"], (got, want["encodings"])
assert "tokenizers" not in sys.modules or sys.modules["tokenizers"] is None
print("ok")
"""


def test_without_tokenizers_installed(minilm_dir):
    """fastbert's Encoding needs neither tokenizers nor transformers: the same values with both blocked."""
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    texts = _texts(random.Random(35), 5)
    ref = hf(texts, truncation=True, max_length=9, stride=2, padding=True)
    want = {"texts": texts, "encodings": [
        {"ids": e.ids, "tokens": e.tokens, "offsets": [list(o) for o in e.offsets], "word_ids": e.word_ids,
         "sequence_ids": e.sequence_ids, "overflowing": [o.ids for o in e.overflowing],
         "char_to_token": [e.char_to_token(c) for c in range(12)]} for e in ref.encodings]}
    out = subprocess.run([sys.executable, "-c", _WITHOUT_TOKENIZERS, str(minilm_dir), json.dumps(want)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
