"""fastbert.SentenceEncoder against sentence-transformers itself on the same directories (the embedded
all-MiniLM-L6-v2 and variants of it): short texts, texts past max_seq_length, CLS / max / mean-sqrt-len
pooling, no Normalize module; the encode conventions; and the `fastbert encode` command line."""
import json
import shutil

import numpy as np
import pytest
import torch

from fastbert import SentenceEncoder
from fastbert.cli import main

st = pytest.importorskip("sentence_transformers")

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "Pineapple on pizza divides opinion.", "¿Dónde está la biblioteca?", "x"]


def _long_text(seed=0):
    rng = np.random.default_rng(seed)
    words = "the of science cookie debian kernel theory quantum apple river idea music".split()
    return " ".join(rng.choice(words, 400))  # ~400 words: far past max_seq_length 256


def _variant(tmp_path, minilm_dir, pooling=None, normalize=True):
    d = tmp_path / f"minilm-{pooling}-{normalize}"
    shutil.copytree(minilm_dir, d)
    if pooling:
        cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
        for k in list(cfg):
            if k.startswith("pooling_mode_"):
                cfg[k] = k == f"pooling_mode_{pooling}"
        (d / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    if not normalize:
        modules = [m for m in json.loads((d / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
        (d / "modules.json").write_text(json.dumps(modules))
    return d


def _compare(model_dir, texts):
    ref = st.SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_tensor=True)
    ours = SentenceEncoder(model_dir, device="cpu", dtype=torch.float32).encode(texts, batch_size=4,
                                                                                convert_to_tensor=True)
    assert ours.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(ours, ref)
    assert cos.min() > 0.99999, cos
    torch.testing.assert_close(ours.norm(dim=-1), ref.norm(dim=-1), rtol=1e-4, atol=1e-5)


def test_embedded_model_matches_sentence_transformers(minilm_dir):
    _compare(minilm_dir, TEXTS + [_long_text(0), _long_text(1)])


@pytest.mark.parametrize("pooling, normalize", [("cls_token", True), ("max_tokens", True),
                                                ("mean_sqrt_len_tokens", True), (None, False)])
def test_pooling_variants_match_sentence_transformers(pooling, normalize, tmp_path, minilm_dir):
    _compare(_variant(tmp_path, minilm_dir, pooling, normalize), TEXTS[:4] + [_long_text(2)])


def test_encode_conventions(minilm_dir):
    enc = SentenceEncoder(minilm_dir, device="cpu", dtype="float32")
    one = enc.encode("A man is eating food.")
    assert isinstance(one, np.ndarray) and one.shape == (384,) and one.dtype == np.float32
    many = enc.encode(TEXTS[:3])
    assert many.shape == (3, 384)
    np.testing.assert_allclose(many[0], one, rtol=1e-5, atol=1e-6)  # order restored after length sorting
    assert enc.encode([]).shape == (0, 384)
    t = enc.encode(TEXTS[:2], convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(t, torch.Tensor) and torch.allclose(t.norm(dim=-1), torch.ones(2))
    sim = enc.similarity(many)
    assert sim.shape == (3, 3) and abs(float(sim[0, 1]) - 0.7553) < 1e-3
    with pytest.raises(TypeError, match="unsupported arguments"):
        enc.encode(TEXTS, prompt_name="query")
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(TEXTS, batch_size=0)
    with pytest.raises(TypeError, match="strings"):
        enc.encode([1, 2])


def test_unsupported_modules_raise(tmp_path, minilm_dir):
    d = _variant(tmp_path, minilm_dir)
    cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
    cfg["pooling_mode_weightedmean_tokens"], cfg["pooling_mode_mean_tokens"] = True, False
    (d / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="weightedmean"):
        SentenceEncoder(d, device="cpu")
    modules = json.loads((d / "modules.json").read_text()) + [
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}]
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(NotImplementedError):
        SentenceEncoder(d, device="cpu")


# ------------------------------------------------------------------------------------------- the CLI


def test_cli_rows_match_lines_and_outputs(tmp_path, capsys):
    lines = [f"sentence number {i} about {w}" for i, w in enumerate("abcdefghijklmnop")]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(lines) + "\n")
    for ext in ("npy", "jsonl", "csv"):
        out = tmp_path / f"emb.{ext}"
        assert main(["encode", "--file", str(f), "--output", str(out)]) == 0
        emb = (np.load(out) if ext == "npy" else np.array([json.loads(l) for l in out.read_text().splitlines()])
               if ext == "jsonl" else np.loadtxt(out, delimiter=","))
        assert emb.shape == (len(lines), 384)
    text = capsys.readouterr().out
    assert "cosine similarity of 16 texts" in text and "[15]" not in text  # a summary, not a 16x16 table
    assert main(["encode", "--no-table", "a", "b"]) == 0
    assert "cosine similarity" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--output", "e.json", "x"], "unknown format"),
    (["--device", "cuda", "x"] if not torch.cuda.is_available() else ["--device", "nonsense", "x"], "device"),
])
def test_cli_one_line_errors(argv, message, capsys):
    assert main(["encode", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("fastbert encode: error:")


def test_cli_blank_line_is_an_error_naming_it(tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text("first\n\nthird\n")
    assert main(["encode", "--file", str(f)]) == 1
    assert f"{f}:2 is a blank line" in capsys.readouterr().err


def test_cli_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--batch-size", "0", "x"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err
