"""The one timer of the benchmarks: every benchmark that times a call times it here.

- CUDA (``device`` a CUDA device): warm-up calls, then a CUDA-event pair around every call, calls issued back
  to back in batches and the events read after a synchronisation, so a call's time includes the host's
  launch gaps whenever the GPU waits for the host (what a user sees). ``flush_l2``: a 256 MB buffer zeroed
  before every call, outside its events (as ``triton.testing.do_bench`` does), so a memory-bound op reads
  its inputs from DRAM, not from the L2 the previous call warmed.
- CPU (``device`` None or a CPU device): ``time.perf_counter`` around every call; a call must have finished
  its work when it returns (anything that ends in a host copy or a synchronisation does).
- Several callables (``time_round_robin``) are timed one call each per round, the order rotating, so that a
  load that drifts over seconds (a shared machine) falls on all of them alike.

Statistics are over every timed call: median, 20th / 80th / 90th percentiles (linear interpolation), min,
mean. ``synced`` is the same rule for a harness that reads the clock itself (pytest-benchmark).
"""
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

MAX_KEPT_TIMES = 400  # per-call times kept in a results file (all of them enter the statistics)
L2_FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 (H100: 50 MB)


@dataclass
class Timing:
    """Per-call times of one callable, in milliseconds, in the order they were taken."""
    times_ms: List[float]
    host_ms: Optional[float] = None  # CUDA, when asked: see host_time_ms
    _sorted: List[float] = field(init=False, repr=False)

    def __post_init__(self):
        if not self.times_ms:
            raise ValueError("Timing needs at least one timed call")
        self._sorted = sorted(self.times_ms)

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile of the per-call times."""
        s = self._sorted
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def n(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self._sorted)

    @property
    def p20_ms(self) -> float:
        return self.quantile(0.2)

    @property
    def p80_ms(self) -> float:
        return self.quantile(0.8)

    @property
    def p90_ms(self) -> float:
        return self.quantile(0.9)

    @property
    def min_ms(self) -> float:
        return self._sorted[0]

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self._sorted)

    def kept(self) -> Tuple[List[float], int]:
        """At most MAX_KEPT_TIMES of the per-call times (every ``step``-th, rounded), and ``step``."""
        step = max(1, -(-self.n // MAX_KEPT_TIMES))
        return [round(t, 5) for t in self.times_ms[::step]], step


def time_calls(fn: Callable, device=None, inputs: Optional[Sequence] = None, *, warmup: int = 5, reps: int = 30,
               min_s: float = 0.0, max_s: float = 30.0, flush_l2: bool = False, host: bool = False) -> Timing:
    """Time ``fn()`` (or ``fn(inputs[i % len(inputs)])``, cycling the input sets) per call: ``warmup`` calls,
    then ``reps`` timed calls, more while the timed calls stay under ``min_s`` seconds, fewer (at least 3)
    when ``max_s`` would be passed. ``host``: on CUDA also the host's time per call (``host_time_ms``)."""
    timing = time_round_robin({"": fn}, device, inputs, warmup=warmup, reps=reps, min_s=min_s, max_s=max_s,
                              flush_l2=flush_l2)[""]
    if host and _is_cuda(device):
        timing.host_ms = host_time_ms(fn, device, inputs)
    return timing


def time_round_robin(fns: Dict[str, Callable], device=None, inputs: Optional[Sequence] = None, *,
                     warmup: int = 2, reps: int = 10, min_s: float = 0.0, max_s: float = 30.0,
                     flush_l2: bool = False) -> Dict[str, Timing]:
    """Time several callables round-robin: each round one call of each, the order rotating every round, input
    set ``i % len(inputs)`` in round ``i``. Stops after ``reps`` rounds once ``min_s`` seconds have passed, or
    after at least 3 rounds once ``max_s`` seconds per callable have passed."""
    names = list(fns)
    cuda = _is_cuda(device)

    def call(name, i):
        return fns[name]() if inputs is None else fns[name](inputs[i % len(inputs)])

    for i in range(warmup):
        for name in names:
            call(name, i)
    flush = _l2_flush_buffer(device) if cuda and flush_l2 else None
    if cuda:
        torch.cuda.synchronize(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    per_sync = max(1, reps // 4) if cuda else 1  # rounds issued back to back between two synchronisations
    start_all, i = time.perf_counter(), 0
    while True:
        events = []
        for _ in range(per_sync):
            for name in names[i % len(names):] + names[:i % len(names)]:
                if flush is not None:
                    flush.zero_()
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    call(name, i)
                    end.record()
                    events.append((name, start, end))
                else:
                    t0 = time.perf_counter()
                    call(name, i)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            i += 1
        if cuda:
            torch.cuda.synchronize(device)
            for name, start, end in events:
                times[name].append(start.elapsed_time(end))
        elapsed = time.perf_counter() - start_all
        if (i >= reps and elapsed >= min_s) or (elapsed >= max_s * len(names) and i >= 3):
            break
    return {n: Timing(t) for n, t in times.items()}


def host_time_ms(fn: Callable, device, inputs: Optional[Sequence] = None, calls: int = 5) -> float:
    """Median time for ``fn`` to *return* when the GPU starts idle: the host's cost of issuing one call
    (Python, dispatch, launches), plus any wait for the GPU inside it (a host sync). Far below the GPU time:
    the GPU is the bottleneck; close to it or above: host-bound, or the call synchronises."""
    times = []
    for i in range(calls):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn() if inputs is None else fn(inputs[i % len(inputs)])
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize(device)
    return sorted(times)[len(times) // 2]


# One op call (the per-op benchmarks): on CUDA about 0.1 s of calls, each after an L2 flush; on CPU 50 calls.
OP_EFFORT = {"cuda": dict(warmup=10, reps=40, min_s=0.1, max_s=10.0, flush_l2=True),
             "cpu": dict(warmup=3, reps=50, min_s=0.0, max_s=math.inf)}


def time_op(fn: Callable, device) -> Timing:
    """One op call ``fn()`` timed with the per-op effort of ``device``."""
    return time_calls(fn, device, **OP_EFFORT["cuda" if _is_cuda(device) else "cpu"])


def best_s(fn: Callable, repeat: int = 1) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn()``, no warm-up, wall clock (the call must finish
    its work before it returns)."""
    return time_calls(fn, warmup=0, reps=repeat, max_s=math.inf).min_ms / 1e3


def synced(fn: Callable, device) -> Callable:
    """``fn`` followed by a synchronisation on CUDA: a call whose wall-clock time is the device's."""
    if not _is_cuda(device):
        return fn

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out
    return call


def _l2_flush_buffer(device) -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"
