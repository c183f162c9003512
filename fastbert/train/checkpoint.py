"""Training checkpoints: one file per checkpoint, written atomically, the last N kept.

A checkpoint holds everything a run needs to continue exactly: model and optimizer state, the scheduler
and grad scaler, every rank's RNG states (python, numpy, torch, CUDA), the step and the data position.
It is written to a temporary file in the same directory, flushed and fsync'ed, then renamed over its final
name (``os.replace`` is atomic on POSIX), and the directory is fsync'ed: a crash or ``kill -9`` at any
moment leaves either the previous checkpoints or the new one complete, never a half-written file under a
checkpoint name. Older checkpoints are removed only after the new one is in place.
"""
import os
import random
import re
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

_NAME = re.compile(r"^step-(\d+)\.pt$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path):
    """``torch.save`` through a temporary file + fsync + rename: ``path`` is either old or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="-" + path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_checkpoints(directory) -> List[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary files are never listed)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, directory, step: int, keep_last: int = 3) -> Path:
    path = Path(directory) / f"step-{step:08d}.pt"
    atomic_torch_save(state, path)
    if keep_last > 0:
        for old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); resume from an earlier "
                           "one (--resume PATH) or start again") from e


def latest_checkpoint(directory) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None
