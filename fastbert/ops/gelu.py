"""Fused bias + GELU: ``gelu(x + bias)``, exact (erf) or tanh-approximated.

PyTorch path for now; the Triton kernel (kernels/gelu.py) is slotted in by the GELU issue.
"""
import torch.nn.functional as F


def bias_gelu(x, bias, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.gelu(x + bias, approximate=approximate)
