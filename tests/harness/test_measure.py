"""Timing and counting: the numbers of a known schedule of calls."""

from __future__ import annotations

import pytest
import torch

from harness import measure
from harness.measure import NFECounter, time_calls


class FakeClock:
    """time.perf_counter for harness.measure: advances only when a timed call runs."""

    def __init__(self, durations: list[float]):
        self.now = 100.0
        self.durations = list(durations)

    def perf_counter(self) -> float:
        return self.now

    def call(self) -> None:
        self.now += self.durations.pop(0)


def test_latency_is_the_median_of_the_timed_calls_after_warmup(monkeypatch):
    clock = FakeClock([7.0, 9.0, 5.0, 1.0, 3.0, 2.0, 4.0])  # two warm-up calls, then five timed ones
    monkeypatch.setattr(measure.time, "perf_counter", clock.perf_counter)
    stats = time_calls(clock.call, "cpu", warmup=2, repeats=5)
    assert stats.samples_s == [5.0, 1.0, 3.0, 2.0, 4.0]
    assert stats.median == 3.0 and stats.min == 1.0 and stats.max == 5.0
    assert stats.warmup_s == 16.0
    assert stats.p5 == 1.0 + 0.2 * (2.0 - 1.0) and stats.p95 == 4.0 + 0.8 * (5.0 - 4.0)


def test_an_even_number_of_repeats_averages_the_middle_two(monkeypatch):
    clock = FakeClock([1.0, 10.0, 2.0, 3.0])
    monkeypatch.setattr(measure.time, "perf_counter", clock.perf_counter)
    assert time_calls(clock.call, "cpu", warmup=0, repeats=4).median == 2.5


def test_nfe_counts_network_evaluations_per_sample():
    counter = NFECounter(lambda x, t: x * t)
    x = torch.ones(7, 2)
    for _ in range(3):
        counter(x, torch.tensor(0.5))
    counter(x[:4], torch.tensor(0.5))  # a smaller chunk counts its own samples
    assert counter.calls == 4 and counter.evaluations == 25
    assert counter.nfe(7) == 25 / 7
    counter.reset()
    assert counter.calls == counter.evaluations == 0


def test_peak_memory_counts_the_block_and_memory_added_only_what_it_allocated():
    """A block that holds 256 MiB at its peak: the process peak includes torch and the
    rest (more than 256 MiB); the amount added is the 256 MiB, within the allocator's slack."""
    from harness.measure import PeakMemory

    with PeakMemory("cpu") as mem:
        block = torch.ones(64 * 1024 * 1024)  # 256 MiB of float32, written so it is resident
        block.add_(1.0)
        del block
    if not mem.result["method"].startswith("process peak RSS"):
        pytest.skip("no /proc/self/clear_refs here: the peak is the whole process's so far")
    added, peak = mem.result["peak_above_start_mib"], mem.result["peak_mib"]
    assert 250 <= added <= 290, added
    assert peak >= added + 50  # the process held torch and the test's own state before the block
