"""The benchmarks' one timer (benchmarks/timer.py): what it calls, in which order, how many times, what it
reports; the CUDA path on fake events (no GPU here), so its bookkeeping is checked on every machine."""
import time

import pytest
import torch

from fastbert.benchmarks import timer
from fastbert.benchmarks.timer import Timing, best_s, synced, time_calls, time_round_robin


def _sleeper(ms, log=None):
    def fn(*args):
        if log is not None:
            log.append(args)
        time.sleep(ms / 1e3)
    return fn


def test_cpu_times_every_call_and_cycles_the_input_sets():
    seen = []
    t = time_calls(_sleeper(2, seen), inputs=["a", "b", "c"], warmup=2, reps=5)
    assert t.n == 5 and len(seen) == 7
    assert [s[0] for s in seen] == ["a", "b", "a", "b", "c", "a", "b"]  # warm-up, then the timed calls
    assert min(t.times_ms) >= 2.0 and t.min_ms <= t.p20_ms <= t.median_ms <= t.p80_ms <= t.p90_ms
    assert t.host_ms is None


def test_cpu_stops_at_max_s_after_three_calls_and_runs_on_to_min_s():
    assert time_calls(_sleeper(3), warmup=0, reps=100, max_s=0.001).n == 3
    t = time_calls(_sleeper(1), warmup=0, reps=2, min_s=0.03)
    assert t.n > 2 and sum(t.times_ms) >= 25


def test_round_robin_rotates_the_order_and_gives_each_round_one_input_set():
    order = []
    fns = {k: (lambda k: lambda x: order.append((k, x)))(k) for k in "abc"}
    out = time_round_robin(fns, inputs=[0, 1], warmup=1, reps=3, max_s=60)
    assert order == [("a", 0), ("b", 0), ("c", 0),  # warm-up
                     ("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 0), ("a", 0), ("b", 0)]
    assert {k: v.n for k, v in out.items()} == {"a": 3, "b": 3, "c": 3}


def test_best_s_is_the_fastest_of_exactly_repeat_calls():
    durations = iter([6, 1, 4])
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(durations) / 1e3)

    best = best_s(fn, repeat=3)
    assert len(calls) == 3 and 0.001 <= best < 0.004


def test_timing_statistics_and_the_kept_times():
    t = Timing([float(x) for x in range(1, 1001)])
    assert t.median_ms == 500.5 and t.min_ms == 1.0 and t.mean_ms == 500.5
    assert t.quantile(0.9) == pytest.approx(900.1) and t.p20_ms == pytest.approx(200.8)
    kept, step = t.kept()
    assert step == 3 and len(kept) == 334 and kept[:2] == [1.0, 4.0]
    with pytest.raises(ValueError):
        Timing([])


def test_synced_is_the_call_itself_off_cuda():
    fn = _sleeper(0)
    assert synced(fn, "cpu") is fn and synced(fn, None) is fn


class _FakeCuda:
    """torch.cuda's Event and synchronize on a fake clock: an event's time is the clock when it is recorded;
    elapsed times may be read only after a synchronisation (as on a GPU)."""

    def __init__(self):
        self.clock, self.log, self.synced = 0.0, [], False
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.t = None

            def record(self):
                self.t = fake.clock
                fake.log.append("record")
                fake.synced = False

            def elapsed_time(self, end):
                assert fake.synced, "event read before a synchronisation"
                return end.t - self.t

        self.Event = Event

    def synchronize(self, device=None):
        self.synced = True
        self.log.append("sync")


class _FakeBuffer:
    def __init__(self, log):
        self.log = log

    def zero_(self):
        self.log.append("flush")


def test_cuda_path_times_each_call_between_its_events_after_an_l2_flush(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    monkeypatch.setattr(timer, "_l2_flush_buffer", lambda device: _FakeBuffer(fake.log))
    durations = iter([0.5, 1.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])

    def fn():
        fake.log.append("call")
        fake.clock += next(durations)

    t = time_calls(fn, "cuda", warmup=2, reps=8, max_s=60, flush_l2=True)
    assert t.times_ms == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # the warm-up calls (0.5, 1.5) not timed
    timed = fake.log[fake.log.index("sync") + 1:]
    # reps // 4 = 2 calls issued back to back between synchronisations, each: flush, event, call, event
    assert timed == (["flush", "record", "call", "record"] * 2 + ["sync"]) * 4
    assert fake.log[:3] == ["call", "call", "sync"]  # warm-up, then a synchronisation before timing


def test_cuda_host_time_waits_for_an_idle_gpu_before_each_call(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    t = time_calls(_sleeper(2, fake.log), "cuda", warmup=0, reps=4, max_s=60, host=True)
    assert t.n == 4 and t.host_ms >= 2.0  # perf_counter around the call: the fake GPU time is 0
    timed = ["sync"] + ["record", (), "record", "sync"] * 4  # reps // 4 = 1 call per synchronisation
    assert fake.log == timed + ["sync", ()] * 5 + ["sync"]  # then 5 calls, each on an idle GPU
