"""Where each op decides between its Triton kernel and its PyTorch path.

Triton runs for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` is set (Triton's interpreter,
how CI checks every kernel without a GPU). Everything else takes the PyTorch path. Kernels are imported
lazily, on first use: ``import fastbert`` never imports triton nor touches a GPU.
"""
import importlib
import importlib.util
import os

import torch

# Whether triton is installed, found without importing it (and traceable by torch.compile: a constant).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_KERNEL_MODULES = {}


def triton_available() -> bool:
    return _TRITON_INSTALLED


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when these tensors should go through the Triton kernels."""
    if not _TRITON_INSTALLED:
        return False
    t = tensors[0]
    if t.is_cuda:
        return True
    return t.device.type == "cpu" and interpret_mode()


def kernels(name: str):
    """``fastbert.kernels.<name>``, imported on first use (then a dictionary lookup)."""
    module = _KERNEL_MODULES.get(name)
    if module is None:
        module = _KERNEL_MODULES[name] = importlib.import_module(f"fastbert.kernels.{name}")
    return module
