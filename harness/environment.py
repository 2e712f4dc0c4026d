"""The environment a result was measured in: versions, device, CPU, threads, git state."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str, repo: Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


# Results folders are what runs write, not the code that produced them: a run that rewrites
# committed records must not call its own tree dirty.
RESULTS_PATHSPEC = ":(exclude,glob)results/**"


def dirty_files(repo: Path = REPO_ROOT) -> list[str] | None:
    """Files that differ from the commit (modified, staged or untracked and not ignored),
    outside ``results/``; None when ``repo`` is not a git work tree."""
    status = _git("status", "--porcelain", "--", ".", RESULTS_PATHSPEC, repo=repo)
    if status is None:
        return None
    return [line[3:] for line in status.splitlines() if line.strip()]


def dirty_tree_warning(results_dir: Path, repo: Path = REPO_ROOT) -> str | None:
    """A loud warning when records are about to be written from a dirty tree into a results
    directory that git tracks (committed results): their ``git_commit`` would not identify
    the code that produced them. None when the tree is clean, or the directory is not under
    version control (outside the work tree, or ignored like results/runs/)."""
    files = dirty_files(repo)
    if not files:
        return None
    top = _git("rev-parse", "--show-toplevel", repo=repo)
    target = Path(results_dir).resolve()
    if top is None or not target.is_relative_to(Path(top).resolve()):
        return None
    if _git("check-ignore", "-q", "--no-index", str(target / "records" / "x.json"), repo=repo) is not None:
        return None  # exit 0: ignored
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return (f"WARNING: the working tree has {len(files)} uncommitted change(s) ({shown}), and {results_dir} is "
            "under version control: its records will say git_dirty: true and their commit will not identify "
            "the code. Commit first, then run.")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    import numpy
    import torch

    commit = _git("rev-parse", "HEAD")
    dirty = dirty_files() if commit else None
    env: dict[str, Any] = {
        "flowgauge": harness.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "git_dirty": bool(dirty) if commit else None,
        "git_dirty_files": dirty[:20] if dirty else [],
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("torchdiffeq", "scipy", "pydantic"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is not an error here
            env[name] = None
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def environment(device: str) -> dict[str, Any]:
    """Static facts plus what may change between runs of one process."""
    import torch

    return {
        **_static(),
        "device": device,
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
