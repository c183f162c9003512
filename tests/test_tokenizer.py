"""fastbert.BertTokenizer against Hugging Face, API and edge cases (the big corpus runs are in
test_tokenizer_corpus.py, every code point in test_tokenizer_unicode.py).

References: ``transformers.BertTokenizer.from_pretrained`` (transformers >= 5: the Rust `tokenizers`
pipeline) on the MiniLM directory, and ``tokenizers.BertWordPieceTokenizer`` for the Chinese vocab.
"""
import random
import time

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from fastbert.tokenization_bert import BertTokenizer  # noqa: E402

# Short real snippets (from Debian's fortunes, manpages-zh/-ja/-de/-ru, and emoji), plus hostile ones.
SAMPLES = [
    "Hello , world! don't do it. I'm here ; unaffable [MASK] x",
    "The quick brown fox jumps over the lazy dog.\tTabs\nnewlines\r\nand   spaces",
    "Ünïcödé àccents: café, naïve, façade, Ærøskøbing, İstanbul, ǅemal, ΟΔΥΣΣΕΥΣ",
    "中文分词测试：这是一个句子。人工智能（AI）正在改变世界！",
    "日本語のテキスト、カタカナとひらがな。東京都は晴れです。",
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Grüße aus München – „Anführungszeichen“ und ß.",
    "emoji 🥰😀👍🏽 family 👨‍👩‍👧 flags 🇩🇪 and text",
    "control\x00chars\x07bell\x1b[0m escape\u200bzero\u00adsoft\ufffdrepl",
    "a[SEP]b [CLS]c[PAD] [UNK]d [MASK][MASK]",
    "",
    "   ",
    "x" * 120 + " supercalifragilisticexpialidocious " + "ab" * 60,
    "\U0002B81E\U0002B820\U0002B920 \u0378 \U000E0001 \ue000",
]


@pytest.fixture(scope="module")
def fast(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def hf(minilm_dir):
    return transformers.BertTokenizer.from_pretrained(str(minilm_dir))


def _data(enc):
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(enc).items()}


MODES = [
    {},
    {"padding": True},
    {"padding": "max_length", "max_length": 24, "truncation": True},
    {"truncation": True, "max_length": 9},
    {"truncation": "only_first", "max_length": 40},
    {"truncation": "longest_first", "max_length": 5},
    {"padding": "longest", "pad_to_multiple_of": 8},
    {"add_special_tokens": False, "padding": True},
    {"return_offsets_mapping": True, "return_special_tokens_mask": True, "padding": True, "return_length": True},
]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()) or "default")
def test_modes_match_hf(fast, hf, mode):
    rng = random.Random(len(str(mode)))
    texts = SAMPLES[:]
    rng.shuffle(texts)
    pairs = [rng.choice(SAMPLES) for _ in texts]
    # single texts, single pairs, batches, batches of pairs
    assert _data(fast(texts[0], **mode)) == _data(hf(texts[0], **mode))
    assert _data(fast(texts[1], pairs[1], **mode)) == _data(hf(texts[1], pairs[1], **mode))
    assert _data(fast(texts, **mode)) == _data(hf(texts, **mode))
    if mode.get("truncation") != "only_first":  # HF errors on too-short firsts; tested separately
        assert _data(fast(texts, pairs, **mode)) == _data(hf(texts, pairs, **mode))


