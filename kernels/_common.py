"""Helpers shared by the kernels (layer_norm, gelu, attention)."""
import functools
import os

import torch
import triton
import triton.language as tl


def interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Autotune on CUDA unless FASTBERT_AUTOTUNE=0; never under the interpreter (it has no driver)."""
    return not interpret() and os.environ.get("FASTBERT_AUTOTUNE", "1") != "0"


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
