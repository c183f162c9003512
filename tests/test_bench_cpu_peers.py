"""The CPU peers benchmark's own machinery (benchmarks/bench_cpu_peers.py), without the peers: the fidelity
numbers against a brute-force recomputation, the corpus builder on files it is given, and one small run with
sentence-transformers and fastbert on real texts, where a runtime that raises or is not installed becomes a
row, not the end of the run."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbert.benchmarks.bench_cpu_peers import fidelity, markdown, peer_corpus, run, save
from fastbert.benchmarks.cpu_peers import Runtime, Setup, build_fastbert, build_sentence_transformers


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _brute_force(emb, ref):
    """Per-text cosines and NN agreement, one pair at a time in Python floats."""
    def nn(e, i):
        return max((j for j in range(len(e)) if j != i), key=lambda j: _cos(e[i], e[j]))

    e, r = emb.tolist(), ref.tolist()
    return [_cos(a, b) for a, b in zip(e, r)], sum(nn(e, i) == nn(r, i) for i in range(len(e))) / len(e)


def test_fidelity_against_brute_force():
    rng = np.random.default_rng(34)
    ref = rng.standard_normal((40, 8)).astype(np.float32)
    emb = ref + 0.35 * rng.standard_normal(ref.shape).astype(np.float32)  # enough noise to move some neighbours
    f = fidelity(emb, ref)
    cosines, agree = _brute_force(emb, ref)
    assert 0 < agree < 1, "the test data should flip some neighbours and keep others"
    assert f["min_cos"] == pytest.approx(min(cosines), abs=1e-9)
    assert f["mean_cos"] == pytest.approx(sum(cosines) / len(cosines), abs=1e-9)
    assert f["worst_text"] == cosines.index(min(cosines))
    assert f["nn_agreement"] == pytest.approx(agree)
    same = fidelity(ref.copy(), ref)
    assert same["min_cos"] == pytest.approx(1.0, abs=1e-9) and same["nn_agreement"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        fidelity(emb[:-1], ref)
    emb[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fidelity(emb, ref)


def _write_sources(root: Path):
    docs = root / "doc"
    (docs / "pkg-a").mkdir(parents=True)
    (docs / "pkg-b").mkdir()
    paras = [f"Paragraph {i} of the package notes explains option number {i} in some detail." for i in range(70)]
    (docs / "pkg-a" / "README").write_text("\n\n".join(paras[:40]))
    (docs / "pkg-b" / "NEWS.md").write_text("\n\n".join(paras[40:]))
    fortunes = root / "fortunes"
    for lang, word in (("de", "Sprichwort"), ("es", "Refrán"), ("it", "Proverbio")):
        (fortunes / lang).mkdir(parents=True)
        (fortunes / lang / "sprueche").write_text("\n%\n".join(f"{word} Nummer {i}: wer zuletzt lacht, lacht am "
                                                             "besten." for i in range(6)))
        (fortunes / lang / "sprueche.dat").write_bytes(b"\x00\x01binary index")
        (fortunes / lang / "asciiart").write_text("ASCII PICTURE THAT IS NOT PROSE AT ALL\n%\n" * 3)
    return docs, fortunes


def test_peer_corpus_mixes_languages(tmp_path):
    docs, fortunes = _write_sources(tmp_path)
    texts, desc = peer_corpus(12, seed=1, doc_root=docs, fortunes=fortunes)
    assert len(texts) == len(set(texts)) == 12 and all(isinstance(t, str) and t for t in texts)
    for word in ("Sprichwort", "Refrán", "Proverbio"):
        assert sum(t.startswith(word) for t in texts) == 2
    assert not any("ASCII PICTURE" in t or "binary" in t for t in texts)
    assert sum(t.startswith("Paragraph") for t in texts) == 6
    assert "2 de, 2 es, 2 it" in desc and "12 documents" in desc
    assert peer_corpus(12, seed=1, doc_root=docs, fortunes=fortunes)[0] == texts  # reproducible

    english, desc = peer_corpus(8, doc_root=docs, fortunes=tmp_path / "absent")
    assert len(english) == 8 and all(t.startswith("Paragraph") for t in english)
    assert "absent" in desc and "get_text_data.sh" in desc
    with pytest.raises(ValueError, match="documents"):
        peer_corpus(500, doc_root=docs, fortunes=tmp_path / "absent")


def test_run_with_sentence_transformers_and_fastbert(tmp_path, minilm_dir):
    pytest.importorskip("sentence_transformers")
    if not Path("/usr/share/doc").is_dir():
        pytest.skip("no /usr/share/doc to take real texts from")
    texts, desc = peer_corpus(12, seed=3)

    def broken(setup):
        raise RuntimeError("boom: this runtime cannot load")

    rts = [Runtime("sentence-transformers", "fp32", build_sentence_transformers, ("sentence_transformers",), True),
           Runtime("fastbert (fp32)", "float32", lambda s: build_fastbert(s, torch.float32)),
           Runtime("broken", "fp32", broken),
           Runtime("absent", "fp32", broken, ("no_such_module_for_fastbert_tests",))]
    setup = Setup(Path(minilm_dir), tmp_path, threads=torch.get_num_threads(), batch_size=5)
    res = run(texts, desc, setup, rounds=2, rts=rts)
    st, fb, bad, absent = res["rows"]
    assert st["min_cos"] == pytest.approx(1.0, abs=1e-6) and st["nn_agreement"] == 1.0 and st["x_st"] == 1.0
    assert fb["status"] == "ok" and fb["precision"] == "fp32" and fb["min_cos"] > 0.9999
    assert fb["nn_agreement"] >= 11 / 12 and 0 <= fb["worst_text"] < len(texts)
    for row in (st, fb):
        assert len(row["seconds"]) == 2 and row["texts_per_s"] > 0 and row["x_st"] > 0
    assert bad["status"] == "error" and "boom" in bad["note"] and "texts_per_s" not in bad
    assert absent["status"] == "skipped" and "no_such_module_for_fastbert_tests" in absent["note"]
    assert res["partial"] is False and res["texts"] == 12 and res["environment"]["versions"]["torch"]

    save(res, tmp_path / "out" / "peers")
    assert json.loads((tmp_path / "out" / "peers.json").read_text())["rows"][1]["runtime"] == "fastbert (fp32)"
    md = markdown(res)
    assert "| fastbert (fp32) | fp32 |" in md and "boom" in md and "not installed" in md

    with pytest.raises(RuntimeError, match="reference"):
        run(texts, desc, setup, rounds=1, rts=[Runtime("sentence-transformers", "fp32", broken, (), True)])
