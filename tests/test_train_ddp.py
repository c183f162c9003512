"""Two processes (torchrun, gloo, CPU) with 4 sequences each = one process with 8: the same loss curve.

The global batch is the same instances (each rank takes its contiguous share of the step's instances) and
the losses are normalised by the global masked-token / sequence counts, so only float summation order
differs. Dropout is off: two ranks draw different dropout masks than one process would."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastbert.train.loop import read_log

CORPUS = Path(__file__).parent / "data" / "fortunes_science.txt"


def _config(tmp_path, minilm_dir, name, batch_size, grad_accum=1, **extra):
    cfg = {"train_files": [str(CORPUS)], "tokenizer": str(minilm_dir),
           "model_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
                            "attention_probs_dropout_prob": 0.0},
           "max_seq_length": 48, "batch_size": batch_size, "grad_accum": grad_accum, "max_steps": 6,
           "learning_rate": 2e-3, "warmup_steps": 1, "log_every": 0, "progress": False, "device": "cpu",
           "output_dir": str(tmp_path / name), **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_two_process_ddp_matches_one_process(tmp_path, minilm_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = _config(tmp_path, minilm_dir, "one", 8)
    two = _config(tmp_path, minilm_dir, "two", 4)
    p1 = subprocess.Popen([sys.executable, "-m", "fastbert.train.cli", "pretrain", "--config", str(one)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "fastbert.train.cli", "pretrain", "--config", str(two)], env=env,
                        capture_output=True, text=True, timeout=300)
    out1, _ = p1.communicate(timeout=300)
    assert p1.returncode == 0, out1
    assert p2.returncode == 0, p2.stdout + p2.stderr
    a, b = read_log(tmp_path / "one" / "train_log.csv"), read_log(tmp_path / "two" / "train_log.csv")
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-5), (ra, rb)
        assert rb["mlm_acc"] == ra["mlm_acc"]
        assert rb["tokens_per_s"] > 0
    assert a[-1]["loss"] < a[0]["loss"]


def _torchrun(cfg, *extra):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "fastbert.train.cli", "pretrain", "--config", str(cfg), *extra],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


def test_two_process_fsdp_matches_one_process_and_resumes_exactly(tmp_path, minilm_dir):
    """FSDP (fully sharded, 2 gloo ranks) gives one process's losses; its sharded checkpoint (torch.distributed
    .checkpoint) resumes to the same losses and weights as the uninterrupted run, and is also a model directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = _config(tmp_path, minilm_dir, "one", 8)
    p1 = subprocess.Popen([sys.executable, "-m", "fastbert.train.cli", "pretrain", "--config", str(one)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fsdp = _config(tmp_path, minilm_dir, "fsdp", 4, parallel="fsdp", save_every=3, keep_last=0)
    r = _torchrun(fsdp)
    assert r.returncode == 0, r.stdout + r.stderr
    out1, _ = p1.communicate(timeout=300)
    assert p1.returncode == 0, out1
    a, b = read_log(tmp_path / "one" / "train_log.csv"), read_log(tmp_path / "fsdp" / "train_log.csv")
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-5), (ra, rb)
    ck = tmp_path / "fsdp" / "checkpoints"
    assert (ck / "step-00000003" / "sharded").is_dir()

    # resume a copy of the run from its step-3 checkpoint: steps 4-6 and the final weights as uninterrupted
    import shutil

    import torch
    from fastbert import BertForPreTraining
    from fastbert.train import checkpoint as ckpt

    final_ref = BertForPreTraining.from_pretrained(ck / "step-00000006").state_dict()
    resumed = _config(tmp_path, minilm_dir, "resumed", 4, parallel="fsdp", save_every=3, keep_last=0)
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck / "step-00000003", tmp_path / "resumed" / "checkpoints" / "step-00000003")
    r = _torchrun(resumed, "--resume", "auto")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in r.stdout + r.stderr
    c = read_log(tmp_path / "resumed" / "train_log.csv")
    assert [row["step"] for row in c] == [4, 5, 6]
    assert [row["loss"] for row in c] == [row["loss"] for row in b[3:]]
    final = BertForPreTraining.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step-00000006").state_dict()
    assert all(torch.equal(final[k], final_ref[k]) for k in final_ref)
    assert ckpt.load_checkpoint(ck / "step-00000006")["optimizer"] is None  # sharded, not in the pickle
