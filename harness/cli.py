"""The ``flowgauge`` command: the composition root, the only module that imports both the
harness and the implementations. Heavy imports (torch) happen inside the commands, so
``flowgauge --help`` returns at once.

Exit status: 0 success; 1 a run failed (a harness or implementation error, recorded);
2 bad input (spec errors, unknown names, bad arguments) or a results folder that cannot be
written (full disk, read-only, a file); 3 ``claims --strict`` found a claim
not reproduced; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

EXIT_FAILED_RUNS = 1
EXIT_USER_ERROR = 2
EXIT_CLAIM_FAILED = 3
EXIT_TERMINATED = 143  # 128 + SIGTERM

LIST_KINDS = ("methods", "datasets", "samplers", "metrics", "suites", "hardware", "solvers", "networks",
              "optimizers")
EXECUTORS = ("auto", "inline", "process", "slurm", "slurm-local")
FORMATS = ("markdown", "latex", "html", "csv", "json")  # harness.leaderboard.FORMATS, without its imports
FORMAT_HELP = ("markdown (default), latex (booktabs), html, csv, or json: the table model with raw numbers, "
               "a versioned document for other tools (see harness/table_json.py)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _positive_number(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowgauge",
        description="Benchmark and reproducibility harness for flow-based generative models.",
    )
    parser.add_argument("--specs", type=Path, default=None,
                        help="specs root (default: $FLOWGAUGE_SPECS, else ./specs)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite and print its leaderboard")
    run.add_argument("suite", nargs="?", default="quickstart", help="suite name under specs/suites/ or a path")
    run.add_argument("--results", type=Path, default=None, help="results directory (default results/runs/<suite>/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec value, e.g. budget.train.steps=100 or methods.icfm.params.path.sigma=0.1")
    run.add_argument("--format", choices=FORMATS, default="markdown", help=FORMAT_HELP)
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--dry-run", action="store_true", help="print the run plan and exit")
    run.add_argument("--estimate", nargs="*", type=Path, metavar="RESULTS",
                     help="print the plan's size and expected cost and exit: trainings and evaluations (and those "
                          "already done), network evaluations, and time from earlier records of the same keys in "
                          "the results folder and any RESULTS folders named")
    run.add_argument("--prune", action="store_true",
                     help="delete records of RESULTS_DIR that the suite no longer produces (older specs)")
    run.add_argument("--only", action="append", default=[], metavar="GLOB",
                     help="run only the trainings whose label DATASET/METHOD/seedN matches GLOB (shell-style, "
                          "repeatable), e.g. '*/2-rectified-flow/*'; their teachers train as needed")
    run.add_argument("--rerun", action="store_true",
                     help="train and evaluate again instead of reusing finished records and trained models (with "
                          "--only: the selected runs; their teachers' models are reused unless selected too)")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="run up to N trainings at once in local worker processes (default: one per core when "
                          "two or more trainings have work, on CPU; see --executor); timings then share the machine, "
                          "which records note")
    run.add_argument("--executor", choices=EXECUTORS, default=None,
                     help="where the trainings run: auto (the default, or $FLOWGAUGE_EXECUTOR: process with one "
                          "worker per core when two or more CPU trainings have work, else inline), inline (one after "
                          "another in this process), process (local worker "
                          "processes, --workers of them, default one per core), slurm (submitit job arrays on a "
                          "Slurm cluster) or slurm-local (the slurm path through submitit's local jobs on this "
                          "machine)")
    slurm = run.add_argument_group("slurm executor (override the hardware spec's slurm: section)")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="sbatch --partition")
    slurm.add_argument("--slurm-time", type=_positive_int, metavar="MINUTES", help="time limit of each task")
    slurm.add_argument("--slurm-gpus", type=_count, metavar="N", help="GPUs for each task")
    slurm.add_argument("--slurm-cpus", type=_positive_int, metavar="N", help="CPU cores for each task")
    slurm.add_argument("--slurm-mem", type=_positive_number, metavar="GB", help="memory for each task")
    slurm.add_argument("--slurm-parallelism", type=_positive_int, metavar="N", help="tasks in flight at once")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a further sbatch option, e.g. account=proj or constraint=a100 (KEY alone: a bare "
                            "flag such as exclusive); repeatable")
    slurm.add_argument("--slurm-folder", type=Path, metavar="DIR",
                       help="submitit's pickles and logs, one folder per job (default RESULTS/slurm/)")
    slurm.add_argument("--eval-shards-as-tasks", action="store_true",
                       help="an evaluation of two or more shards (num_samples / shard_size) samples each shard "
                            "in a task of its own, then merges them in one more; the record is the same")

    validate = sub.add_parser("validate", help="check spec files without running anything")
    validate.add_argument("paths", nargs="+", type=Path, metavar="SPEC")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate.add_argument("--kind", choices=("suites", "methods", "datasets", "samplers", "hardware"), default=None,
                          help="the kind of every SPEC (default: the folder it is in, else what its keys say)")

    lst = sub.add_parser("list", help="list what specs and registries provide; 'list params NAME': its parameters")
    lst.add_argument("kind", choices=(*LIST_KINDS, "params"))
    lst.add_argument("name", nargs="?", help="with 'params': a registered implementation, network, solver, "
                                              "optimiser, dataset or metric, e.g. cfm")

    show = sub.add_parser("show", help="print a spec resolved, with every default filled in")
    show.add_argument("spec", metavar="SPEC", help="a spec name (icfm, quickstart, moons, ...) or a file")
    show.add_argument("--kind", choices=("suites", "methods", "datasets", "samplers", "hardware"), default=None,
                      help="the kind of SPEC when its name is used by several kinds")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    claims = sub.add_parser("claims", help="check the published claims of a suite against its records")
    claims.add_argument("results", type=Path, metavar="RESULTS_DIR")
    claims.add_argument("--format", choices=FORMATS, default="markdown", help=FORMAT_HELP)
    claims.add_argument("--strict", action="store_true",
                        help=f"exit {EXIT_CLAIM_FAILED} when a claim is not reproduced, inconclusive or not run "
                             "(claims marked not comparable do not count)")

    report = sub.add_parser("report", help="write report.md with the leaderboard, claims and plots, and report.html "
                                              "(the same, self-contained, with the environment and each run's command)")
    report.add_argument("results", type=Path, metavar="RESULTS_DIR")
    report.add_argument("--out", type=Path, default=None, help="folder for report.md and plots (RESULTS_DIR/report)")

    rekey = sub.add_parser("rekey", help="re-key the records of RESULTS_DIR after an upgrade changed record keys")
    rekey.add_argument("results", type=Path, metavar="RESULTS_DIR")
    rekey.add_argument("--accept-code", action="store_true",
                       help="declare that the implementation code as it stands produces these records' numbers (a "
                            "refactor): records take its fingerprint and new keys, keeping the old one under "
                            "code_accepted. Check first: rerun a slice and compare")
    rekey.add_argument("--note", default=None, help="with --accept-code: how the change was checked, kept in the records")

    cmp = sub.add_parser("compare", help="the regression gate: compare a candidate results folder with a baseline; "
                                         "exit 0 nothing regressed, 1 a regression, 2 cannot compare")
    cmp.add_argument("baseline", type=Path, metavar="BASELINE")
    cmp.add_argument("candidate", type=Path, metavar="CANDIDATE")
    cmp.add_argument("--format", choices=("markdown", "json"), default="markdown")
    cmp.add_argument("--noise", type=Path, default=None,
                     help="A/A noise file from `flowgauge calibrate` (default BASELINE/noise.json when it exists)")
    cmp.add_argument("--k", type=float, default=None, help="multiple of the noise a change must exceed "
                                                           "(default: the baseline suite's gate.k, else 3)")
    cmp.add_argument("--tolerance", action="append", default=[], metavar="METRIC=TOL",
                     help="a metric's practical tolerance: '5%%' relative, '0.01' absolute, '5%%,0.01' both; "
                          "METRIC '*' for all others; repeatable; overrides the suite's gate")
    cmp.add_argument("--timings", choices=("compare", "skip"), default=None,
                     help="skip: leave timing and memory metrics out, e.g. on a CI runner unlike the baseline's "
                          "machine (default: the suite's gate.timings)")
    cmp.add_argument("--metrics", default=None, help="comma-separated metrics to compare (default: all)")
    cmp.add_argument("--out", type=Path, default=None, help="also write the summary to this file")
    cmp.add_argument("--html", type=Path, default=None,
                     help="also write an HTML page with the summary and the two reports side by side")

    cal = sub.add_parser("calibrate", help="run a suite several times (A/A) and write the noise of every metric")
    cal.add_argument("suite", help="suite name under specs/suites/ or a path")
    cal.add_argument("--repeats", type=_positive_int, default=3, metavar="R",
                     help="runs of the suite (default 3; the first goes into RESULTS, the others into "
                          "RESULTS/calibration/repeat-<i>)")
    cal.add_argument("--results", type=Path, default=None, help="results directory (default results/runs/<suite>/)")
    cal.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cal.add_argument("--workers", type=_positive_int, default=1, metavar="N")
    cal.add_argument("--no-progress", action="store_true", help="hide progress bars")

    board = sub.add_parser("leaderboard", help="render the leaderboard of a results directory")
    board.add_argument("results", type=Path, metavar="RESULTS_DIR")
    board.add_argument("--format", choices=FORMATS, default="markdown", help=FORMAT_HELP)
    board.add_argument("--rank-by", default=None, help="metric to rank by (default: the suite's rank_by)")
    board.add_argument("--all", dest="include_older", action="store_true",
                       help="also show records that the suite as last run no longer produces (other settings, older "
                            "specs), each configuration in a row of its own")
    board.add_argument("--view", choices=("ranked", "nfe"), default="ranked",
                       help="ranked: one row per (method, sampler), best first; nfe: quality at NFE, one row per "
                            "method, one column per (NFE, sampler), with training cost")
    return parser


def _load_registries() -> None:
    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers methods, networks, datasets, solvers, optimisers


def cmd_run(args: argparse.Namespace) -> int:
    _load_registries()
    from harness.leaderboard import leaderboard
    from harness.plan import make_plan, select
    from harness.resolve import load_suite
    from harness.runner import Runner

    suite = load_suite(args.suite, args.overrides, root=args.specs)
    results = args.results or Path("results") / "runs" / suite.name
    workers, slurm = _executor(args, suite, results)
    _check_resources(suite, args.suite, devices_here=slurm is None or slurm.cluster == "local")
    plan = make_plan(suite)
    all_keys = set(plan.record_keys)
    if args.only:
        plan = select(plan, args.only)
    how = ""
    if workers is None:
        workers, how = auto_workers(plan, suite.hardware, results, args.rerun)
        how = f", {how}"
    print(f"suite {suite.name}: {len(plan.trainings)} trainings, {plan.num_evals} evaluations "
          f"on {suite.hardware.name} ({suite.hardware.device}){how} -> {results}", file=sys.stderr)
    if args.estimate is not None:
        from harness.estimate import estimate

        print(estimate(plan, results, args.estimate).text())
        return 0
    if args.dry_run:
        for job in plan.trainings:
            for e in plan.evals[job.key]:
                print(f"{e.label}  train={job.key}  record={e.key}")
        return 0
    from harness.environment import dirty_tree_warning

    dirty = dirty_tree_warning(results)
    if dirty:
        print(dirty, file=sys.stderr)
    origin = _origin(args)
    summary = Runner(results, progress=not args.no_progress).run(plan, workers=workers, origin=origin,
                                                             rerun=args.rerun, slurm=slurm)
    from harness.distributed import torchrun_rank

    if (where := torchrun_rank()) is not None and where[0] != 0:
        return 0  # a rank that followed rank 0 under torchrun: rank 0 prints the tables
    from harness.results import stale_records

    stale = stale_records(results, all_keys)
    if stale and args.prune:
        for path in stale:
            path.unlink()
        print(f"pruned {len(stale)} record(s) that the suite no longer produces", file=sys.stderr)
    print(leaderboard(results, args.format, reread_specs=False))  # the suite was resolved a moment ago
    if summary.counts.get("failed"):
        _print_failures(results, all_keys)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    print(f"\n{counts}; records in {results / 'records'}", file=sys.stderr)
    if dirty:
        print(dirty, file=sys.stderr)
    return EXIT_FAILED_RUNS if summary.counts.get("failed") else 0


def _origin(args: argparse.Namespace) -> dict:
    """How the suite was asked for, with absolute paths, so that ``claims`` can read its
    specs again from anywhere: the suite (a name under the specs root, or a file), the
    ``--set`` overrides and the specs root."""
    from harness.resolve import default_specs_root

    suite = Path(args.suite)
    by_path = args.suite.endswith((".yaml", ".yml")) or os.sep in args.suite
    root = args.specs if args.specs is not None else (None if by_path else default_specs_root())
    return {"suite": str(suite.resolve()) if by_path else args.suite, "overrides": list(args.overrides),
            "specs": str(root.resolve()) if root is not None else None}


EXECUTOR_ENV = "FLOWGAUGE_EXECUTOR"  # the default executor when --executor and --workers are not given


def default_executor() -> str:
    """``$FLOWGAUGE_EXECUTOR`` (auto, inline or process), else auto."""
    from harness.errors import SpecError

    value = os.environ.get(EXECUTOR_ENV, "auto") or "auto"
    if value not in ("auto", "inline", "process"):
        raise SpecError(f"${EXECUTOR_ENV}={value!r}: expected auto, inline or process")
    return value


def auto_workers(plan, hardware, results: Path, rerun: bool = False) -> tuple[int, str]:
    """(worker processes, why) of the default executor: on CPU, one worker per core this
    process may use, up to the trainings that still have work in ``results``, when that is
    two or more (each worker's null ``threads`` then takes its share of the cores,
    harness.threads); otherwise inline. A GPU or multi-device run stays inline."""
    from harness.results import final_keys
    from harness.threads import available_cores

    if hardware.device != "cpu" or hardware.devices > 1:
        return 1, "inline, the default off a single CPU"
    done = final_keys(results) if (results / "records").is_dir() and not rerun else set()
    todo = sum(1 for job in plan.trainings if any(e.key not in done for e in plan.evals[job.key]))
    cores = available_cores()
    workers = min(cores, todo)
    if workers < 2:
        return 1, "inline"
    return workers, (f"{workers} worker processes, the default on {cores} cores (timings share the machine; "
                     "--executor inline runs one at a time)")


def _executor(args: argparse.Namespace, suite, results: Path) -> tuple[int | None, object]:
    """(worker processes, the slurm executor or None) that ``run``'s options ask for:
    ``--executor`` (default: process when ``--workers`` N > 1, else ``default_executor()``;
    workers None for auto, which :func:`auto_workers` decides once the plan is known), checked
    against the options that go with each."""
    from harness.errors import SpecError

    kind = args.executor or ("process" if (args.workers or 1) > 1 else default_executor())
    if args.executor is not None and args.workers is not None and kind != "process":
        raise SpecError(f"--workers goes with --executor process, not {kind}")
    from harness.distributed import torchrun_rank

    if torchrun_rank() is not None:  # torchrun started this process: its ranks run the units together
        if kind not in ("inline", "auto"):
            what = f"--workers {args.workers}" if args.workers and args.executor is None else f"--executor {kind}"
            raise SpecError(f"{what}: under torchrun the suite runs inline (torchrun's ranks train each unit "
                            "together); leave out --executor and --workers")
        kind = "inline"
    slurm_flags = [flag for flag, value in _slurm_flags(args).items() if value not in (None, [], False)]
    if slurm_flags and kind not in ("slurm", "slurm-local"):
        raise SpecError(f"{slurm_flags[0]} goes with --executor slurm or slurm-local, not {kind}")
    if kind == "process":
        return args.workers or os.cpu_count() or 1, None
    if kind == "inline":
        return 1, None
    if kind == "auto":
        return None, None  # decided by auto_workers once the plan is known
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SpecError(f"--executor {kind} needs submitit: pip install 'flowgauge[slurm]'") from None
    import shutil

    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if kind == "slurm" and missing:
        raise SpecError(f"--executor slurm: no Slurm here ({' and '.join(missing)} not on PATH); run on a machine "
                        "that submits to the cluster, or try the path on this one with --executor slurm-local")
    from harness.slurm import SlurmExecutor

    options = _slurm_options(args, suite.hardware.slurm)
    folder = args.slurm_folder if args.slurm_folder is not None else results / "slurm"
    return 1, SlurmExecutor(options, folder, "local" if kind == "slurm-local" else "slurm", args.eval_shards_as_tasks)


def _slurm_flags(args: argparse.Namespace) -> dict[str, object]:
    """The slurm options given on the command line, by flag."""
    return {"--slurm-partition": args.slurm_partition, "--slurm-time": args.slurm_time,
            "--slurm-gpus": args.slurm_gpus, "--slurm-cpus": args.slurm_cpus, "--slurm-mem": args.slurm_mem,
            "--slurm-parallelism": args.slurm_parallelism, "--slurm-option": args.slurm_option,
            "--slurm-folder": args.slurm_folder, "--eval-shards-as-tasks": args.eval_shards_as_tasks}


SLURM_FIELDS = {"partition": "--slurm-partition", "time_min": "--slurm-time", "gpus_per_task": "--slurm-gpus",
                "cpus_per_task": "--slurm-cpus", "mem_gb": "--slurm-mem", "array_parallelism": "--slurm-parallelism",
                "additional": "--slurm-option"}


def _slurm_options(args: argparse.Namespace, base):
    """The hardware spec's slurm section (or the defaults) with the command line's
    ``--slurm-*`` options over it, validated; a bad value names its flag."""
    from harness.errors import SpecError
    from harness.source import Source
    from harness.spec import SlurmSpec, validate

    data = (base or SlurmSpec()).model_dump()
    flags = _slurm_flags(args)
    for name, flag in SLURM_FIELDS.items():
        if name != "additional" and flags[flag] is not None:
            data[name] = flags[flag]
    for item in args.slurm_option:
        key, eq, value = item.partition("=")
        if (eq and not value) or not key:
            raise SpecError(f"--slurm-option {item!r}: expected KEY=VALUE, or KEY alone for a bare flag")
        data["additional"][key] = value if eq else True
    try:
        return validate(SlurmSpec, Source(data))
    except SpecError as err:
        message = err.message.split(" (and ", 1)[0]
        name, _, rest = message.partition(": ")
        flag = SLURM_FIELDS.get(name.split(".")[0], "--slurm-option")
        raise SpecError(f"{flag}: {rest if name in SLURM_FIELDS else message}") from None


def _check_resources(suite, ref: str, devices_here: bool = True) -> None:
    """A device this machine does not have, or a dataset whose files are not here, is a
    mistake in the command, found before anything runs (not a column of failed records).
    ``devices_here`` False: the runs go to other machines (a Slurm cluster's nodes), whose
    devices are not checked here.
    A dataset implementation may define ``check(params)``, and a feature space (a metric's
    network weights) ``check(options)``, raising FileNotFoundError with a message that
    names the missing file."""
    from harness import registry as reg
    from harness.errors import SpecError
    from harness.features import FEATURES

    for dataset in suite.datasets:
        entry = reg.DATASETS.get(dataset.implementation)
        check = getattr(entry, "check", None)
        if check is not None:
            try:
                check(entry.Params.model_validate(dataset.params))
            except FileNotFoundError as err:
                raise SpecError(f"{ref}: {err}") from None
    for spec in suite.metrics:
        entry = reg.METRICS.get(spec.name)
        if entry.features is None:
            continue
        request = entry.features(entry.Params.model_validate(spec.params))
        check = getattr(FEATURES.get(request.space), "check", None)
        if check is not None:
            try:
                check(dict(request.options))
            except FileNotFoundError as err:
                raise SpecError(f"{ref}: metric {spec.name}: {err}") from None
    if suite.hardware.device == "cuda" and devices_here:
        import torch

        if not torch.cuda.is_available():
            raise SpecError(f"{ref}: hardware {suite.hardware.name!r} asks for device cuda, and this machine has "
                            "none (torch.cuda.is_available() is False); use --set hardware=cpu")


def _print_failures(results: Path, keys: set[str]) -> None:
    """Each failed run of this plan on the terminal: its exception, where it was raised
    (the innermost file:line of the traceback) and its record."""
    import re

    from harness.results import read_records, record_path

    for r in read_records(results):
        if r["key"] not in keys or r["status"] != "failed":
            continue
        error = str(r.get("error") or "unknown error").strip()
        first = error.splitlines()[0]
        frames = re.findall(r'File "([^"]+)", line (\d+)', error)
        where = f" at {frames[-1][0]}:{frames[-1][1]}" if frames else ""
        label = f"{r['dataset']}/{r['method']}/{r['sampler']}/seed{r['seed']}"
        print(f"failed: {label}: {first}{where}\n  record: {record_path(results, r['key'], label)}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    _load_registries()
    from harness.errors import SpecError
    from harness.resolve import Override, Resolver
    from harness.source import display_path

    overrides = [Override.parse(text) for text in args.overrides]
    bad = 0
    for path in args.paths:  # every file is checked, whatever the ones before it gave
        try:
            spec = Resolver(args.specs, overrides).validate_file(path, args.kind)
        except SpecError as err:  # every error of the file, one per line
            for line in err.all():
                print(line if err.loc is not None else f"error: {line}", file=sys.stderr)
            bad += 1
            continue
        print(f"{display_path(path)}: ok ({type(spec).__name__.removesuffix('Spec').lower()} {spec.name!r})")
    if bad and len(args.paths) > 1:
        print(f"{bad} of {len(args.paths)} files have errors", file=sys.stderr)
    return EXIT_USER_ERROR if bad else 0


def cmd_list(args: argparse.Namespace) -> int:
    from harness.errors import SpecError

    if args.kind == "params":
        return _list_params(args.name)
    if args.name is not None:
        raise SpecError(f"list {args.kind} takes no name (did you mean: flowgauge list params {args.name})")
    if args.kind in ("metrics", "solvers", "networks", "optimizers"):
        _load_registries()
        from harness import registry as reg

        if args.kind == "metrics":
            for name, m in reg.METRICS.items():
                print(f"{name:20s} {m.label:28s} {m.description}")
        else:
            registry = {"solvers": reg.SOLVERS, "networks": reg.NETWORKS, "optimizers": reg.OPTIMIZERS}[args.kind]
            for name, entry in registry.items():
                doc = (entry.__doc__ or "").strip().splitlines()
                print(f"{name:20s} {doc[0] if doc else ''}")
        return 0
    from harness.errors import SpecError
    from harness.resolve import Resolver

    resolver = Resolver(args.specs)
    detail = {"methods": "implementation", "datasets": "implementation", "samplers": "solver",
              "hardware": "device", "suites": None}[args.kind]
    for path in sorted((resolver.root / args.kind).glob("*.yaml")):
        try:
            data = resolver.load_file(args.kind, path).data  # extends followed, not validated
        except SpecError as err:
            print(f"{path.stem:24s} (invalid: {err})")
            continue
        extra = f"[{data.get(detail, '?')}]" if detail else ""
        print(f"{path.stem:26s} {extra:24s} {data.get('description', '')}".rstrip())
    return 0


PARAM_REGISTRIES = ("METHODS", "NETWORKS", "OPTIMIZERS", "SOLVERS", "DATASETS", "METRICS")


def _list_params(name: str | None) -> int:
    """Every parameter of the entries registered as ``name``, from their pydantic models."""
    _load_registries()
    from tabulate import tabulate

    from harness import registry as reg
    from harness.describe import parameter_rows
    from harness.errors import SpecError

    registries = [getattr(reg, attr) for attr in PARAM_REGISTRIES]
    everything = sorted({n for r in registries for n in r.names()})
    if name is None:
        raise SpecError("list params NAME: name an implementation, network, optimiser, solver, dataset or metric: "
                        + ", ".join(everything))
    found = [r for r in registries if name in r]
    if not found:
        raise SpecError(f"list params: nothing is registered as {name!r}" + reg.did_you_mean(name, everything))
    for i, registry in enumerate(found):
        entry = registry.get(name)
        doc = " ".join((entry.__doc__ or "").strip().split("\n\n")[0].split()) if registry is not reg.METRICS \
            else entry.description
        if i:
            print()
        print(f"{registry.kind} {name}: {doc}".rstrip())
        model = registry.params(name) if registry is not reg.METRICS else entry.Params
        rows = parameter_rows(model)
        print(tabulate(rows, ["key", "type", "default", "description"], tablefmt="github", disable_numparse=True) if rows
              else "(no parameters)")
        if registry is reg.METHODS:
            from harness.spec import MethodSpec

            fields = MethodSpec.model_fields
            network = fields["network"].get_default(call_default_factory=True)["name"]
            optimizer = fields["optimizer"].get_default(call_default_factory=True)["name"]
            print(f"\nIn a method spec these go under params:. Beside them, with their defaults: network: "
                  f"{{name: {network}}} (list params {network}), optimizer: {{name: {optimizer}}} (list params "
                  f"{optimizer}), batch_size: {fields['batch_size'].default}, teacher: null. "
                  "flowgauge show METHOD prints one spec resolved.")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """A spec resolved as a run would use it: ``extends`` followed, defaults filled in."""
    _load_registries()
    import yaml

    from harness.errors import SpecError
    from harness.registry import did_you_mean
    from harness.resolve import Override, Resolver
    from harness.spec import SPEC_KINDS

    resolver = Resolver(args.specs, [Override.parse(text) for text in args.overrides])
    path = Path(args.spec)
    if not (args.spec.endswith((".yaml", ".yml")) or os.sep in args.spec):
        kinds = [k for k in ([args.kind] if args.kind else SPEC_KINDS) if (resolver.root / k / f"{args.spec}.yaml").is_file()]
        if not kinds:
            names = sorted({n for k in SPEC_KINDS for n in resolver.names(k)})
            raise SpecError(f"show: no spec named {args.spec!r} under {resolver.root}" + did_you_mean(args.spec, names))
        if len(kinds) > 1:
            raise SpecError(f"show: {args.spec!r} names a spec of each of {', '.join(kinds)}; give --kind")
        path = resolver.root / kinds[0] / f"{args.spec}.yaml"
    spec = resolver.validate_file(path, args.kind)
    kind = type(spec).__name__.removesuffix("Spec").lower()
    print(f"# {kind} {spec.name!r}, resolved from {path} with every default (flowgauge show)")
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100).rstrip())
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    _load_registries()
    from harness.errors import SpecError
    from harness.leaderboard import leaderboard, leaderboard_options, nfe_leaderboard
    from harness.registry import did_you_mean

    if not (args.results / "records").is_dir():
        raise SpecError(f"no records folder in {args.results} (expected {args.results / 'records'}/*.json)")
    if args.rank_by is not None:
        metrics, _, _ = leaderboard_options(args.results)
        if metrics and args.rank_by not in metrics:
            raise SpecError(f"--rank-by: {args.rank_by!r} is not a metric of these records"
                            + did_you_mean(args.rank_by, metrics))
    board = nfe_leaderboard if args.view == "nfe" else leaderboard
    print(board(args.results, args.format, args.rank_by, include_older=args.include_older))
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    _load_registries()
    from harness.errors import SpecError
    from harness.leaderboard import claims_report

    if not (args.results / "suite.json").is_file():
        raise SpecError(f"no suite.json in {args.results}: not a flowgauge results directory")
    text, results = claims_report(args.results, args.format)
    if not results:
        if args.format == "json":
            from harness import table_json

            print(table_json.dumps(table_json.claims_document([], ["the suite and its methods make no claims"])))
        else:
            print("the suite and its methods make no claims")
        return 0
    print(text)
    from harness.claims import VERDICTS

    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    print(", ".join(f"{n} {v}" for v, n in counts.items() if n), file=sys.stderr)
    failing = len(results) - counts["reproduced"] - counts["not comparable"]
    return EXIT_CLAIM_FAILED if args.strict and failing else 0


def cmd_rekey(args: argparse.Namespace) -> int:
    from harness.errors import SpecError
    from harness.results import rekey_records

    if not (args.results / "records").is_dir():
        raise SpecError(f"no records/ in {args.results}: not a flowgauge results directory")
    _load_registries()
    if args.note is not None and not args.accept_code:
        raise SpecError("rekey --note goes with --accept-code")
    changed = rekey_records(args.results, accept_code=args.accept_code, note=args.note)
    print(f"{changed} record(s) re-keyed in {args.results / 'records'}")
    return 0


def _tolerances(items: list[str]) -> dict:
    """``METRIC=5%``, ``METRIC=0.01`` or ``METRIC=5%,0.01`` as gate tolerances."""
    from harness.errors import SpecError
    from harness.spec import Tolerance

    out = {}
    for item in items:
        metric, sep, value = item.partition("=")
        relative = absolute = 0.0
        try:
            if not sep or not metric.strip():
                raise ValueError
            for part in value.split(","):
                part = part.strip()
                if part.endswith("%"):
                    relative = float(part[:-1]) / 100
                else:
                    absolute = float(part)
            out[metric.strip()] = Tolerance(relative=relative, absolute=absolute)
        except ValueError:
            raise SpecError(f"--tolerance {item!r}: expected METRIC=TOL with TOL '5%', '0.01' or '5%,0.01' "
                            "(non-negative numbers)") from None
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    _load_registries()
    import json

    from harness.compare import compare, gate_of, read_noise, render_markdown, to_json
    from harness.errors import SpecError
    from harness.results import write_atomic

    for folder in (args.baseline, args.candidate):
        if not (folder / "records").is_dir():
            raise SpecError(f"no records folder in {folder} (expected {folder / 'records'}/*.json)")
    gate = gate_of(args.baseline)
    updates: dict = {}
    if args.k is not None:
        if not (0 < args.k <= 100):
            raise SpecError(f"--k {args.k}: expected a number in (0, 100]")
        updates["k"] = args.k
    if args.timings is not None:
        updates["timings"] = args.timings
    if args.tolerance:
        updates["tolerances"] = {**gate.tolerances, **_tolerances(args.tolerance)}
    gate = gate.model_copy(update=updates)
    noise_path = args.noise or (args.baseline / "noise.json")
    if args.noise is not None and not noise_path.is_file():
        raise SpecError(f"--noise {noise_path}: no such file (write one with `flowgauge calibrate SUITE`)")
    noise = read_noise(noise_path) if noise_path.is_file() else None
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    result = compare(args.baseline, args.candidate, gate, noise, str(noise_path) if noise else None, metrics)
    text = json.dumps(to_json(result), indent=1) + "\n" if args.format == "json" else render_markdown(result)
    print(text, end="")
    if args.out is not None:
        write_atomic(args.out, lambda f: f.write(text.encode("utf-8")))
    if args.html is not None:
        from harness.compare import html_blocks
        from harness.report import write_html_comparison

        print(write_html_comparison(args.baseline, args.candidate, args.html, html_blocks(result)), file=sys.stderr)
    return result.exit_status


def cmd_calibrate(args: argparse.Namespace) -> int:
    _load_registries()
    import json

    from harness.noise import measure_noise, render_noise, repeat_dirs, self_check
    from harness.plan import make_plan
    from harness.resolve import load_suite
    from harness.results import write_atomic
    from harness.runner import Runner

    suite = load_suite(args.suite, args.overrides, root=args.specs)
    _check_resources(suite, args.suite)
    plan = make_plan(suite)
    results = args.results or Path("results") / "runs" / suite.name
    dirs = repeat_dirs(results, args.repeats)
    failed = 0
    for i, folder in enumerate(dirs, 1):
        print(f"calibrate {suite.name}: repeat {i} of {len(dirs)}: {len(plan.trainings)} trainings, "
              f"{plan.num_evals} evaluations -> {folder}", file=sys.stderr)
        summary = Runner(folder, progress=not args.no_progress).run(plan, workers=args.workers, origin=_origin(args))
        failed += summary.counts.get("failed", 0)
    document = measure_noise(dirs)
    document["suite"] = suite.name
    document["self_check"] = self_check(dirs, document, suite.gate)
    path = results / "noise.json"
    write_atomic(path, lambda f: f.write((json.dumps(document, indent=1) + "\n").encode("utf-8")))
    print(render_noise(document, suite.gate.k))
    print(f"noise figures in {path}", file=sys.stderr)
    return EXIT_FAILED_RUNS if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    _load_registries()
    from harness.errors import SpecError
    from harness.report import write_report

    if not (args.results / "records").is_dir():
        raise SpecError(f"no records folder in {args.results} (expected {args.results / 'records'}/*.json)")
    print(write_report(args.results, args.out))
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "validate": cmd_validate, "list": cmd_list, "show": cmd_show, "leaderboard": cmd_leaderboard,
            "claims": cmd_claims, "rekey": cmd_rekey, "compare": cmd_compare, "calibrate": cmd_calibrate}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: workers stopped, finished records kept."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from harness.errors import SpecError, StorageError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(f"error: {err}" if err.loc is None else str(err), file=sys.stderr)
        return EXIT_USER_ERROR
    except StorageError as err:
        resume = "; finished records are kept: free space or fix the folder, then rerun to resume"
        print(f"error: {err}{resume if args.command == 'run' else ''}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (``flowgauge ... | head``): nothing more to say, and Python's
        # own flush at exit must not fail again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as err:
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"{what}; finished records are kept, rerun to resume", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
