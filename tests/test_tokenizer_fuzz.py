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
    res = fuzz_tokenizer.fuzz(1500, seed=20261124, log=None)
    assert res["tokenizers"] == ["minilm-uncased", "minilm-cased", "chinese-uncased", "chinese-cased"]
    assert res["mismatches"] == 0, res["examples"]


def test_canonical_reordering_offsets(minilm_dir):
    """NFD moves U+302D (class 222) before U+302F (224); HF's alignments stay positional, so "x" + U+302F
    keeps (0, 3) once U+302D (Mn) is dropped: the example of issue 13."""
    from fastbert.tokenization_bert import BertTokenizer
    tok = BertTokenizer.from_pretrained(minilm_dir)
    assert tok("x\u302f\u302d.", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] == [
        (0, 3), (3, 4)]
