"""A slice of scripts/fuzz_tokenizer.py: random awkward Unicode (combining marks in every order, controls,
odd spaces, CJK, long words, special-token look-alikes), ids and offsets identical to HF `tokenizers` for
the MiniLM and Chinese vocabs, uncased and cased, single texts and truncated pairs. The full run
(``python scripts/fuzz_tokenizer.py --n 1000000``) is on demand."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

_SPEC = importlib.util.spec_from_file_location("fuzz_tokenizer",
                                               Path(__file__).resolve().parent.parent / "scripts" / "fuzz_tokenizer.py")
fuzz_tokenizer = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fuzz_tokenizer)


def test_fuzz_slice_matches_hf(minilm_dir, chinese_vocab):
    res = fuzz_tokenizer.fuzz(1000, seed=20261124, log=None)
    assert res["tokenizers"] == ["minilm-uncased", "minilm-cased", "chinese-uncased", "chinese-cased",
                                 "minilm-uncased-added", "minilm-cased-added"]
    assert res["mismatches"] == 0, res["examples"]


def test_canonical_reordering_offsets(minilm_dir):
    """NFD moves U+302D (class 222) before U+302F (224); HF's alignments stay positional, so "x" + U+302F
    keeps (0, 3) once U+302D (Mn) is dropped: the example of issue 13."""
    from fastbert.tokenization_bert import BertTokenizer
    tok = BertTokenizer.from_pretrained(minilm_dir)
    assert tok("x\u302f\u302d.", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] == [
        (0, 3), (3, 4)]


def test_combining_classes_hf_knows(minilm_dir):
    """Every code point with a combining class (for the building Python), after U+0345 (class 240): HF
    reorders it when its NFD knows the class (Unicode 9.0), else it is a starter. Offsets must agree."""
    import unicodedata

    tokenizers = pytest.importorskip("tokenizers")
    from fastbert.tokenization_bert import BertTokenizer

    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and unicodedata.combining(chr(cp))]
    texts = ["x\u0345" + chr(cp) + " y\u302f" + chr(cp) + "\u0316" for cp in cps]
    vocab = str(minilm_dir / "vocab.txt")
    ref = tokenizers.BertWordPieceTokenizer(vocab).encode_batch(texts)
    got = BertTokenizer(vocab)(texts, return_offsets_mapping=True)
    bad = [hex(cp) for cp, r, ids, offs in zip(cps, ref, got["input_ids"], got["offset_mapping"])
           if (r.ids, [tuple(o) for o in r.offsets]) != (ids, offs)]
    assert not bad, bad
