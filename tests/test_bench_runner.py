"""The benchmark runner end to end on CPU: a quick run on a tiny encoder writes JSON, tables and plots."""
import json

import pytest

pytest.importorskip("transformers")


def test_quick_cpu_run_writes_json_table_and_plot(tmp_path):
    from fastbert.benchmarks.__main__ import main

    rc = main(["--suite", "cpu", "--quick", "--models", "tiny", "--only", "inference,training",
               "--threads", "1", "--reps", "3", "--out", str(tmp_path)])
    assert rc == 0
    [json_path] = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())

    env = results["environment"]
    for key in ("date_utc", "git_commit", "git_dirty", "torch", "triton", "transformers", "device_name",
                "cpu_model", "cpu_cores_usable", "torch_threads"):
        assert key in env
    assert env["device_type"] == "cpu" and env["torch_threads"] == 1
    assert any("shared" in n for n in results["notes"])  # says it was a small shared CPU

    rows = results["encoder"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} >= {"fastbert-torch", "hf-eager", "hf-sdpa"}
    assert {r["section"] for r in ok} == {"inference", "training"}
    for r in ok:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["tokens_per_s"] > 0
        assert r["peak_mem_mb"] > 0 and len(r["times_ms"]) >= 3 and min(r["times_ms"]) > 0
    assert not [r for r in rows if r["status"] in ("failed check", "error")]
    triton = [r for r in rows if r["provider"].startswith("fastbert-triton")]
    assert triton and all(r["status"] == "skipped" and "GPU" in r["reason"] for r in triton)
    eager_vs_sdpa = [r for r in ok if r["provider"] == "fastbert-torch"]
    assert all(r["speedup_vs_hf-eager"] > 0 and r["speedup_vs_hf-sdpa"] > 0 for r in eager_vs_sdpa)

    md = next(tmp_path.glob("*.md")).read_text()
    assert "| model | dtype | workload" in md and "fastbert-torch" in md
    pngs = list(tmp_path.glob("*.png"))
    if _has_matplotlib():
        assert {p.name.rsplit("_", 1)[-1] for p in pngs} == {"inference.png", "training.png"}
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_pretraining_section_checks_the_mlm_loss_and_flushes_per_section(tmp_path, monkeypatch):
    """The pre-training step (MLM + NSP heads) runs, is checked against HF BertForPreTraining, and its rows are
    on disk as soon as the section ends: a run killed later (here: in the tokenizer section) keeps them."""
    import fastbert.benchmarks.__main__ as cli
    import fastbert.benchmarks.runner as runner

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what the device tool's time limit does to a section

    monkeypatch.setattr(runner, "run_tokenizer", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--suite", "cpu", "--quick", "--models", "tiny", "--only", "pretraining,tokenizer",
                  "--threads", "1", "--reps", "2", "--out", str(tmp_path), "--providers",
                  "fastbert-torch,hf-eager,hf-sdpa"])
    [json_path] = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["partial"] is True and "tokenizer" not in results
    rows = [r for r in results["encoder"] if r["section"] == "pretraining"]
    assert {r["provider"] for r in rows if r["status"] == "ok"} == {"fastbert-torch", "hf-eager", "hf-sdpa"}
    fb = next(r for r in rows if r["provider"] == "fastbert-torch")
    # fastbert's own step (packed, masked rows gathered before the vocab projection) gives HF's loss and grads
    assert fb["check_detail"]["loss_rel_err"] < 1e-5 and fb["check_detail"]["grad_rel_err"] < 1e-4
    assert any("gathered" in n for n in fb["notes"])
