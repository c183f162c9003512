"""The output folder of a corpus job: its job spec, its lock, which shards are done, its manifest.

- ``_job.json``, written first: what the job is (the model's identity, the inputs with sizes and mtimes, the
  fields and options that change the result). A second run with the same spec resumes; another spec is
  refused, naming the difference (``overwrite=True`` deletes the job's files and starts again).
- ``part-NNNNNN.parquet``: the finished shards (``writer.py``); on a restart they are kept, and whatever a
  killed run left half-written (``.*.tmp``) is removed.
- ``_manifest.json``, written last and atomically: the shards, the row counts, the records skipped. Its
  presence means the job is complete.
- ``.lock``: held (``flock``) while a run writes; the kernel drops it when the process dies, even by SIGKILL.

Names beginning with ``_`` or ``.`` are skipped by ``pyarrow.dataset``, so the folder reads as one table.
"""
import fcntl
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable

from .writer import read_facts, write_json

SPEC_FILE, MANIFEST_FILE, LOCK_FILE = "_job.json", "_manifest.json", ".lock"
SPEC_FORMAT = "fastbert-corpus/1"
MODEL_FILE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
WHAT = {"model": "the model", "inputs": "the inputs", "text_field": "--text-field", "id_field": "--id-field",
        "keep_fields": "--keep-fields", "shard_size": "--shard-size", "on_error": "--on-error", "dtype": "--dtype",
        "max_seq_length": "--max-length (the model's max_seq_length)", "normalize": "--no-normalize",
        "format": "the output format version"}


class JobMismatch(ValueError):
    pass


@functools.lru_cache(maxsize=8)
def _model_sha256(model_dir: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for rel, _, _ in stamp:
        h.update(rel.encode() + b"\0")
        with open(os.path.join(model_dir, rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_identity(model_dir) -> Dict:
    """The SHA-256 of the model's weights, config, vocabulary and sentence-transformers files (README, ONNX
    exports and the like left out): the same model in another folder is the same model."""
    d = Path(model_dir)
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES
                   and not any(part.startswith(".") or part in ("onnx", "openvino") for part in p.relative_to(d).parts))
    stamp = tuple((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return {"sha256": _model_sha256(str(d.resolve()), stamp), "dir": str(d.resolve())}


def describe_difference(key: str, ours, theirs) -> str:
    if key == "model":
        return (f"the model differs (sha256 {ours['sha256'][:12]}... of {ours['dir']} here, "
                f"{theirs['sha256'][:12]}... of {theirs['dir']} there)")
    if key == "inputs":
        a = {f["path"]: f for f in ours}
        b = {f["path"]: f for f in theirs}
        for path in list(a) + list(b):
            if path not in b:
                return f"the inputs differ ({path} is new)"
            if path not in a:
                return f"the inputs differ ({path} is no longer one)"
            if a[path] != b[path]:
                return f"the input {path} changed (size or modification time)"
        return "the inputs are listed in another order"
    return f"{WHAT.get(key, key)} differs ({ours!r} here, {theirs!r} there)"


class OutputDir:
    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    def open(self, spec: Dict, overwrite: bool = False) -> bool:
        """Take the folder for ``spec``: new, resumed or (``overwrite``) restarted. True when the job is already
        complete (its manifest is there)."""
        if self.path.exists() and not self.path.is_dir():
            raise JobMismatch(f"--output {self.path} is a file; with --input, --output is a folder of Parquet shards")
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        spec = json.loads(json.dumps(spec))  # as it reads back from disk
        spec_file = self.path / SPEC_FILE
        ours = [p for p in self.path.iterdir() if p.name != LOCK_FILE]
        if spec_file.exists():
            theirs = json.loads(spec_file.read_text(encoding="utf-8"))
            diff = next((k for k in sorted(set(spec) | set(theirs)) if spec.get(k) != theirs.get(k)), None)
            if diff and not overwrite:
                what = describe_difference(diff, spec.get(diff), theirs.get(diff))
                raise JobMismatch(f"{self.path} holds the output of another job: {what}. Pass --overwrite to start "
                                  "again there, or choose another --output")
            if overwrite:
                self._remove_job_files()
        elif ours:
            raise JobMismatch(f"--output {self.path} is not empty and holds no fastbert job ({SPEC_FILE}); choose "
                              "a new or empty folder (nothing there is deleted, even with --overwrite)")
        for tmp in self.path.glob(".*.tmp"):  # what a killed run left half-written
            tmp.unlink()
        if not spec_file.exists():
            write_json(spec_file, spec)
        return (self.path / MANIFEST_FILE).exists()

    def _take_lock(self):
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobMismatch(f"another fastbert encode is writing to {self.path}; wait for it to finish") from None
        self._lock = fd

    def _remove_job_files(self):
        for p in self.path.iterdir():
            if p.name in (SPEC_FILE, MANIFEST_FILE) or (p.name.startswith("part-") and p.suffix == ".parquet") \
                    or (p.name.startswith(".") and p.suffix == ".tmp"):
                p.unlink()

    def done(self, shards: Iterable) -> Dict[int, Dict]:
        """``{shard index: facts}`` of the shards already written whole (a shard file whose facts do not match
        the plan is removed, to be written again)."""
        out = {}
        for shard in shards:
            path = self.path / shard.name
            if not path.exists():
                continue
            try:
                facts = read_facts(path)
                ok = (facts["row_start"], facts["row_end"]) == (shard.row_start, shard.row_start + shard.rows)
            except Exception:  # noqa: BLE001 -- an unreadable shard is redone, whatever the reason
                ok = False
            if ok:
                out[shard.index] = facts
            else:
                path.unlink()
        return out

    def write_manifest(self, manifest: Dict) -> None:
        write_json(self.path / MANIFEST_FILE, manifest)

    def close(self):
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
