"""Training checkpoints: one directory per checkpoint, written atomically, the last N (and the best) kept.

``checkpoints/step-00000012/`` is a model directory that ``from_pretrained`` loads, fastbert's and
transformers' alike (``config.json``, ``model.safetensors``, and whatever the caller adds, e.g. the
tokenizer's files), with the training state beside it in ``training_state.pt``: optimizer, scheduler and
grad scaler, every rank's RNG states (python, numpy, torch, CUDA), the step and the data position. Together
they continue a run exactly.

A checkpoint is written into a temporary directory next to its final name, every file flushed and fsync'ed,
then renamed onto its name (``os.replace`` of a directory is atomic on POSIX) and the parent directory
fsync'ed: a crash or ``kill -9`` at any moment leaves either the previous checkpoints or the new one
complete, never a half-written directory under a checkpoint name. Older checkpoints are removed only after
the new one is in place, and never the one recorded as best.
"""
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch

STATE_NAME = "training_state.pt"
SHARDED_DIR = "sharded"  # FSDP runs: every rank's shards of model and optimizer (torch.distributed.checkpoint)
BEST_NAME = "best.json"
_NAME = re.compile(r"^step-(\d+)$")


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


def _fsync(path, directory=False):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def step_of(path) -> int:
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint directory (step-NNNNNNNN)")
    return int(m.group(1))


def list_checkpoints(directory) -> List[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary directories are never listed)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, directory, step: int, keep_last: int = 3, model=None,
                    add_files: Optional[Callable[[Path], None]] = None, keep: Iterable[int] = ()) -> Path:
    """Write ``state`` (and ``model.save_pretrained``, and ``add_files(dir)``) as ``directory/step-N``.

    ``keep_last`` > 0 removes all but the newest ``keep_last`` checkpoints, except the steps in ``keep``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-step-{step:08d}-"))
    try:
        if model is not None:
            model.save_pretrained(tmp)
        if add_files is not None:
            add_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, directory / f"step-{step:08d}", state, keep_last, keep)


def publish(tmp: Path, final: Path, state: dict, keep_last: int = 3, keep: Iterable[int] = ()) -> Path:
    """Write ``state`` into the filled temporary directory ``tmp``, fsync it all, rename it onto ``final``
    (replacing an older one of the same step whole), then drop checkpoints past ``keep_last``."""
    directory = final.parent
    try:
        with open(tmp / STATE_NAME, "wb") as f:
            torch.save(state, f)
        for p in tmp.rglob("*"):
            if p.is_file():
                _fsync(p)
        _fsync(tmp, directory=True)
        if final.exists():  # the same step saved again (a resumed run's last step): replace it whole
            old = Path(tempfile.mkdtemp(dir=directory, prefix=f".old-{final.name}-"))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(directory, directory=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep_last > 0:
        protected = set(keep)
        for old in list_checkpoints(directory)[:-keep_last]:
            if step_of(old) not in protected:
                shutil.rmtree(old, ignore_errors=True)
    return final


def write_model_dir(model, state: Dict[str, torch.Tensor], directory: Path):
    """A from_pretrained directory from a full (gathered) state dict: the model's config and its weights in
    safetensors, tied copies left out as ``save_pretrained`` does."""
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(directory)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    tied = tied if isinstance(tied, dict) else {k: None for k in tied}
    state = {k: v.detach().contiguous() for k, v in state.items() if k not in tied}
    save_file(state, str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})


def load_checkpoint(path, map_location="cpu") -> dict:
    """The training state of checkpoint directory ``path``, with its model weights under ``"model"``."""
    path = Path(path)
    try:
        state = torch.load(path / STATE_NAME, map_location=map_location, weights_only=False)
        weights = sorted(path.glob("*.safetensors"))
        if weights:
            from safetensors.torch import load_file

            state["model"] = {}
            for w in weights:  # one file, or the shards of a sharded save
                state["model"].update(load_file(w, device=str(map_location)))
    except Exception as e:  # noqa: BLE001 - any failure to read means the same thing to the user
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); resume from an earlier "
                           "one (--resume PATH) or start again") from e
    return state


def latest_checkpoint(directory) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_best(directory) -> Optional[Dict]:
    """``{"step", "metric", "value", "path"}`` of the best checkpoint so far, or None."""
    p = Path(directory) / BEST_NAME
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def write_best(directory, record: Dict):
    directory = Path(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + BEST_NAME)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / BEST_NAME)
