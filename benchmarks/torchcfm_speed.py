"""flowgauge vs TorchCFM on TorchCFM's own 2D tutorial protocol, in one process and one run.

Protocol (``specs/benchmarks/torchcfm-tutorial.yaml``): 8 Gaussians -> moons, MLP 3x64 SELU
with time concatenated, Adam lr 1e-3, batch 256, sigma 0.01, for I-CFM and OT-CFM.

Speed: for every repeat and method, TorchCFM's tutorial training loop (their MLP, their
``ConditionalFlowMatcher`` / ``ExactOptimalTransportConditionalFlowMatcher``, their
``sample_8gaussians`` / ``sample_moons``) and flowgauge's ``harness.training.train`` are run
back to back, in alternating order, with the same torch thread count; the ratio
flowgauge / TorchCFM of training steps per second is taken per repeat, and its median
(with min and max) is reported.

Quality: for every seed, both trained models sample 2000 points with dopri5
(atol = rtol = 1e-4) from the same fresh source points, and exact W2 is computed against
the same 2000 fresh points from TorchCFM's ``sample_moons``.

    python benchmarks/torchcfm_speed.py --steps 2000 --repeats 5 --seeds 0 1 2

Exit status: 0 when it ran (1 with ``--check`` when a target was missed), 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "specs" / "benchmarks" / "torchcfm-tutorial.yaml"
DEFAULT_OUT = REPO / "results" / "benchmarks" / "torchcfm_speed.json"

METHODS = ("icfm", "otcfm")
LABELS = {"icfm": "I-CFM", "otcfm": "OT-CFM"}
SUITE_METHOD = {"icfm": "icfm-tutorial", "otcfm": "otcfm-tutorial"}
TARGET_RATIO = {"icfm": 1.5, "otcfm": 2.0}  # the project's stated speed goals
SIGMA = 0.01
BATCH = 256
LR = 1e-3
QUALITY_SEED_OFFSET = 1_000_003  # evaluation draws use their own seeds, apart from training


def _require_torchcfm() -> None:
    try:
        import torchcfm  # noqa: F401
        import torchcfm.utils  # noqa: F401  (imports torchdyn)
    except ImportError as err:
        sys.exit(f"torchcfm is not installed ({err}): pip install -e '.[bench]'")


# --- the TorchCFM side: their tutorial loop, as written there -----------------------------


@dataclass
class Trained:
    library: str
    method: str
    seed: int
    steps: int
    steps_per_s: float
    seconds: float
    final_loss: float
    model: Any  # the velocity callable to sample with
    extra: dict


def torchcfm_train(method: str, steps: int, warmup: int, seed: int) -> Trained:
    import numpy as np
    import torch
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )
    from torchcfm.models.models import MLP
    from torchcfm.utils import sample_8gaussians, sample_moons

    torch.manual_seed(seed)
    np.random.seed(seed)  # TorchCFM's OT plan sampler draws pairs with np.random.choice
    model = MLP(dim=2, time_varying=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    if method == "otcfm":
        fm = ExactOptimalTransportConditionalFlowMatcher(sigma=SIGMA)
    else:
        fm = ConditionalFlowMatcher(sigma=SIGMA)

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        x0 = sample_8gaussians(BATCH)
        x1 = sample_moons(BATCH)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = model(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(warmup):
        step()
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return Trained("torchcfm", method, seed, warmup + steps, steps / seconds, seconds, loss.item(),
                   model, {"warmup_steps": warmup, "timed_steps": steps, "cpu_s": cpu,
                           "cpu_ms_per_step": 1e3 * cpu / steps})


def torchcfm_sample(model: Any, x0: Any, atol: float, rtol: float) -> Any:
    """As in their tutorial: dopri5 on ``torch_wrapper(model)`` from t = 0 to 1 (torchdiffeq)."""
    import torch
    from torchcfm.utils import torch_wrapper
    from torchdiffeq import odeint

    model.eval()
    with torch.no_grad():
        traj = odeint(torch_wrapper(model), x0, torch.tensor([0.0, 1.0]), atol=atol, rtol=rtol,
                      method="dopri5")
    return traj[-1]


# --- the flowgauge side: the runner's own training path -----------------------------------


def load_protocol(steps: int, threads: int | None, prefetch_workers: int | None) -> Any:
    """The suite with ``steps`` optimiser steps in all (TorchCFM's warm-up + timed steps);
    ``threads`` None leaves ``hardware.threads`` null, flowgauge's default (``harness.threads``)."""
    import harness.metrics  # noqa: F401  registers the metrics
    import implementations  # noqa: F401  registers methods, datasets, solvers, networks, optimisers
    from harness.resolve import load_suite

    overrides = [f"budget.train.steps={steps}", f"hardware.threads={'null' if threads is None else threads}"]
    if prefetch_workers is not None:
        overrides.append(f"hardware.prefetch_workers={prefetch_workers}")
    return load_suite(str(SUITE), overrides, root=REPO / "specs")


def flowgauge_train(suite: Any, method: str, seed: int) -> Trained:
    from harness.building import build, configure
    from harness.plan import TrainJob
    from harness.seeding import seed_everything
    from harness.threads import apply_threads
    from harness.training import train

    spec = next(m for m in suite.methods if m.name == SUITE_METHOD[method])
    job = TrainJob(seed, suite.datasets[0], spec, suite.hardware, suite.budget.train)
    device = configure(job.hardware)
    seed_everything(seed)
    built = build(job, device)
    threads_choice = apply_threads(job.hardware, built.method)  # as the runner's Unit does
    cpu = time.process_time()
    result = train(job, built, progress=False)
    cpu = time.process_time() - cpu  # all threads of the process, prefetch workers included
    if result.status != "ok":
        raise RuntimeError(f"flowgauge {method} seed {seed} training {result.status}")
    s = result.stats
    return Trained("flowgauge", method, seed, s["steps"], s["steps_per_s"], s["train_s"], s["final_loss"],
                   (built, result.model),
                   {"wall_s": s["wall_s"], "first_step_s": s["first_step_s"], "train_s": s["train_s"],
                    "train_key": job.key, "cpu_s": cpu, "cpu_ms_per_step": 1e3 * cpu / s["steps"],
                    "torch_threads": torch_threads(), "threads_choice": threads_choice})


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def flowgauge_sample(model: Any, x0: Any, sampler_spec: Any) -> Any:
    import torch

    from harness import registry as reg
    from harness.seeding import generator

    built, net = model
    solver_cls = reg.SOLVERS.get(sampler_spec.solver)
    solver = solver_cls(solver_cls.Params.model_validate(sampler_spec.params))
    net.eval()
    with torch.no_grad():
        solution = built.method.sample(net, x0.to(built.device, built.dtype), solver, generator(0, "eval-method"))
    return solution.x


# --- statistics and reporting -------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "n": len(values)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def environment_info(threads: int, default_threads: int) -> dict[str, Any]:
    import numpy
    import ot
    import torch
    import torchcfm
    import torchdiffeq

    from harness.environment import environment

    env = environment("cpu")
    env.update({
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_default_threads": default_threads,
        "threads_requested": threads,
        "torchcfm": getattr(torchcfm, "__version__", None),
        "pot": ot.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "numpy": numpy.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    })
    try:
        diff = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                              timeout=10).stdout.splitlines()
        env["git_changed_files"] = diff
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def markdown(report: dict[str, Any]) -> str:
    cfg, env = report["config"], report["environment"]
    lines = [
        f"flowgauge vs TorchCFM {env.get('torchcfm')} — 2D tutorial protocol, {cfg['train_steps']} training steps "
        f"on each side (TorchCFM: {cfg['warmup_torchcfm']} warm-up + {cfg['steps']} timed), "
        f"{cfg['repeats']} repeats, torch threads: "
        + (f"{cfg['torchcfm_threads']} for TorchCFM (torch's default), flowgauge's own choice "
           f"({(report['repeats'][0]['flowgauge'].get('threads_choice') if report['repeats'] else 'n/a')}), "
           if cfg.get("threads") == "default" else f"{env['torch_threads']} (both sides), ")
        + f"flowgauge prefetch_workers {cfg['prefetch_workers']}, CPU {env['cpu']} ×{env['cpu_count']}, "
        f"torch {env['torch']}, commit {str(env.get('git_commit'))[:10]}{' (dirty)' if env.get('git_dirty') else ''}",
        "",
        "| method | repeat | seed | TorchCFM steps/s | flowgauge steps/s | ratio | other load, cores (TorchCFM / flowgauge) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["repeats"]:
        o = r["other_load_cores"]
        lines.append(f"| {LABELS[r['method']]} | {r['repeat']} | {r['seed']} | {r['torchcfm_steps_per_s']:.1f} | "
                     f"{r['flowgauge_steps_per_s']:.1f} | {r['ratio']:.2f}× | {_fmt(o['torchcfm'])} / {_fmt(o['flowgauge'])} |")
    lines += ["", "| method | TorchCFM steps/s (median) | flowgauge steps/s (median) | ratio median [min, max] | "
              "target | met |", "|---|---:|---:|---:|---:|:---:|"]
    for method, s in report["speed"].items():
        r = s["ratio"]
        lines.append(f"| {LABELS[method]} | {s['torchcfm_steps_per_s']['median']:.1f} | "
                     f"{s['flowgauge_steps_per_s']['median']:.1f} | {r['median']:.2f}× [{r['min']:.2f}, {r['max']:.2f}] | "
                     f"≥ {s['target']:.1f}× | {'yes' if s['met'] else 'NO'} |")
    lines.append("")
    for method, s in report["speed"].items():
        q = s["ratio_uncontended"]
        lines.append(f"{LABELS[method]} ratio over the uncontended repeats (other load ≤ {cfg['quiet_below_cores']} "
                     "cores on both sides): " + ("none" if q is None else
                                                 f"{q['median']:.2f}× [{q['min']:.2f}, {q['max']:.2f}], n = {q['n']}"))
    lines += ["CPU time per step (process time, all threads; median over repeats): " + "; ".join(
        f"{LABELS[m]} TorchCFM {s['torchcfm_cpu_ms_per_step']['median']:.2f} ms, "
        f"flowgauge {s['flowgauge_cpu_ms_per_step']['median']:.2f} ms" for m, s in report["speed"].items()),
        f"Load average (1 min) before / after: {report['loadavg_before'][0]:.2f} / {report['loadavg_after'][0]:.2f}"
        " (other processes on the machine distort these timings; flowgauge's prefetch needs a free core)"]
    if report["quality"]:
        q0 = next(iter(report["quality"].values()))
        lines += ["", f"W2 (exact, {q0['num_samples']} samples vs {q0['num_samples']} fresh `sample_moons` points, "
                  f"dopri5 atol=rtol={cfg['atol']:g}; finite-sample floor, reference vs i.i.d. points of the same distribution: "
                  f"{report['w2_floor']:.4f})", "",
                  "| method | seeds | TorchCFM W2 mean ± std | flowgauge W2 mean ± std | "
                  "per seed (TorchCFM / flowgauge) | flowgauge within 2 std |",
                  "|---|---|---:|---:|---|:---:|"]
        for method, q in report["quality"].items():
            per = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(q["torchcfm_w2"], q["flowgauge_w2"]))
            lines.append(f"| {LABELS[method]} | {' '.join(map(str, q['seeds']))} | "
                         f"{q['torchcfm_mean']:.4f} ± {q['torchcfm_std']:.4f} | "
                         f"{q['flowgauge_mean']:.4f} ± {q['flowgauge_std']:.4f} | {per} | "
                         f"{'yes' if q['within_2std'] else 'NO'} ({q['verdict']}) |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="timed training steps per run (default 2000)")
    p.add_argument("--warmup", type=int, default=20, help="untimed TorchCFM steps before timing (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per method (default 5)")
    p.add_argument("--threads", default="1",
                   help="torch threads for both sides: a number, or 'default': each library's default, torch's "
                        "for TorchCFM and flowgauge's own choice (hardware.threads null, harness.threads) (default 1)")
    p.add_argument("--prefetch-workers", type=int, default=None,
                   help="flowgauge's hardware.prefetch_workers (default: the spec's, 2); 0 pairs inline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (repeats cycle through them)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--num-samples", type=int, default=2000, help="samples per W2 evaluation (default 2000)")
    p.add_argument("--no-quality", action="store_true", help="timing only")
    p.add_argument("--wait-quiet", type=float, default=60.0,
                   help="before each pair of runs, wait up to this many seconds for other processes to "
                        "use less than --quiet-below cores (default 60; 0 does not wait)")
    p.add_argument("--quiet-below", type=float, default=0.25,
                   help="other processes' CPU use, in cores, above which a run counts as contended (default 0.25)")
    p.add_argument("--check", action="store_true", help="exit 1 when a speed or quality target is missed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT.relative_to(REPO)})")
    return p.parse_args(argv)


def wait_quiet(limit_s: float, below: float) -> float:
    """Wait until other processes used < ``below`` cores over one second, at most ``limit_s``."""
    from harness.measure import OtherLoad  # the same measurement that records keep

    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        with OtherLoad() as load:
            time.sleep(1.0)
        if load.cores is None or load.cores < below:
            break
    waited = time.perf_counter() - start
    if waited > 1.5:
        log(f"waited {waited:.0f} s for other processes to quieten")
    return waited


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    import numpy as np
    import torch

    default_threads = torch.get_num_threads()
    defaults = args.threads == "default"
    threads = default_threads if defaults else int(args.threads)
    if threads < 1:
        raise ValueError("--threads must be >= 1 or 'default'")
    # Both sides take the same number of optimiser steps: TorchCFM's warm-up plus its timed
    # steps. flowgauge's steps_per_s leaves out only its first step.
    train_steps = args.warmup + args.steps
    suite = load_protocol(train_steps, None if defaults else threads, args.prefetch_workers)
    from harness.building import configure
    from harness.metrics import wasserstein

    # Process-wide settings (threads, deterministic algorithms) are applied once, before
    # either library runs, so that both sides run under the same ones.
    configure(suite.hardware)
    torch.set_num_threads(threads)
    sampler = suite.samplers[0]
    atol, rtol = sampler.params["atol"], sampler.params["rtol"]

    repeats: list[dict[str, Any]] = []
    models: dict[tuple[str, str, int], Trained] = {}  # first run of each (library, method, seed)
    wall_start = time.perf_counter()
    loadavg_before = os.getloadavg()
    for rep in range(args.repeats):
        seed = args.seeds[rep % len(args.seeds)]
        order = ("torchcfm", "flowgauge") if rep % 2 == 0 else ("flowgauge", "torchcfm")
        for method in args.methods:
            waited = wait_quiet(args.wait_quiet, args.quiet_below)
            runs = {}
            other = {}
            from harness.measure import OtherLoad

            for lib in order:
                if lib == "torchcfm":  # flowgauge may have chosen other threads for its run
                    torch.set_num_threads(threads)
                with OtherLoad() as load:
                    if lib == "torchcfm":
                        runs[lib] = torchcfm_train(method, args.steps, args.warmup, seed)
                    else:
                        runs[lib] = flowgauge_train(suite, method, seed)
                other[lib] = load.cores
                models.setdefault((lib, method, seed), runs[lib])
            tc, fg = runs["torchcfm"], runs["flowgauge"]
            row = {"repeat": rep, "seed": seed, "method": method, "order": list(order), "loadavg": os.getloadavg(),
                   "torchcfm_steps_per_s": tc.steps_per_s, "flowgauge_steps_per_s": fg.steps_per_s,
                   "ratio": fg.steps_per_s / tc.steps_per_s, "other_load_cores": other,
                   "waited_for_quiet_s": waited,
                   "contended": any(v is not None and v > args.quiet_below for v in other.values()),
                   "torchcfm": {"steps": tc.steps, "seconds": tc.seconds, "final_loss": tc.final_loss, **tc.extra},
                   "flowgauge": {"steps": fg.steps, "seconds": fg.seconds, "final_loss": fg.final_loss, **fg.extra}}
            repeats.append(row)
            log(f"repeat {rep} seed {seed} {LABELS[method]}: TorchCFM {tc.steps_per_s:.1f} steps/s, "
                f"flowgauge {fg.steps_per_s:.1f} steps/s, ratio {row['ratio']:.2f}; other processes "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in other.items()) + " cores")

    speed: dict[str, Any] = {}
    all_met = True
    for method in args.methods:
        rows = [r for r in repeats if r["method"] == method]
        if not rows:
            continue
        ratio = spread([r["ratio"] for r in rows])
        quiet = [r["ratio"] for r in rows if not r["contended"]]
        met = ratio["median"] >= TARGET_RATIO[method]
        all_met &= met
        speed[method] = {"torchcfm_steps_per_s": spread([r["torchcfm_steps_per_s"] for r in rows]),
                         "flowgauge_steps_per_s": spread([r["flowgauge_steps_per_s"] for r in rows]),
                         "torchcfm_cpu_ms_per_step": spread([r["torchcfm"]["cpu_ms_per_step"] for r in rows]),
                         "flowgauge_cpu_ms_per_step": spread([r["flowgauge"]["cpu_ms_per_step"] for r in rows]),
                         "ratio": ratio, "target": TARGET_RATIO[method], "met": met,
                         "ratio_uncontended": spread(quiet) if quiet else None}

    quality: dict[str, Any] = {}
    w2_floor = None
    if not args.no_quality:
        from torchcfm.utils import sample_8gaussians, sample_moons

        n = args.num_samples
        for method in args.methods:
            q: dict[str, Any] = {"seeds": list(args.seeds), "num_samples": n, "torchcfm_w2": [], "flowgauge_w2": []}
            for seed in args.seeds:
                for lib in ("torchcfm", "flowgauge"):  # seeds no repeat covered are trained here
                    if (lib, method, seed) not in models:
                        log(f"training {lib} {LABELS[method]} seed {seed} for the quality check")
                        models[(lib, method, seed)] = (torchcfm_train(method, args.steps, args.warmup, seed)
                                                       if lib == "torchcfm" else flowgauge_train(suite, method, seed))
                # Same fresh source points and the same fresh reference for both libraries
                # (sample_8gaussians draws from torch's generator, sample_moons from numpy's).
                torch.manual_seed(QUALITY_SEED_OFFSET + seed)
                np.random.seed(QUALITY_SEED_OFFSET + seed)
                x0 = sample_8gaussians(n)
                reference = sample_moons(n).double().numpy()
                x_tc = torchcfm_sample(models[("torchcfm", method, seed)].model, x0.clone(), atol, rtol)
                x_fg = flowgauge_sample(models[("flowgauge", method, seed)].model, x0.clone(), sampler)
                for lib, x in (("torchcfm", x_tc), ("flowgauge", x_fg)):
                    q[f"{lib}_w2"].append(wasserstein(x.detach().double().cpu().numpy(), reference))
                log(f"W2 {LABELS[method]} seed {seed}: TorchCFM {q['torchcfm_w2'][-1]:.4f}, "
                    f"flowgauge {q['flowgauge_w2'][-1]:.4f}")
            q["torchcfm_mean"], q["torchcfm_std"] = mean_std(q["torchcfm_w2"])
            q["flowgauge_mean"], q["flowgauge_std"] = mean_std(q["flowgauge_w2"])
            diff = q["flowgauge_mean"] - q["torchcfm_mean"]
            q["difference"] = diff
            q["within_2std"] = bool(abs(diff) <= 2 * q["torchcfm_std"]) if len(args.seeds) > 1 else None
            q["verdict"] = ("lower (better)" if diff < 0 else "higher (worse)") + f" by {abs(diff):.4f}"
            all_met &= bool(q["within_2std"]) or diff <= 0
            quality[method] = q
        # The finite-sample floor: the reference against n i.i.d. points of the same
        # distribution (flowgauge's generator of it; sample_moons puts its angles on a grid).
        from harness.seeding import generator

        np.random.seed(QUALITY_SEED_OFFSET - 1)
        dataset = models[("flowgauge", args.methods[0], args.seeds[0])].model[0].dataset
        iid = dataset.sample_target(n, generator(QUALITY_SEED_OFFSET, "w2-floor"))
        w2_floor = wasserstein(iid.double().numpy().reshape(n, -1), sample_moons(n).double().numpy())

    report = {
        "benchmark": "torchcfm_speed",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "python_executable": sys.executable,
        "config": {"steps": args.steps, "warmup_torchcfm": args.warmup, "train_steps": train_steps,
                   "repeats": args.repeats, "wait_quiet_s": args.wait_quiet, "quiet_below_cores": args.quiet_below,
                   "seeds": args.seeds, "methods": args.methods,
                   "threads": "default" if defaults else threads,
                   "torchcfm_threads": threads,
                   "flowgauge_threads": "hardware.threads null: harness.threads chooses" if defaults else threads,
                   "prefetch_workers": suite.hardware.prefetch_workers, "batch_size": BATCH, "sigma": SIGMA,
                   "lr": LR, "num_samples": args.num_samples, "atol": atol, "rtol": rtol,
                   "suite": str(SUITE.relative_to(REPO)),
                   "hardware": suite.hardware.model_dump(mode="json"),
                   "timing": "TorchCFM: time.perf_counter over the timed steps after the warm-up; flowgauge: "
                             "train()'s steps_per_s, (steps - 1) / (wall - first step)"},
        "environment": environment_info(threads, default_threads),
        "repeats": repeats,
        "speed": speed,
        "quality": quality,
        "w2_floor": w2_floor,
        "all_targets_met": all_met,
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
        "wall_s": time.perf_counter() - wall_start,
    }
    return report, all_met


def main(argv: list[str] | None = None) -> int:
    process_start = time.perf_counter()
    _require_torchcfm()
    args = parse_args(argv)
    try:
        report, met = run(args)
    except Exception as err:  # noqa: BLE001 - a harness error is not a regression: exit 2
        import traceback

        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, args.out)
    print(markdown(report))
    print(f"\nwall {time.perf_counter() - process_start:.0f} s (measurements {report['wall_s']:.0f} s); "
          f"report written to {args.out}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
