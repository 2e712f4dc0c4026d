"""Processes seen through Linux /proc: a run's spawned workers, and whether a process
lives. Shared by the executor tests and scripts/stress_interrupts.py."""

from __future__ import annotations

from pathlib import Path


def workers(pid: int) -> set[int]:
    """Live spawned worker processes whose parent is ``pid``."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not reaped, is not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
