"""The bad-input corpus: every input here must be refused at the door, cleanly.

Classes of input (the files say what each one is):

- ``suite-files/*.yaml``: broken suites, run through ``validate`` and ``run --dry-run``;
- ``spec-files/<kind>/*.yaml``: broken method, dataset, sampler and hardware files, put
  into a private copy of ``specs/`` and validated there;
- ``overrides.tsv``: ``--set`` values applied to a good suite, through ``validate`` and
  ``run --dry-run``;
- ``commands.tsv``: command lines that are wrong in themselves;
- damaged results folders (``DAMAGES``, applied to a copy of a finished one): garbage,
  truncated or mis-shaped records and ``suite.json``; here the right answer is not exit 2
  but a warning that names the file while ``leaderboard``, ``report`` and ``claims`` read
  the rest, and a resumed ``run`` that redoes what was lost.

An outcome is *clean* when the command exits with the expected status, no exception
escapes ``main`` (no traceback), it answers within the time limit, the expected text is
in the last line of stderr, and stderr says nothing else (one line for a spec error;
argparse's usage line and a run's plan line may come before it).

``python -m tests.bad_inputs.corpus`` prints the counts (tried / clean / other).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
SPECS = PROJECT / "specs"
TIME_LIMIT_S = 30  # any input, however large it claims to be, is answered within this
GOOD_SUITE = """name: corpus
seeds: [0]
budget:
  train: {steps: 10}
  eval: {num_samples: 64, warmup: 0, repeats: 1}
datasets: [moons]
methods: [icfm]
samplers: [euler-1]
metrics: [w2, nfe]
claims:
  - {source: {paper: the corpus}, dataset: moons, method: icfm, metric: w2, value: 1.0, tolerance: {rel: 0.5}}
