"""Finding model files: a local directory, or a Hugging Face hub repository when a network is there."""
import os
from typing import Optional


def resolve_file(name_or_path: str, filename: str, *, optional: bool = False, revision: Optional[str] = None,
                 subfolder: str = "", **hub_kwargs):
    """Path of ``filename`` in a local directory or in hub repository ``name_or_path`` (downloaded once).

    ``hub_kwargs``: ``hf_hub_download``'s ``cache_dir``, ``force_download``, ``local_files_only``, ``token``
    as ``from_pretrained`` takes them. Returns None for a missing optional file; raises
    FileNotFoundError naming what is missing otherwise.
    """
    name_or_path = str(name_or_path)
    if subfolder and os.path.isdir(name_or_path):
        name_or_path = os.path.join(name_or_path, subfolder)
    elif subfolder:
        filename = f"{subfolder}/{filename}"
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        if os.path.isfile(path):
            return path
        if optional:
            return None
        raise FileNotFoundError(f"{filename} not found in {name_or_path}")
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name_or_path} is not a model directory")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise FileNotFoundError(
            f"{name_or_path} is not a local directory and huggingface_hub is not installed to fetch it"
        ) from e
    try:
        hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
        return hf_hub_download(repo_id=name_or_path, filename=filename, revision=revision, **hub_kwargs)
    except EntryNotFoundError as e:
        if isinstance(e, LocalEntryNotFoundError):  # offline, or the network is down
            raise FileNotFoundError(
                f"could not get {filename} for {name_or_path!r}: it is not a local directory, and the Hugging Face "
                f"hub cannot be reached ({e}). Pass the path of a local model directory."
            ) from e
        if optional:
            return None
        raise FileNotFoundError(f"{filename} not found in hub repository {name_or_path}") from None
    except Exception as e:  # network down, repository missing, offline mode, ...
        if optional and "404" in str(e):
            return None
        raise FileNotFoundError(
            f"could not get {filename} for {name_or_path!r}: it is not a local directory, and fetching it from "
            f"the Hugging Face hub failed ({type(e).__name__}: {e}). Pass the path of a local model directory."
        ) from e
