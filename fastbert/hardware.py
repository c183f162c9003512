"""What the machine offers, read once: CPU features that decide the default precision, physical cores.

Nothing here touches a GPU or imports anything heavy; Linux is read from /proc/cpuinfo, elsewhere the answers
are the conservative ones (no native bf16, ``os.cpu_count()`` cores).
"""
import functools
import os
from typing import FrozenSet, Optional, Tuple

import torch

# CPU flags (Linux /proc/cpuinfo names) under which bf16 matrix multiplies run natively, best first.
BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
INT8_FLAGS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))


@functools.lru_cache(maxsize=None)
def cpu_flags() -> FrozenSet[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def native_bf16() -> Optional[str]:
    """The name of the feature that multiplies bf16 natively on this CPU (``"AMX-BF16"``...), or None."""
    flags = cpu_flags()
    return next((name for flag, name in BF16_FLAGS if flag in flags), None)


def native_int8() -> Optional[str]:
    flags = cpu_flags()
    return next((name for flag, name in INT8_FLAGS if flag in flags), None)


@functools.lru_cache(maxsize=None)
def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu = set(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip() and cpu is not None:
                    if cpu in allowed:
                        cores.add((phys, core if core is not None else cpu))
                    cpu = phys = core = None
            if cpu is not None and cpu in allowed:
                cores.add((phys, core if core is not None else cpu))
    except (OSError, ValueError):
        return max(1, len(allowed))
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def default_dtype(device) -> Tuple[torch.dtype, str]:
    """The precision fastbert runs inference in by default on ``device``, and why: fp16 on a GPU; bf16 on a
    CPU that multiplies bf16 natively (min cosine to fp32 >= 0.9995 for MiniLM sentence embeddings, see
    docs/cpu.md); fp32 on every other CPU (bf16 there is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16, "CUDA"
    if device.type == "cpu":
        feature = native_bf16()
        if feature:
            return torch.bfloat16, f"this CPU has {feature}"
        return torch.float32, "this CPU has no native bf16 (no AMX-BF16 or AVX512-BF16)"
    return torch.float32, f"{device.type} device"


def configure_threads(threads: Optional[int] = None) -> str:
    """Set torch's intra-op threads for a fastbert command and say why: ``threads`` when given, else the
    OMP_NUM_THREADS the user set, else one per physical core this process may run on (hyper-threads share a
    core's matrix units; a busy sibling thread slows GEMMs down). The command line's job, not the library's:
    ``import fastbert`` never changes it."""
    if threads:
        torch.set_num_threads(threads)
        return f"{threads} threads (asked for)"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} threads (OMP_NUM_THREADS)"
    n = physical_cores()
    torch.set_num_threads(n)
    return f"{n} threads (one per physical core)"
