"""add_tokens / add_special_tokens against transformers' BertTokenizer(Fast) (the tokenizers backend), on
fresh random texts (the fuzzer's awkward Unicode) with the added tokens inserted in random spellings:
ids, offsets, special tokens mask, word ids, pairs, split_special_tokens, decode, the vocabulary views,
save_pretrained / from_pretrained (both ways), pickling."""
import importlib.util
import pickle
import random
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from fastbert.tokenization_bert import BertTokenizer  # noqa: E402

_SPEC = importlib.util.spec_from_file_location("fuzz_tokenizer",
                                               Path(__file__).resolve().parent.parent / "scripts" / "fuzz_tokenizer.py")
_fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_fuzz)

# normalized (plain) tokens: capitals, accents, CJK (HF pads it with spaces), inner spaces, punctuation, one
# already in the vocabulary, one that is a prefix of another. Not two that normalize alike ("NewTok" and
# "newtok" uncased): HF's pick among those follows a Rust HashMap's order, which changes from run to run.
PLAIN = ["NewTok", "hello", "Ünïcode", "中x", "a b", "foo-bar", "NewTokLonger", "ẞig", "x.y"]
SPECIAL = ["SpecX", "<ent>", "[E1]"]       # add_tokens(special_tokens=True): matched verbatim
EXTRA = ["<obj>", "[E2]"]                   # add_special_tokens({"additional_special_tokens": ...})


def _add(tok):
    n = tok.add_tokens(PLAIN)
    n += tok.add_tokens(SPECIAL, special_tokens=True)
    n += tok.add_special_tokens({"additional_special_tokens": EXTRA})
    return n


def _spell(rng, t):
    k = rng.random()
    return t.upper() if k < 0.2 else t.lower() if k < 0.4 else t.title() if k < 0.5 else t


def _texts(seed, n=60):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [_fuzz.random_text(rng)[:40]]
        for _ in range(rng.randint(0, 6)):
            parts.append(_spell(rng, rng.choice(PLAIN + SPECIAL + EXTRA)))
            parts.append(_fuzz.random_text(rng)[:20] if rng.random() < 0.5 else rng.choice(["", " ", "x", "中"]))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module", params=["uncased", "cased"])
def pair(request, minilm_dir):
    kw = {} if request.param == "uncased" else dict(do_lower_case=False, strip_accents=False)
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir, **kw)
    fast = BertTokenizer.from_pretrained(minilm_dir, **kw)
    assert _add(hf) == _add(fast)
    return hf, fast


def _check(hf, fast, texts, pairs=None, **kw):
    kw = dict(return_offsets_mapping=True, return_special_tokens_mask=True, **kw)
    ref = hf(texts, pairs, **kw) if pairs is not None else hf(texts, **kw)
    got = fast(texts, pairs, **kw) if pairs is not None else fast(texts, **kw)
    for k in ref:
        for i, (a, b) in enumerate(zip(ref[k], got[k])):
            assert a == b, (k, i, texts[i], a, b)
    assert dict(got) == dict(ref)
    for i in range(len(texts)):
        assert got.word_ids(i) == ref.word_ids(i), texts[i]
    return ref


def test_vocabulary_views(pair):
    hf, fast = pair
    assert len(fast) == len(hf) and fast.vocab_size == hf.vocab_size
    assert fast.get_vocab() == hf.get_vocab()
    assert fast.get_added_vocab() == hf.get_added_vocab()
    ids = list(range(hf.vocab_size - 3, len(hf) + 0)) + [hf.get_vocab()["hello"]]
    assert fast.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    toks = PLAIN + SPECIAL + EXTRA + ["NEWTOK", "zzzz"]
    assert fast.convert_tokens_to_ids(toks) == hf.convert_tokens_to_ids(toks)
    assert fast.all_special_tokens == hf.all_special_tokens
    assert fast.all_special_ids == hf.all_special_ids
    assert fast.add_tokens(PLAIN[:3]) == hf.add_tokens(PLAIN[:3]) == 0  # already there
    assert fast.add_tokens([]) == 0 and fast.add_tokens("") == 0


