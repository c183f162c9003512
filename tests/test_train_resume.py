"""kill -9 a pre-training run after a checkpoint, resume it: every checkpoint on disk is readable and the
resumed run's losses equal an uninterrupted run's, bit for bit (CPU, fp32, dropout on: the RNG states and
the data position are restored)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastbert.train import checkpoint as ckpt
from fastbert.train.loop import read_log

CORPUS = Path(__file__).parent / "data" / "fortunes_science.txt"
STEPS = 60  # far more steps than the run can take between the step-6 checkpoint and the kill


def _config(tmp_path, minilm_dir, name, **extra):
    cfg = {"train_files": [str(CORPUS)], "tokenizer": str(minilm_dir),
           "model_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 64, "max_position_embeddings": 64},
           "max_seq_length": 48, "batch_size": 4, "max_steps": STEPS, "learning_rate": 1e-3, "warmup_steps": 2,
           "save_every": 3, "keep_last": 2, "log_every": 0, "progress": False, "device": "cpu",
           "output_dir": str(tmp_path / name), **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _cmd(cfg, *extra):
    return [sys.executable, "-m", "fastbert.train.cli", "pretrain", "--config", str(cfg), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_kill9_and_resume_matches_uninterrupted(tmp_path, minilm_dir):
    ref_cfg, run_cfg = _config(tmp_path, minilm_dir, "ref"), _config(tmp_path, minilm_dir, "run")
    ref = subprocess.Popen(_cmd(ref_cfg), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = subprocess.Popen(_cmd(run_cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = tmp_path / "run" / "checkpoints" / "step-00000006"
    deadline = time.time() + 240
    while not target.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), "the run never wrote its step-6 checkpoint"
    time.sleep(0.3)  # into step 7/8, maybe mid-way through writing nothing or something
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL

    ck_dir = tmp_path / "run" / "checkpoints"
    found = ckpt.list_checkpoints(ck_dir)
    assert found and found[-1].name >= "step-00000006"
    for p in found:  # nothing under a checkpoint name is half-written
        state = ckpt.load_checkpoint(p)
        assert state["step"] == ckpt.step_of(p)
    killed_at = ckpt.step_of(found[-1])
    print(f"killed after the step-{killed_at} checkpoint")
    assert killed_at < STEPS

    resumed = subprocess.run(_cmd(run_cfg, "--resume", "auto"), env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {found[-1]} at step {killed_at}" in resumed.stdout + resumed.stderr
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out

    a, b = read_log(tmp_path / "ref" / "train_log.csv"), read_log(tmp_path / "run" / "train_log.csv")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bitwise: the CSV holds full-precision floats
    assert [r["mlm_acc"] for r in a] == [r["mlm_acc"] for r in b]
    wa = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ref" / "checkpoints"))["model"]
    wb = ckpt.load_checkpoint(ckpt.latest_checkpoint(ck_dir))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a[-1]["loss"] < a[0]["loss"]