"""


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str  # text of the error line; for status 0, "warning text && other text && ..."
    # (an empty warning text: no warning required)
    status: int = 2  # 2: refused; 0: a damaged results folder read with a warning
    damage: str | None = None  # applied to a fresh copy of the finished results folder


@dataclass
class Outcome:
    code: int | None
    err: str
    out: str
    escaped: str | None = None  # an exception that escaped main, with its traceback
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def _header(path: Path) -> dict[str, str]:
    meta = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.startswith("# ") or ": " not in line:
            break
        key, _, value = line[2:].partition(": ")
        meta[key] = value
    return meta


def _tsv(path: Path) -> Iterator[list[str]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            yield line.split("\t")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage \x89PNG")


def _first_record(results: Path) -> Path:
    return sorted((results / "records").glob("*.json"))[0]


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


DAMAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    # name: (what to do to a finished results folder, text the warning must contain)
    "garbage-record": (lambda r: _garbage(_first_record(r)), "skipped unreadable record"),
    "truncated-record": (lambda r: _first_record(r).write_text(_first_record(r).read_text()[:50]),
                         "skipped unreadable record"),
    "empty-record": (lambda r: _first_record(r).write_text(""), "skipped unreadable record"),
    "list-record": (lambda r: _first_record(r).write_text("[1, 2]"), "expected a JSON object"),
    "record-missing-key": (lambda r: _edit_json(_first_record(r), lambda d: d.pop("metrics")), "field 'metrics'"),
    "record-wrong-type": (lambda r: _edit_json(_first_record(r), lambda d: d.update(seed="zero")), "field 'seed'"),
    "record-not-utf8": (lambda r: _first_record(r).write_bytes(b'{"key": "caf\xe9"}'), "skipped unreadable record"),
    "suite-json-garbage": (lambda r: _garbage(r / "suite.json"), "ignored unreadable"),
    "suite-json-list": (lambda r: (r / "suite.json").write_text("[]"), "ignored unreadable"),
    "suite-json-no-suite": (lambda r: (r / "suite.json").write_text('{"schema": 1}'), "ignored unreadable"),
    "suite-json-huge-precision": (
        lambda r: _edit_json(r / "suite.json", lambda d: d["suite"]["leaderboard"].update(precision=10**9)),
        "ignored unusable leaderboard options"),
}


def cases(work: Path) -> list[Case]:
    """Every case, with the files it needs made under ``work`` (an empty folder)."""
    suite = work / "good.yaml"
    suite.write_text(GOOD_SUITE)
    specs_copy = work / "specs"
    shutil.copytree(SPECS, specs_copy)
    never = str(work / "never")  # a --results folder no refused run may create
    out: list[Case] = []
    for path in sorted((HERE / "suite-files").glob("*.yaml")):
        meta = _header(path)
        extra = shlex.split(meta.get("args", ""))
        out.append(Case(f"validate {path.name}", ["--specs", str(SPECS), "validate", str(path), *extra],
                        meta["expect"]))
        out.append(Case(f"run {path.name}", ["--specs", str(SPECS), "run", str(path), "--dry-run", "--results",
                                              never, *extra], meta["expect"]))
    for path in sorted((HERE / "spec-files").glob("*/*.yaml")):
        target = specs_copy / path.parent.name / path.name
        shutil.copy(path, target)
        out.append(Case(f"validate {path.parent.name}/{path.name}",
                        ["--specs", str(specs_copy), "validate", str(target)], _header(path)["expect"]))
    for name, value, expect in _tsv(HERE / "overrides.tsv"):
        out.append(Case(f"validate --set {name}", ["--specs", str(SPECS), "validate", str(suite), "--set", value],
                        expect))
        out.append(Case(f"run --set {name}", ["--specs", str(SPECS), "run", str(suite), "--set", value,
                                              "--dry-run", "--results", never], expect))
    file = work / "a-file"
    file.write_text("not a folder\n")
    empty = work / "empty"
    empty.mkdir()
    for name, args, expect in _tsv(HERE / "commands.tsv"):
        argv = shlex.split(args.format(suite=suite, tmp=empty, file=file, results=work / "results"))
        out.append(Case(f"command {name}", argv if argv[0] == "--specs" else ["--specs", str(SPECS), *argv], expect))
    for damage, (_, warning) in DAMAGES.items():
        for command in ("leaderboard", "report", "claims", "run"):
            argv = {"run": ["--specs", str(SPECS), "run", str(suite), "--no-progress", "--results", "{results}"],
                    "report": ["report", "{results}", "--out", "{results}/report"]}.get(command, [command, "{results}"])
            expect = warning
            if command == "run":  # a resumed run repairs what it can: it redoes a lost record,
                # and rewrites suite.json without a word
                expect = " && 1 cached" if damage.startswith("suite-json") else f"{warning} && 1 ok"
            elif command == "claims" and damage == "suite-json-huge-precision":
                expect = " && 1 inconclusive"  # claims do not use the leaderboard's options
            elif command == "claims" and damage.startswith("suite-json"):
                expect = f"{warning} && make no claims"  # the claims live in the unreadable suite.json
            out.append(Case(f"{command} with {damage}", argv, expect, status=0, damage=damage))
    return out


def make_results(work: Path) -> Path:
    """A finished results folder of the good suite (a few seconds of CPU)."""
    from harness.cli import main

    results = work / "results"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--specs", str(SPECS), "run", str(work / "good.yaml"), "--no-progress", "--results",
                     str(results)])
    assert code == 0, "the good suite must run"
    return results


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def run_case(case: Case, work: Path) -> Outcome:
    """Run one case in this process through ``harness.cli.main`` and judge it."""
    from harness.cli import main

    argv = case.argv
    if case.damage is not None:
        results = work / f"damaged-{case.damage}"
        shutil.rmtree(results, ignore_errors=True)
        shutil.copytree(work / "results", results)
        DAMAGES[case.damage][0](results)
        argv = [a.replace("{results}", str(results)) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    escaped, code = None, None
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 2
    except _Timeout:
        escaped = f"no answer within {TIME_LIMIT_S} s"
    except BaseException as exc:  # noqa: BLE001 - reported as the traceback a user would see
        escaped = "".join(traceback.format_exception(exc))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    outcome = Outcome(code, err.getvalue(), out.getvalue(), escaped, time.perf_counter() - start)
    _judge(case, outcome)
    return outcome


def _judge(case: Case, o: Outcome) -> None:
    lines = [line for line in o.err.strip().splitlines() if line]
    if o.escaped:
        o.problems.append(f"exception escaped: {o.escaped.strip().splitlines()[-1]}")
        return
    if o.code != case.status:
        o.problems.append(f"exit status {o.code}, expected {case.status}")
    if "Traceback" in o.err:
        o.problems.append("a traceback on stderr")
    if case.status == 2:
        allowed_before = ("usage:", "suite ")  # argparse's usage (and its continuation); run's plan line
        if not lines:
            o.problems.append("nothing on stderr")
            return
        if "validate" in case.argv:  # validate reports every error of a file, one located line each
            unlocated = [line for line in lines if not re.match(r"^([^\s:]+(:\d+)?: |error: |--set .*: |usage:| )", line)]
            if unlocated:
                o.problems.append(f"an error line without a place: {unlocated[0]!r}")
            if not any(case.expect in line for line in lines):
                o.problems.append(f"expected {case.expect!r} in one of {lines[:4]!r}")
            return
        extra = [line for line in lines[:-1] if not line.startswith(allowed_before) and not line.startswith(" ")]
        if extra:
            o.problems.append(f"more than one error line: {extra[0]!r}")
        if case.expect not in lines[-1]:
            o.problems.append(f"expected {case.expect!r} in {lines[-1]!r}")
        return
    first, *rest = case.expect.split(" && ")  # every part on some line; the first one a warning
    everything = lines + o.out.splitlines()
    if first and not any(first in line and "warning" in line for line in lines):
        o.problems.append(f"no warning containing {first!r}: {lines[:3]}")
    for part in rest:
        if not any(part in line for line in everything):
            o.problems.append(f"no line containing {part!r}: {lines[-3:]}")


def run_corpus(verbose: bool = False) -> dict[str, int]:
    counts = {"tried": 0, "clean exit 2": 0, "clean warning, exit 0": 0, "other": 0}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        all_cases = cases(work)
        make_results(work)
        for case in all_cases:
            outcome = run_case(case, work)
            counts["tried"] += 1
            if not outcome.clean:
                counts["other"] += 1
                print(f"NOT CLEAN {case.name}: {'; '.join(outcome.problems)}")
            elif case.status == 2:
                counts["clean exit 2"] += 1
            else:
                counts["clean warning, exit 0"] += 1
            if verbose:
                print(f"{case.name} ({outcome.seconds:.2f} s): {(outcome.err.strip().splitlines() or [''])[-1]}")
    return counts


if __name__ == "__main__":
    import sys

    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers the implementations

    result = run_corpus(verbose="-v" in sys.argv)
    print(", ".join(f"{k}: {v}" for k, v in result.items()))
    sys.exit(1 if result["other"] else 0)