def test_added_tokens_match_hf_on_random_texts(pair):
    hf, fast = pair
    texts = _texts(11)
    _check(hf, fast, texts)
    _check(hf, fast, texts, _texts(12), truncation="longest_first", max_length=40, padding=True)
    _check(hf, fast, texts, split_special_tokens=True)
    for t in texts[:20]:
        ids = hf(t)["input_ids"]
        assert fast.tokenize(t) == hf.tokenize(t)
        assert fast.decode(ids) == hf.decode(ids)
        assert fast.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_save_and_reload_keep_added_tokens(tmp_path, pair):
    hf, fast = pair
    texts = _texts(13, 30)
    fast.save_pretrained(tmp_path / "fast")
    back = BertTokenizer.from_pretrained(tmp_path / "fast")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "fast")
    hf.save_pretrained(tmp_path / "hf")  # transformers 5 writes tokenizer.json only
    from_hf = BertTokenizer.from_pretrained(tmp_path / "hf")
    ref = _check(hf, fast, texts)
    for other in (back, from_hf, pickle.loads(pickle.dumps(fast))):
        assert len(other) == len(hf) and other.get_vocab() == hf.get_vocab()
        assert dict(other(texts, return_offsets_mapping=True, return_special_tokens_mask=True)) == dict(ref)
        assert other.all_special_ids == hf.all_special_ids
    assert len(again) == len(hf)
    assert dict(again(texts, return_offsets_mapping=True, return_special_tokens_mask=True)) == dict(ref)


def test_unsupported_flags_raise(minilm_dir):
    tokenizers = pytest.importorskip("tokenizers")
    fast = BertTokenizer.from_pretrained(minilm_dir)
    for flag in ("lstrip", "rstrip", "single_word"):
        with pytest.raises(NotImplementedError, match=flag):
            fast.add_tokens([tokenizers.AddedToken("abc", **{flag: True})])
    with pytest.raises(ValueError, match="not a valid special token"):
        fast.add_special_tokens({"foo_token": "x"})
    with pytest.raises(TypeError):
        fast.add_tokens([3])


def test_added_token_objects_and_decode_quirks(minilm_dir):
    """AddedToken objects: special ones default to verbatim unless normalized=True was set; decode's
    skip_special_tokens drops a token whose string is a special content (so not a normalized special
    token, whose string is its normalized form: HF's own quirk); encode() on a list of words."""
    tokenizers = pytest.importorskip("tokenizers")
    out = []
    for tok in (transformers.BertTokenizerFast.from_pretrained(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)):
        n = (tok.add_tokens([tokenizers.AddedToken("ZqW")], special_tokens=True)
             + tok.add_tokens([tokenizers.AddedToken("QqQ", normalized=False)])
             + tok.add_special_tokens({"mask_token": tokenizers.AddedToken("<M>", normalized=True)})
             + tok.add_tokens(tokenizers.AddedToken("Rr", special=True)))
        text = "zqw ZqW qqq QqQ <m> <M> rr Rr [MASK]"
        ids = tok(text)["input_ids"]
        out.append((n, tok.tokenize(text), ids, tok.all_special_tokens, tok.mask_token_id, len(tok),
                    tok.decode(ids), tok.decode(ids, skip_special_tokens=True),
                    tok.encode(["Hello", "Wörld"], is_split_into_words=True)))
    assert out[1] == out[0]


def test_random_added_token_sets_match_hf(minilm_dir):
    """Random added tokens drawn from the fuzzer's pieces (combining marks, CJK, controls, odd spaces...),
    some special, uncased and cased, on texts holding them: ids and offsets. Not drawn: two tokens that
    normalize alike (HashMap order in HF) and the tokenizer's own special tokens re-added as plain tokens
    (HF then stops splitting them out at all; fastbert keeps matching them verbatim)."""
    rng = random.Random(31)
    own = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"}
    for trial in range(12):
        kw = dict(do_lower_case=False, strip_accents=False) if trial % 2 else {}
        hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir, **kw)
        fast = BertTokenizer.from_pretrained(minilm_dir, **kw)
        norm = hf.backend_tokenizer.normalizer.normalize_str
        toks, seen = [], set()
        for _ in range(rng.randint(1, 8)):
            t = (_fuzz._piece(rng).strip() or "q")[:rng.randint(1, 6)]
            if norm(t) and norm(t) not in seen and t not in own:
                seen.add(norm(t))
                toks.append(t)
        toks = toks or ["q"]
        special = [t for t in toks if rng.random() < 0.3]
        for tok in (hf, fast):
            tok.add_tokens([t for t in toks if t not in special])
            tok.add_tokens(special, special_tokens=True)
        texts = []
        for _ in range(25):
            parts = [_fuzz.random_text(rng)[:30]]
            for _ in range(rng.randint(0, 5)):
                x = rng.choice(toks)
                parts += [rng.choice([x, x.upper(), x.lower()]), rng.choice(["", " ", "a", _fuzz.random_text(rng)[:8]])]
            texts.append("".join(parts))
        ref, got = hf(texts, return_offsets_mapping=True), fast(texts, return_offsets_mapping=True)
        for i, t in enumerate(texts):
            assert (got["input_ids"][i], got["offset_mapping"][i]) == (ref["input_ids"][i], ref["offset_mapping"][i]), \
                (toks, special, t)
