"""Shared fixtures: the project's specs, a private copy of them, and the CLI as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import harness.metrics  # noqa: F401  registers the metrics
import implementations  # noqa: F401  registers methods, datasets, solvers, networks, optimisers

PROJECT = Path(__file__).resolve().parent.parent
SPECS = PROJECT / "specs"

# A tiny budget that keeps end-to-end runs to a few seconds.
TINY = ["budget.train.steps=40", "budget.eval.num_samples=256", "budget.eval.repeats=2", "budget.eval.warmup=0"]


@pytest.fixture
def spec_root(tmp_path: Path) -> Path:
    """A private copy of specs/ that a test may add broken files to."""
    root = tmp_path / "specs"
    shutil.copytree(SPECS, root)
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("FLOWGAUGE_SPECS", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd or PROJECT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path

def expected_calls(convention: str, steps: int) -> int | None:
    """Calls a solver declaring ``convention`` ("N", "2N", "2N-1", ...) makes in ``steps``
    steps; None for "counted" (adaptive) solvers."""
    match = re.fullmatch(r"(\d*)N(?:\s*([+-])\s*(\d+))?", convention)
    if match is None:
        assert convention == "counted", f"unknown NFE convention {convention!r}"
        return None
    per_step = int(match.group(1) or 1)
    offset = int(match.group(3) or 0) * (-1 if match.group(2) == "-" else 1)
    return per_step * steps + offset
