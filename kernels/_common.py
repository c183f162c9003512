"""Helpers shared by the kernels (layer_norm, gelu, attention, lm_head_ce), and their one launch path."""
import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from ..ops._dispatch import interpret_mode


def autotune_enabled() -> bool:
    """Autotune on CUDA unless FASTBERT_AUTOTUNE=0; never under the interpreter (it has no driver)."""
    return not interpret_mode() and os.environ.get("FASTBERT_AUTOTUNE", "1") != "0"


def launch(kernel, grid, args: tuple, meta: dict, config: dict = None, tuned=None):
    """The one way a kernel is launched: ``kernel[grid](*args, **meta, **config)`` on the tensors' device.

    ``grid``: a function of the launch's meta-parameters (``meta`` and the config's block sizes), as Triton
    calls it. ``config``: block sizes, and on a GPU ``num_warps`` / ``num_stages``. ``tuned``: the kernel's
    ``triton.autotune`` variant; when given and autotuning is on (``autotune_enabled``) it runs instead and
    picks its own config. Triton launches on the current CUDA device: it is made the tensors' one
    (``args[0]``'s) for the launch.
    """
    device = args[0].device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if tuned is not None and autotune_enabled():
            tuned[grid](*args, **meta)
        else:
            kernel[grid](*args, **meta, **(config or {}))


def rows_bucket(m: int) -> int:
    """The autotune key for the row count: the power of two above it, between 256 and 65536. A config tuned on
    a 128-token batch (few programs: more warps each pay off) is not reused for 16K tokens, and the buckets
    stay few (each new one re-tunes once)."""
    return min(max(triton.next_power_of_2(max(m, 1)), 256), 65536)


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@triton.jit
def round_to(x, DTYPE: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    """fp32 -> DTYPE, rounding to nearest even. Hardware does this for every cast; triton 3.6's interpreter
    truncates fp32 -> bf16, so under it the rounding is done on the bits first (then the cast is exact)."""
    if EMULATE_RTNE:
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)