@pytest.mark.parametrize("strategy", ["longest_first", "only_second"])
def test_pair_truncation_lengths(fast, hf, strategy):
    """Every split of pair lengths around max_length, against HF's truncation arithmetic."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    for n1 in range(0, 9, 2):
        for n2 in range(0, 9, 3):
            a, b = " ".join(words[:n1]), " ".join(words[:n2])
            for max_length in (5, 6, 9, 12):
                try:
                    ref = _data(hf(a, b, truncation=strategy, max_length=max_length))
                except Exception:
                    with pytest.raises(ValueError):
                        fast(a, b, truncation=strategy, max_length=max_length)
                    continue
                assert _data(fast(a, b, truncation=strategy, max_length=max_length)) == ref, (n1, n2, max_length)


def test_tensors_and_model_inputs(fast, hf):
    texts = SAMPLES[:6]
    a = fast(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    b = hf(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert set(a) == set(b)
    for k in b:
        assert a[k].dtype == b[k].dtype == torch.int64
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a.input_ids, a["input_ids"])  # attribute access like BatchEncoding
    n = fast(texts, padding=True, return_tensors="np")
    assert isinstance(n["input_ids"], np.ndarray) and n["input_ids"].shape == a["input_ids"].shape[:1] + n["input_ids"].shape[1:]
    one = fast(texts[0], return_tensors="pt")
    assert one["input_ids"].shape == (1, len(hf(texts[0])["input_ids"]))
    with pytest.raises(ValueError, match="padding=True"):
        fast(["a b c", "d"], return_tensors="pt")


def test_tokenize_encode_decode(fast, hf):
    for s in SAMPLES:
        assert fast.tokenize(s) == hf.tokenize(s)
        ids = hf.encode(s)
        assert fast.encode(s) == ids
        assert fast.decode(ids) == hf.decode(ids)
        assert fast.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    batch = hf(SAMPLES[:5], padding=True)["input_ids"]
    assert fast.batch_decode(batch, skip_special_tokens=True) == hf.batch_decode(batch, skip_special_tokens=True)
    assert fast.batch_decode(torch.tensor(batch)) == hf.batch_decode(batch)


def test_vocab_and_special_tokens(fast, hf):
    assert fast.vocab_size == hf.vocab_size == len(fast)
    for name in ("unk", "sep", "pad", "cls", "mask"):
        assert getattr(fast, f"{name}_token") == getattr(hf, f"{name}_token")
        assert getattr(fast, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert sorted(fast.all_special_ids) == sorted(hf.all_special_ids)
    toks = ["hello", "##ing", "[CLS]", "not-a-token-at-all"]
    assert fast.convert_tokens_to_ids(toks) == hf.convert_tokens_to_ids(toks)
    assert fast.convert_tokens_to_ids("hello") == hf.convert_tokens_to_ids("hello")
    ids = [101, 7592, 2088, 102, 0]
    assert fast.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert fast.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert fast.convert_ids_to_tokens(7592) == "hello"
    assert fast.model_max_length == hf.model_max_length == 512
    assert fast.get_vocab() == hf.get_vocab()
    with pytest.raises(IndexError, match="out of range"):
        fast.convert_ids_to_tokens([fast.vocab_size])


def test_chinese_vocab_matches_tokenizers(chinese_vocab):
    fast = BertTokenizer(chinese_vocab)
    ref = tokenizers.BertWordPieceTokenizer(str(chinese_vocab), lowercase=True)
    enc = fast(SAMPLES, SAMPLES[::-1], return_offsets_mapping=True)
    refs = ref.encode_batch(list(zip(SAMPLES, SAMPLES[::-1])))
    for i, r in enumerate(refs):
        assert enc["input_ids"][i] == r.ids
        assert enc["token_type_ids"][i] == r.type_ids
        assert enc["offset_mapping"][i] == r.offsets


@pytest.mark.parametrize("lower,strip,cjk", [(False, False, True), (True, False, True), (False, True, False)])
def test_options_match_tokenizers(minilm_dir, lower, strip, cjk):
    vocab = str(minilm_dir / "vocab.txt")
    fast = BertTokenizer(vocab, do_lower_case=lower, strip_accents=strip, tokenize_chinese_chars=cjk)
    ref = tokenizers.BertWordPieceTokenizer(vocab, lowercase=lower, strip_accents=strip, handle_chinese_chars=cjk)
    enc = fast(SAMPLES, return_offsets_mapping=True)
    for i, r in enumerate(ref.encode_batch(SAMPLES)):
        assert enc["input_ids"][i] == r.ids, SAMPLES[i]
        assert enc["offset_mapping"][i] == r.offsets, SAMPLES[i]


def test_packed_output(fast, hf):
    texts = SAMPLES[:7]
    pairs = SAMPLES[7:14]
    p = fast.encode_packed(texts, pairs, max_length=20)
    ref = hf(texts, pairs, truncation=True, max_length=20)
    lens = [len(x) for x in ref["input_ids"]]
    assert p["input_ids"].dtype == torch.int64 and p["input_ids"].shape == (sum(lens),)
    assert p["cu_seqlens"].dtype == torch.int32
    assert p["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(lens)]).tolist()
    assert p["max_seqlen"] == max(lens)
    assert p["input_ids"].tolist() == sum(ref["input_ids"], [])
    assert p["token_type_ids"].tolist() == sum(ref["token_type_ids"], [])
    single = fast.encode_packed("one text only", return_tensors="np")
    assert single["cu_seqlens"].tolist() == [0, len(hf("one text only")["input_ids"])]


def test_from_pretrained_config(tmp_path, minilm_dir):
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        '{"do_lower_case": false, "model_max_length": 77, "never_split": ["Keep.Me"], '
        '"mask_token": {"content": "[MASK]", "lstrip": false}}')
    tok = BertTokenizer.from_pretrained(tmp_path)
    assert not tok.do_lower_case and tok.model_max_length == 77
    assert tok.tokenize("Hello Keep.Me") == ["[UNK]", "[UNK]"]  # cased text in an uncased vocab; Keep.Me kept whole
    assert len(tok("word " * 200, truncation=True)["input_ids"]) == 77
    assert BertTokenizer.from_pretrained(tmp_path / "vocab.txt").do_lower_case  # a bare vocab file: defaults


def test_bad_input(fast):
    with pytest.raises(ValueError, match="`text` or `text_target`"):  # as HF
        fast(None)
    with pytest.raises(TypeError, match=r"text\[1\] is NoneType"):
        fast(["ok", None])
    with pytest.raises(TypeError, match=r"text\[0\] is int"):
        fast([3])
    with pytest.raises(ValueError, match=r"text\[1\] is bytes that are not valid UTF-8"):
        fast(["ok", b"caf\xe9"])
    assert fast([b"caf\xc3\xa9"])["input_ids"] == fast(["café"])["input_ids"]  # UTF-8 bytes are decoded
    with pytest.raises(ValueError, match="lone surrogate"):
        fast(["a\ud800b"])
    with pytest.raises(ValueError, match="smaller than the 2 special tokens"):
        fast("some text", truncation=True, max_length=1)
    with pytest.raises(ValueError, match="smaller than the 3 special tokens"):
        fast("some text", "pair", truncation=True, max_length=2)
    with pytest.raises(ValueError, match="too short"):
        fast("a", "b c d e f", truncation="only_first", max_length=4)
    with pytest.raises(ValueError, match="text pairs"):
        fast(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="padding"):
        fast("a", padding="sideways")
    with pytest.raises(TypeError, match="both"):
        fast(["a"], "b")
    assert fast("")["input_ids"] == [fast.cls_token_id, fast.sep_token_id]  # empty string: just specials
    assert fast([])["input_ids"] == []


def test_bad_vocab_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab file not found"):
        BertTokenizer(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        BertTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        BertTokenizer(empty)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"[UNK]\ncaf\xe9\n")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        BertTokenizer(latin1)
    no_unk = tmp_path / "no_unk.txt"
    no_unk.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=r"unknown token '\[UNK\]' is not in the vocabulary"):
        BertTokenizer(no_unk)
    (tmp_path / "vocab.txt").write_text("[UNK]\nhello\n")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path)
    only_unk = BertTokenizer(tmp_path / "vocab.txt")  # no [CLS]/[SEP]: works without special tokens
    assert only_unk("hello there", add_special_tokens=False)["input_ids"] == [1, 0]
    with pytest.raises(ValueError, match="add_special_tokens=False"):
        only_unk("hello")


def _best_time(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_linear_time_long_word_and_text(minilm_dir):
    """A 100k-character word through LinMaxMatch (max_input_chars_per_word lifted) and a 10 MB single text:
    10x the input must cost far less than 100x the time (quadratic), and results must match HF."""
    tok = BertTokenizer(minilm_dir / "vocab.txt", max_input_chars_per_word=10**9)
    rng = random.Random(0)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000))
    t_small = _best_time(lambda: tok.tokenize(word[:10_000]))
    t_big = _best_time(lambda: tok.tokenize(word))
    assert t_big < 50 * max(t_small, 5e-4), (t_small, t_big)  # quadratic would be ~100x
    ref = tokenizers.Tokenizer(tokenizers.models.WordPiece.from_file(str(minilm_dir / "vocab.txt"),
                                                                      max_input_chars_per_word=10**9))
    # (HF's own WordPiece is super-linear in the word length: 2,000 characters already take it ~0.3 s)
    assert tok.encode(word[:2_000], add_special_tokens=False) == ref.encode(word[:2_000]).ids
    # the default limit (100 characters) makes such a word one [UNK], as in HF
    assert BertTokenizer(minilm_dir / "vocab.txt").tokenize(word) == ["[UNK]"]
    sentence = "The quick brown fox jumps over the lazy dog; café 中文 Straße, 1234. "
    big = sentence * (10_000_000 // len(sentence.encode()))
    t1 = _best_time(lambda: tok.encode(big[: len(big) // 10]), repeat=2)
    t10 = _best_time(lambda: tok.encode(big), repeat=1)
    assert t10 < 40 * t1, (t1, t10)
    ids = tok.encode(big, add_special_tokens=False)
    assert ids == tok.encode(sentence, add_special_tokens=False) * (len(big) // len(sentence))


def test_thread_safe_concurrent_calls(fast):
    """One tokenizer used from several Python threads at once (the GIL is released inside) gives the
    same results as sequential calls."""
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(7)
    batches = [[rng.choice(SAMPLES) + " " + rng.choice(SAMPLES) for _ in range(rng.randint(1, 60))] for _ in range(24)]
    expected = [fast(b, return_offsets_mapping=True, num_threads=2) for b in batches]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda b: fast(b, return_offsets_mapping=True, num_threads=2), batches))
    for e, g in zip(expected, got):
        assert _data(e) == _data(g)
