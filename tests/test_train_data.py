"""Pre-training data: masking statistics, whole-word masking, NSP balance, determinism, packing, bad input.

The corpus is a real one: the first 30 KB of Debian's `fortunes` package, file `science`
(tests/data/fortunes_science.txt)."""
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbert import BertConfig
from fastbert.train.data import (IGNORE_INDEX, PretrainingStream, SpecialIds, check_vocab_matches, collate_packed,
                                 load_tokenizer, mask_tokens, packed_to_padded, read_vocab, split_sentences)

CORPUS = Path(__file__).parent / "data" / "fortunes_science.txt"


@pytest.fixture(scope="module")
def tok_vocab(minilm_dir):
    return load_tokenizer(minilm_dir), read_vocab(minilm_dir)


def _stream(tok_vocab, **kw):
    tok, vocab = tok_vocab
    kw.setdefault("max_seq_length", 64)
    return PretrainingStream([CORPUS], tok, vocab, seed=kw.pop("seed", 3), **kw)


def _take(stream, n, start=0):
    return [inst for _, inst in itertools.islice(stream.instances(start), n)]


def test_masking_statistics(tok_vocab):
    tok, vocab = tok_vocab
    sp = SpecialIds(tok, vocab)
    insts = _take(_stream(tok_vocab), 400)
    n_cand = n_masked = n_mask_tok = n_same = n_rand = 0
    for inst in insts:
        m = inst.labels != IGNORE_INDEX
        orig = np.where(m, inst.labels, inst.input_ids)
        special = np.isin(orig, [sp.cls, sp.sep, sp.pad])
        assert not (m & special).any(), "a special token was masked"
        assert (orig[special] == inst.input_ids[special]).all()
        n_cand += int((~special).sum())
        n_masked += int(m.sum())
        n_mask_tok += int((inst.input_ids[m] == sp.mask).sum())
        n_same += int((inst.input_ids[m] == inst.labels[m]).sum())
        n_rand += int(((inst.input_ids[m] != sp.mask) & (inst.input_ids[m] != inst.labels[m])).sum())
        assert ((inst.input_ids == sp.cls).sum(), (inst.input_ids == sp.sep).sum()) == (1, 2)
        assert inst.input_ids.size <= 64
    assert abs(n_masked / n_cand - 0.15) < 0.01
    assert abs(n_mask_tok / n_masked - 0.8) < 0.03
    assert abs(n_rand / n_masked - 0.1) < 0.025   # a random token can equal the original: counted as "same"
    assert abs(n_same / n_masked - 0.1) < 0.025


def test_nsp_balance_and_segments(tok_vocab):
    tok, _ = tok_vocab
    insts = _take(_stream(tok_vocab), 400)
    frac = np.mean([i.next_sentence_label for i in insts])
    assert 0.4 < frac < 0.6, frac
    for inst in insts:  # token types: 0 for [CLS] A [SEP], 1 for B [SEP]
        seps = np.flatnonzero(np.where(inst.labels != IGNORE_INDEX, inst.labels, inst.input_ids) == tok.sep_token_id)
        assert (inst.token_type_ids[: seps[0] + 1] == 0).all() and (inst.token_type_ids[seps[0] + 1:] == 1).all()


def test_whole_word_masking(tok_vocab):
    tok, vocab = tok_vocab
    sp = SpecialIds(tok, vocab)
    ids = np.array([tok.cls_token_id] + tok.convert_tokens_to_ids(
        tok.tokenize("unbelievably photosynthesis electroencephalography is antidisestablishmentarianism")
    ) + [tok.sep_token_id])
    assert sp.is_continuation[ids].sum() >= 4
    for seed in range(50):
        _, labels = mask_tokens(ids, sp, np.random.default_rng(seed), 0.3, whole_word=True)
        m = labels != IGNORE_INDEX
        for j in range(2, ids.size - 1):  # a continuation piece is masked iff the piece before it is
            if sp.is_continuation[ids[j]]:
                assert m[j] == m[j - 1]


def test_stream_is_deterministic_and_resumable(tok_vocab):
    a = _take(_stream(tok_vocab), 60)
    b = _take(_stream(tok_vocab), 25, start=35)  # fast-forward, as a resumed run does
    for x, y in zip(a[35:], b):
        assert (x.input_ids == y.input_ids).all() and (x.labels == y.labels).all()
        assert x.next_sentence_label == y.next_sentence_label
    c = _take(_stream(tok_vocab, seed=4), 60)
    assert any((x.labels != y.labels).any() for x, y in zip(a, c) if x.labels.size == y.labels.size)


def test_epochs_remask(tok_vocab, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text(CORPUS.read_text()[:3000])
    s = _stream(tok_vocab)
    s.files = [small]
    first = list(itertools.islice(s._pairs(0), 100))
    n = len(first)
    insts = _take(s, 2 * n)  # epoch 0 then epoch 1: new pairs and new masks
    assert any(x.input_ids.size != y.input_ids.size or (x.labels != y.labels).any()
               for x, y in zip(insts[:n], insts[n:]))


def test_packed_batch_matches_padded(tok_vocab):
    insts = _take(_stream(tok_vocab), 5)
    packed = collate_packed(insts)
    assert packed["cu_seqlens"].tolist() == [0] + list(np.cumsum([i.input_ids.size for i in insts]))
    padded = packed_to_padded(packed)
    mask = padded["attention_mask"].bool()
    assert torch.equal(padded["input_ids"][mask], packed["input_ids"])
    assert torch.equal(padded["labels"][mask], packed["labels"])
    assert (padded["labels"][~mask] == IGNORE_INDEX).all()
    # the masked positions, found on the host (the loss selects them without a nonzero on the GPU)
    assert packed["mlm_index"].dtype == torch.int64 and packed["mlm_index"].numel() > 0
    assert torch.equal(packed["mlm_index"], torch.nonzero(packed["labels"] != IGNORE_INDEX).squeeze(1))


def test_long_line_is_cut_not_dropped(tok_vocab, tmp_path):
    tok, _ = tok_vocab
    f = tmp_path / "long.txt"
    words = " ".join(f"word{i}" for i in range(400))  # one 'sentence' of ~1200 pieces, far past 64
    f.write_text(f"{words}\n\nA short one. Another short one. And a third.\n\n{words}\n")
    insts = _take(PretrainingStream([f], tok, tok_vocab[1], max_seq_length=64, seed=0, doc_format="blank"), 30)
    assert all(i.input_ids.size <= 64 for i in insts)


def test_sentence_split():
    assert split_sentences("It works. Does it? Yes! \"Really.\" ok") == ["It works.", "Does it?", "Yes!",
                                                                         "\"Really.\"", "ok"]


# -- bad input ---------------------------------------------------------------------------------------
def test_empty_corpus(tok_vocab, tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="corpus is empty"):
        next(_stream(tok_vocab, max_seq_length=64).__class__([f], *tok_vocab, max_seq_length=64).instances())


def test_missing_files(tok_vocab, tmp_path):
    with pytest.raises(FileNotFoundError, match="no text files"):
        PretrainingStream([tmp_path / "nope.txt"], *tok_vocab)


def test_sequence_longer_than_model(tok_vocab):
    with pytest.raises(ValueError, match="longer than the model allows"):
        PretrainingStream([CORPUS], *tok_vocab, max_seq_length=1024, max_position_embeddings=512)


def test_vocab_mismatch(tok_vocab):
    with pytest.raises(ValueError, match="vocab_size=1000 but the tokenizer has 30522"):
        check_vocab_matches(BertConfig(vocab_size=1000), tok_vocab[0])
