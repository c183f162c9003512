"""The one rule for Triton or PyTorch, and the kernels' lazy import.

Triton runs on CUDA devices, and on the CPU when ``TRITON_INTERPRET=1`` is set (Triton's interpreter, how CI
checks every kernel without a GPU), if triton is installed: ``triton_runs_on(device)``. An op takes its kernel
for tensors on such a device whose dtypes the kernels take (float16, bfloat16, float32): ``use_triton``.
Everything else takes the PyTorch path. Both are plain reads (an environment variable, a constant), so
torch.compile traces them without a graph break. Kernels are imported lazily, on first use: ``import
fastbert`` never imports triton nor touches a GPU.
"""
import importlib
import importlib.util
import os

import torch

# Whether triton is installed, found without importing it (and traceable by torch.compile: a constant).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KERNEL_MODULES = {}


def interpret_mode() -> bool:
    """``TRITON_INTERPRET=1``: Triton's interpreter runs the kernels (on CPU tensors), nothing is compiled."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Can Triton run on this device: triton installed, and a CUDA device or the CPU under the interpreter."""
    return _TRITON_INSTALLED and (device.type == "cuda" or (device.type == "cpu" and interpret_mode()))


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op takes its Triton kernel for these tensors: Triton runs on the first one's device and
    every one has a dtype the kernels take."""
    return triton_runs_on(tensors[0].device) and all(t.dtype in KERNEL_DTYPES for t in tensors)


def kernels(name: str):
    """``fastbert.kernels.<name>``, imported on first use (then a dictionary lookup)."""
    module = _KERNEL_MODULES.get(name)
    if module is None:
        module = _KERNEL_MODULES[name] = importlib.import_module(f"fastbert.kernels.{name}")
    return module
