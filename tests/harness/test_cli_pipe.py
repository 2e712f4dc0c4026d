"""A CLI stops quietly when its reader goes away (``flowgauge ... | head``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_output_closed_by_the_reader_ends_without_a_traceback():
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    # the JSON of a large committed folder is far more than a pipe holds, so the writer hits
    # the closed pipe mid-output, as `| head` does
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "leaderboard", "results/few-step-2d", "--format",
                             "json"], cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(100)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert first.startswith(b"{")
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 1
