"""Shared fixtures: the project's specs, a private copy of them, and the CLI (in this
process, or as a subprocess where exit codes and signals are what is tested).

Each test worker uses one torch thread: ``make test`` runs two workers on two cores, and
torch's default (one thread per core in each) made small tests 30 times slower."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import harness.metrics  # noqa: F401  registers the metrics
import implementations  # noqa: F401  registers methods, datasets, solvers, networks, optimisers

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses tests start
# Runs without --executor/--workers go inline in tests (the CLI's default, auto, would start
# worker processes beside pytest's own); tests/harness/test_threads.py tests auto itself.
os.environ["FLOWGAUGE_EXECUTOR"] = "inline"

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


@dataclass
class CliResult:
    """What ``flowgauge ARGS`` returned and printed (the fields of a CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str
    args: list[str] = field(default_factory=list)


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """``flowgauge ARGS`` in this process (torch is already imported): its exit status and
    what it printed. ``cwd`` (default: the project) is the working directory meanwhile."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    saved = os.environ.pop("FLOWGAUGE_SPECS", None)
    try:
        os.chdir(cwd or PROJECT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    finally:
        os.chdir(previous)
        if saved is not None:
            os.environ["FLOWGAUGE_SPECS"] = saved
    return CliResult(code, out.getvalue(), err.getvalue(), list(args))


def run_cli_process(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``flowgauge ARGS`` as a separate process: for exit statuses as the shell sees them."""
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
