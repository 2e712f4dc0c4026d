"""Honest cost measurements: NFE at the network call, synchronised wall-clock timing
with warm-up and repeats, and true peak memory. See shared/design/measurement.md.
"""

from __future__ import annotations

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
