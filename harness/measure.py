"""Honest cost measurements: NFE at the network call, synchronised wall-clock timing
with warm-up and repeats, and true peak memory. See shared/design/measurement.md.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class NFECounter:
    """Wraps a network ``model(x, t)`` and counts its evaluations.

    ``nfe(num_samples)`` is network evaluations per sample: each call on a batch of b
    samples counts b, so chunked sampling is counted correctly.
    """

    def __init__(self, model: Callable[..., Tensor]):
        self.model = model
        self.calls = 0
        self.evaluations = 0

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        self.evaluations += x.shape[0]
        return self.model(x, *args, **kwargs)

    def reset(self) -> None:
        self.calls = 0
        self.evaluations = 0

    def nfe(self, num_samples: int) -> float:
        return self.evaluations / num_samples


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TimingStats:
    """Seconds per call over ``repeats`` timed calls after ``warmup`` untimed ones."""

    median: float
    min: float
    max: float
    p5: float
    p95: float
    repeats: int
    warmup: int
    warmup_s: float  # time of the warm-up calls (includes torch.compile's first call)
    samples_s: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_calls(fn: Callable[[], Any], device: torch.device | str, warmup: int, repeats: int) -> TimingStats:
    """Time ``fn`` with the device synchronised before each clock read."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
    return TimingStats(
        median=statistics.median(samples),
        min=min(samples),
        max=max(samples),
        p5=_quantile(samples, 0.05),
        p95=_quantile(samples, 0.95),
        repeats=repeats,
        warmup=warmup,
        warmup_s=warmup_s,
        samples_s=samples,
    )


BUSY_CORES = 0.25  # other processes' CPU use, in cores, above which a timing counts as taken under load
_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


class OtherLoad:
    """CPU time that *other* processes used while a block ran, in cores.

    Read from ``/proc/stat`` (the machine's busy jiffies: all but idle and iowait) less this
    process's own ``utime + stime`` (``/proc/self/stat``, all its threads) over the block's
    wall time. 1.0 means one core was busy elsewhere the whole time. On a machine shared with
    other jobs (a CI runner, a second worker) a timing is only as good as this figure:
    records keep it, tables flag timings taken with more than ``BUSY_CORES`` of it, and the
    regression gate will not call such a timing a regression. The clock ticks at
    ``SC_CLK_TCK`` (usually 100 Hz), so over a block shorter than about a second the figure
    is coarse: ``window_s`` says how long it was. None where ``/proc`` is missing.

    ``with OtherLoad() as load: ...`` or ``load = OtherLoad().start(); ...; load.stop()``.
    """

    def __init__(self) -> None:
        self.cores: float | None = None
        self.window_s: float | None = None
        self._start: tuple[int, int] | None = None

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        return busy, int(own[11]) + int(own[12])  # utime + stime of this process

    def start(self) -> OtherLoad:
        self._start, self._t0 = self._read(), time.perf_counter()
        return self

    def stop(self) -> OtherLoad:
        end, wall = self._read(), time.perf_counter() - self._t0
        self.window_s = wall
        if self._start is not None and end is not None and wall > 0:
            other = (end[0] - self._start[0]) - (end[1] - self._start[1])
            self.cores = max(0.0, other * _TICK_S / wall)
        return self

    def __enter__(self) -> OtherLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def as_dict(self) -> dict:
        """What records keep: ``other_cores``, ``window_s``, the machine's ``cpu_count`` and
        ``busy`` (None when it could not be read)."""
        return {"other_cores": self.cores, "window_s": self.window_s, "cpu_count": os.cpu_count(),
                "busy": None if self.cores is None else self.cores > BUSY_CORES}


def busy_timing(load: dict | None) -> bool:
    """Whether a recorded load (``OtherLoad.as_dict``) marks its timing as taken under load."""
    return bool(load and load.get("busy"))


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of the code inside ``with PeakMemory(device) as mem:``.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` (and the reserved peak).
    CPU: the process's peak resident set. On Linux the high-water mark is reset first
    (``/proc/self/clear_refs``), so the peak belongs to this block; elsewhere it falls back
    to ``ru_maxrss``, the peak of the whole process so far, and says so in ``method``.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._reset_ok = self._reset_hwm()
            self._base = (_status_kib("VmRSS") or 0) * 1024
        return self

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
            return True
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        mib = 1024 * 1024
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result = {
                "method": "torch.cuda.max_memory_allocated",
                "peak_mib": peak / mib,
                "peak_above_start_mib": (peak - self._base) / mib,
                "peak_reserved_mib": torch.cuda.max_memory_reserved(self.device) / mib,
            }
        elif self._reset_ok and _status_kib("VmHWM") is not None:
            peak = (_status_kib("VmHWM") or 0) * 1024
            self.result = {
                "method": "process peak RSS (VmHWM after clear_refs)",
                "peak_mib": peak / mib,
                "peak_above_start_mib": max(peak - self._base, 0) / mib,
            }
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.result = {
                "method": "ru_maxrss (whole-process high-water mark)",
                "peak_mib": peak / mib,
                "peak_above_start_mib": max(peak - self._base, 0) / mib,
            }
