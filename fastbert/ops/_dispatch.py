"""Where each op decides between its Triton kernel and its PyTorch path.

Triton runs for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` is set (Triton's interpreter,
how CI checks every kernel without a GPU). Everything else takes the PyTorch path. Kernels are imported
lazily, on first use: ``import fastbert`` never imports triton nor touches a GPU.
"""
import functools
import importlib
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - any import failure means "no triton"
        return False
    return True


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when these tensors should go through the Triton kernels."""
    if not triton_available():
        return False
    t = tensors[0]
    if t.is_cuda:
        return True
    return t.device.type == "cpu" and interpret_mode()


def kernels(name: str):
    """Import ``fastbert.kernels.<name>`` on first use."""
    return importlib.import_module(f"fastbert.kernels.{name}")
