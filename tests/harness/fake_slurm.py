"""A Slurm stand-in for tests: ``sbatch``, ``srun``, ``sacct`` and ``scancel`` scripts
that run each job (each task of an array) as a local process with the environment Slurm
gives it, so that submitit's real Slurm path (sbatch scripts, job arrays and their ids,
result pickles, status through sacct, cancellation) runs on a machine without Slurm.

``install(folder)`` writes the scripts into ``folder/bin`` and returns that folder, to put
first on PATH with ``FAKE_SLURM_DIR=folder``; ``folder/scripts/<job>.sh`` keeps every
submitted script, ``folder/cancelled`` lists what scancel was asked to cancel.
"""

from __future__ import annotations

import sys
from pathlib import Path

SBATCH = r'''
import os, re, subprocess, sys
from pathlib import Path

root = Path(os.environ["FAKE_SLURM_DIR"])
script = Path(sys.argv[-1])
text = script.read_text()
counter = root / "counter"
job = int(counter.read_text()) + 1 if counter.exists() else 1000
counter.write_text(str(job))
(root / "scripts").mkdir(exist_ok=True)
(root / "scripts" / f"{job}.sh").write_text(text)
options = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))
tasks = [None]
if "array" in options:
    first, last = options["array"].split("%")[0].split("-")
    tasks = list(range(int(first), int(last) + 1))
(root / "jobs").mkdir(exist_ok=True)
for n, task in enumerate(tasks):
    jid = str(job) if task is None else f"{job}_{task}"
    env = {**os.environ, "SLURM_JOB_ID": str(job * 1000 + n), "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost"}
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task))
    rc = root / "jobs" / f"{jid}.rc"
    process = subprocess.Popen(["sh", "-c", f'bash "$0"; echo $? > "{rc}"', str(script)], env=env,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (root / "jobs" / f"{jid}.pid").write_text(str(process.pid))
print(f"Submitted batch job {job}")
'''

SRUN = r'''
import os, sys

args = sys.argv[1:]
files = {}
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0)
env = os.environ
for option, path in files.items():
    for pattern, value in (("%A", env.get("SLURM_ARRAY_JOB_ID", "")), ("%a", env.get("SLURM_ARRAY_TASK_ID", "")),
                           ("%j", env["SLURM_JOB_ID"]), ("%t", env["SLURM_PROCID"])):
        path = path.replace(pattern, value)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1 if option == "--output" else 2)
os.execvp(args[0], args)
'''

SACCT = r'''
import os, sys
from pathlib import Path

root = Path(os.environ["FAKE_SLURM_DIR"]) / "jobs"
wanted = {sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"}
print("JobID|State|NodeList")
for pid in sorted(root.glob("*.pid")):
    jid = pid.name[:-4]
    if jid.split("_")[0] not in wanted:
        continue
    rc = root / f"{jid}.rc"
    if (root / f"{jid}.cancelled").exists():
        state = "CANCELLED"
    elif rc.exists() and rc.read_text().strip():
        state = "COMPLETED" if rc.read_text().strip() == "0" else "FAILED"
    else:
        state = "RUNNING"
    print(f"{jid}|{state}|localhost")
'''

SCANCEL = r'''
import os, signal, sys
from pathlib import Path

root = Path(os.environ["FAKE_SLURM_DIR"])
for jid in sys.argv[1:]:
    with open(root / "cancelled", "a") as f:
        f.write(jid + "\n")
    pid = root / "jobs" / f"{jid}.pid"
    if pid.exists():
        (root / "jobs" / f"{jid}.cancelled").touch()
        try:
            os.killpg(int(pid.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
'''


def install(folder: Path) -> Path:
    """Write the four commands into ``folder/bin``; return that folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT), ("scancel", SCANCEL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body.lstrip()}")
        path.chmod(0o755)
    return bin_dir
