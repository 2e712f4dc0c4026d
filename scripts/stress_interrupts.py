"""Kill a suite at random moments, resume it, and check that nothing was lost.

Each trial starts a fresh results folder and interrupts ``flowgauge run`` one to three
times at a random moment, each time one of:

- ``driver-kill``:   SIGKILL to the driver of a ``--workers 2`` run;
- ``driver-term``:   SIGTERM to the driver of a ``--workers 2`` run;
- ``worker-kill``:   SIGKILL to one of its worker processes (the system's OOM killer);
- ``inline-kill``:   SIGKILL to an inline run;
- ``inline-int``:    SIGINT (Ctrl-C) to an inline run;

then resumes with an uninterrupted run and compares the records with those of one
uninterrupted reference run:

- lost:       a record of the reference missing after the resume;
- duplicated: two record files with one key;
- corrupt:    a record that does not read back, or a temporary file left behind;
- different:  a quality metric (w2, mmd, nfe, steps) not bitwise equal to the reference's;
- orphans:    a worker process still alive 3 s after its driver was killed or stopped.

An interrupt counts only when the run's exit status shows it took effect (-9 for SIGKILL,
143 for SIGTERM, 130 for Ctrl-C, 1 for a killed worker's failed runs).

    python scripts/stress_interrupts.py --trials 10 [--seed 0] [--out /tmp/stress]

Exit status 0 when every count is 0. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
from tests.processes import alive  # noqa: E402
from tests.processes import workers as worker_pids  # noqa: E402
SUITE = """name: stress
seeds: [0, 1]
budget:
  train: {steps: 250, log_every: 50}
  eval: {num_samples: 400, warmup: 0, repeats: 1}
datasets: [moons, checkerboard]
methods: [icfm, otcfm, 2-rectified-flow]
samplers: [euler-8, heun-8]
metrics: [w2, mmd, nfe, steps]
"""
QUALITY = ("w2", "mmd", "nfe", "steps")
MODES = ("driver-kill", "driver-term", "worker-kill", "inline-kill", "inline-int")


def _default_signals() -> None:
    # A shell starts background jobs with SIGINT ignored, and the ignore is inherited: the
    # run would never see the Ctrl-C this script sends. Give it the terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(suite: Path, results: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    args = [sys.executable, "-m", "harness.cli", "--specs", str(PROJECT / "specs"), "run", str(suite),
            "--results", str(results), "--no-progress", "--workers", str(workers)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True,  # its own group: our Ctrl-C never reaches it
                            preexec_fn=_default_signals)


# The exit status that shows an interrupt took effect.
EFFECT = {"driver-kill": -signal.SIGKILL, "driver-term": 143, "worker-kill": 1, "inline-kill": -signal.SIGKILL,
          "inline-int": 130}


def _records(results: Path) -> tuple[dict[str, dict], int, int]:
    """(key -> record, duplicated keys, unreadable files or leftover temporaries)."""
    keys: Counter[str] = Counter()
    records, corrupt = {}, 0
    for path in (results / "records").glob("*.json"):
        try:
            record = json.loads(path.read_text())
            keys[record["key"]] += 1
            records[record["key"]] = record
        except (OSError, ValueError, KeyError, TypeError):
            corrupt += 1
    corrupt += sum(1 for _ in results.rglob(".*.tmp"))
    return records, sum(n - 1 for n in keys.values() if n > 1), corrupt


def _interrupt(mode: str, suite: Path, results: Path, rng: random.Random) -> dict:
    workers = 1 if mode.startswith("inline") else 2
    proc = _start(suite, results, workers)
    time.sleep(rng.uniform(1.5, 14.0))  # start-up takes ~3 s; the whole suite ~30-60 s
    if proc.poll() is not None:
        return {"mode": mode, "hit": False, "orphans": 0}
    workers_before = sorted(worker_pids(proc.pid))
    target = proc.pid
    sig = {"driver-kill": signal.SIGKILL, "driver-term": signal.SIGTERM, "worker-kill": signal.SIGKILL,
           "inline-kill": signal.SIGKILL, "inline-int": signal.SIGINT}[mode]
    if mode == "worker-kill":
        if not workers_before:
            proc.wait()
            return {"mode": mode, "hit": False, "orphans": 0}
        target = rng.choice(workers_before)
    os.kill(target, sig)
    if mode == "worker-kill":
        proc.wait(timeout=600)  # the suite goes on without it and finishes
    else:
        proc.wait(timeout=120)
    time.sleep(3.0)
    orphans = [c for c in workers_before if alive(c) and mode != "worker-kill"]
    for pid in orphans:  # leave the machine clean whatever happened
        os.kill(pid, signal.SIGKILL)
    tail = (proc.stderr.read() if proc.stderr else "").strip().splitlines()[-1:]
    if proc.returncode != EFFECT[mode]:  # it ended on its own first: not an interrupt
        return {"mode": mode, "hit": False, "orphans": len(orphans), "exit": proc.returncode, "stderr_tail": tail}
    return {"mode": mode, "hit": True, "orphans": len(orphans), "exit": proc.returncode, "stderr_tail": tail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/flowgauge-stress"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    suite = args.out / "stress.yaml"
    suite.write_text(SUITE)

    start = time.time()
    ref_dir = args.out / "reference"
    ref = _start(suite, ref_dir, 1)
    ref.wait()
    reference, _, _ = _records(ref_dir)
    print(f"reference: {len(reference)} records in {time.time() - start:.0f} s (exit {ref.returncode})")
    if ref.returncode != 0 or not reference:
        return 1

    totals = Counter()
    for trial in range(args.trials):
        results = args.out / f"trial{trial}"
        events = [_interrupt(rng.choice(MODES), suite, results, rng) for _ in range(rng.randint(1, 3))]
        resume = _start(suite, results, rng.choice([1, 2]))
        resume.wait(timeout=900)
        records, duplicated, corrupt = _records(results)
        lost = sum(1 for k in reference if k not in records)
        different = sum(1 for k, r in reference.items() if k in records and any(
            records[k]["metrics"].get(m) != r["metrics"].get(m) for m in QUALITY))
        not_ok = sum(1 for r in records.values() if r["status"] != "ok")
        hits = [e for e in events if e["hit"]]
        orphans = sum(e["orphans"] for e in events)
        totals.update(interrupts=len(hits), lost=lost, duplicated=duplicated, corrupt=corrupt, different=different,
                      orphans=orphans, not_ok=not_ok, resume_failed=int(resume.returncode != 0))
        for e in hits:
            totals[e["mode"]] += 1
        print(f"trial {trial}: {', '.join(e['mode'] + ('' if e['hit'] else ' (missed: the run ended first)') for e in events)}"
              f" -> resume exit {resume.returncode}; lost {lost}, duplicated {duplicated}, corrupt {corrupt}, "
              f"different {different}, not ok {not_ok}, orphans {orphans}")
    print(f"\n{args.trials} trials, {totals['interrupts']} interrupts "
          f"({', '.join(f'{m} {totals[m]}' for m in MODES)}) in {time.time() - start:.0f} s")
    counts = ("lost", "duplicated", "corrupt", "different", "not_ok", "orphans", "resume_failed")
    print(", ".join(f"{c} {totals[c]}" for c in counts))
    return 0 if not any(totals[c] for c in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
