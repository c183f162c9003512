"""fastbert's fused ops: a ``torch.autograd.Function`` per op over a Triton kernel, with a PyTorch path.

Dispatch, one rule for every op (``use_triton`` in fastbert/ops/_dispatch.py): Triton for CUDA tensors, and
for CPU tensors under ``TRITON_INTERPRET=1``; PyTorch otherwise. ``ops.cpu``: oneDNN linear layers with fused
epilogues for CPU inference (the model's ``cpu`` backend).
"""
from . import cpu, padding
from .attention import attention, trust_cu_seqlens
from .gelu import bias_gelu
from .layer_norm import layer_norm
from .lm_head_ce import linear_cross_entropy
from .padding import pad_input, unpad_input

__all__ = ["attention", "bias_gelu", "layer_norm", "linear_cross_entropy", "pad_input", "trust_cu_seqlens", "unpad_input"]
