"""Do the tests catch a wrong number? Apply curated mutations, one at a time, and run the
tests that should catch each.

Every mutation is a small, plausible slip in the code (a sign, a coefficient, a wrong
axis, a skipped step) that would put wrong numbers in a table or lose work. A mutation
*survives* when its tests still pass; the target is that none survives.

    python scripts/mutation_check.py            # all mutations (about 10 minutes here)
    python scripts/mutation_check.py --list     # what each one changes
    python scripts/mutation_check.py --only mmd # mutations whose name contains "mmd"

The working tree is restored after each mutation, even when interrupted. Not part of CI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


T_PATHS = ("tests/implementations/test_paths_timesteps_losses.py", "tests/implementations/test_paths_and_methods.py")
T_COUPLINGS = ("tests/implementations/test_couplings.py",)
T_SOLVERS = ("tests/implementations/test_solvers.py",)
T_METRICS = ("tests/harness/test_metrics.py", "tests/implementations/test_trajectory_metrics.py")
T_CLAIMS = ("tests/harness/test_claims.py",)
T_RESULTS = ("tests/harness/test_reliability.py", "tests/test_end_to_end.py")
T_RUNNER = ("tests/harness/test_runner.py", "tests/test_end_to_end.py")
T_EXEC = ("tests/harness/test_executors.py",)
T_DATA = ("tests/implementations/test_toy2d.py",)
T_SEED = ("tests/harness/test_runner.py", "tests/harness/test_resolve.py")
T_BOARD = ("tests/harness/test_leaderboard.py",)
T_EVAL = ("tests/harness/test_evaluation.py", "tests/harness/test_latent.py", "tests/harness/test_frechet.py")
T_METHODS = ("tests/implementations/test_paths_and_methods.py", "tests/implementations/test_distillation.py")

MUTATIONS = [
    # paths
    Mutation("path: linear sigma term changes over time", "implementations/common/paths.py",
             "return torch.full_like(t, self.sigma), torch.zeros_like(t)",
             "return torch.full_like(t, self.sigma), torch.ones_like(t)", T_PATHS),
    Mutation("path: Brownian bridge derivative loses its factor 2", "implementations/common/paths.py",
             "self.sigma * (1 - 2 * t) / (2 * root)", "self.sigma * (1 - 2 * t) / root", T_PATHS),
    Mutation("path: Lipman target ignores sigma_min", "implementations/common/paths.py",
             "return t, 1 - (1 - self.sigma_min) * t, one, -(1 - self.sigma_min) * one",
             "return t, 1 - (1 - self.sigma_min) * t, one, -one", T_PATHS),
    Mutation("path: VP alpha derivative doubled", "implementations/common/paths.py",
             "d_alpha = 0.5 * beta * alpha", "d_alpha = beta * alpha", T_PATHS),
    Mutation("path: target velocity sign of the source term", "implementations/common/paths.py",
             "dx_t = d_alpha * x_1 + d_sigma * x_0", "dx_t = d_alpha * x_1 - d_sigma * x_0", T_PATHS),
    Mutation("time sampler: uniform on [0, 1/2]", "implementations/common/timesteps.py",
             "return torch.rand(n, generator=generator, device=generator.device)",
             "return 0.5 * torch.rand(n, generator=generator, device=generator.device)", T_PATHS),
    Mutation("loss: weighted loss not normalised by the weights", "implementations/common/losses.py",
             "return (weights * per_sample).sum() / weights.sum()", "return (weights * per_sample).mean()",
             T_PATHS),
    # couplings
    Mutation("exact OT: plan read along the wrong axis", "implementations/common/couplings.py",
             "perm = plan.argmax(axis=1)", "perm = plan.argmax(axis=0)", T_COUPLINGS),
    Mutation("exact OT: cost not squared", "implementations/common/couplings.py",
             "return torch.cdist(a, b).square_().numpy()", "return torch.cdist(a, b).numpy()", T_COUPLINGS),
    Mutation("Sinkhorn: row and column of a sampled pair swapped", "implementations/common/couplings.py",
             "i, j = choice // pi.shape[1], choice % pi.shape[1]",
             "j, i = choice // pi.shape[1], choice % pi.shape[1]", T_COUPLINGS),
    Mutation("Gibbs: weights favour costly pairs", "implementations/common/couplings.py",
             "log_w = -cost / epsilon", "log_w = cost / epsilon", T_COUPLINGS),
    # solvers
    Mutation("Heun: corrector keeps only the end slope", "implementations/common/solvers.py",
             "return x + 0.5 * h * (d_i + d_next)", "return x + h * d_next", T_SOLVERS),
    Mutation("midpoint: slope taken at the end of the step", "implementations/common/solvers.py",
             "return x + h * velocity(x_mid, t + 0.5 * h)", "return x + h * velocity(x_mid, t + h)", T_SOLVERS),
    Mutation("RK4: last stage weighted 2", "implementations/common/solvers.py",
             "x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)", "x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + 2.0 * k4)",
             T_SOLVERS),
    Mutation("fixed-step grid stops short of t_1", "implementations/common/solvers.py",
             "grid = torch.linspace(t_0, t_1, n + 1, dtype=torch.float64)",
             "grid = torch.linspace(t_0, t_1 - 1.0 / (n + 1), n + 1, dtype=torch.float64)", T_SOLVERS),
    Mutation("dopri5 steps past t_1 and interpolates back", "implementations/common/solvers.py",
             'options = {"step_t": t[1:]}', "options = {}", T_SOLVERS),
    Mutation("NFE counter counts calls, not samples", "harness/measure.py",
             "self.evaluations += x.shape[0]", "self.evaluations += 1", ("tests/test_end_to_end.py",
                                                                          *T_SOLVERS)),
    # metrics
    Mutation("MMD: cross term not doubled", "harness/metrics.py",
             "k_xx + k_yy - 2.0 * k_xy", "k_xx + k_yy - k_xy", T_METRICS),
    Mutation("MMD: median heuristic returns a squared distance", "harness/metrics.py",
             'return float(np.sqrt(np.median(pdist(np.concatenate([x, y]), "sqeuclidean"))))',
             'return float(np.median(pdist(np.concatenate([x, y]), "sqeuclidean")))', T_METRICS),
    Mutation("W2: root not taken", "harness/metrics.py",
             "return float(cost[rows, cols].mean() ** (1.0 / p))", "return float(cost[rows, cols].mean())",
             T_METRICS),
    Mutation("w2_floor computed against itself", "harness/metrics.py",
             "return wasserstein(ctx.reference_2, ctx.reference, p=2)",
             "return wasserstein(ctx.reference, ctx.reference, p=2)", T_METRICS),
    Mutation("straightness: chord added, not subtracted", "harness/metrics.py",
             "np.sum((chord - v) ** 2, axis=1)", "np.sum((chord + v) ** 2, axis=1)", T_METRICS),
    Mutation("NPE not normalised by W2^2", "harness/metrics.py",
             "return abs(pe - w2_squared) / w2_squared", "return abs(pe - w2_squared)", T_METRICS),
    Mutation("latency: median replaced by the minimum", "harness/measure.py",
             "median=statistics.median(samples),", "median=min(samples),", ("tests/harness/test_measure.py",)),
    # statistics and claims
    Mutation("verdict: overlap taken for containment", "harness/statistics.py",
             "if low <= interval.low and interval.high <= high:",
             "if low <= interval.high and interval.low <= high:", T_CLAIMS),
    Mutation("t interval: one-sided quantile", "harness/statistics.py",
             "return float(t.ppf(0.5 + level / 2, df))", "return float(t.ppf(level, df))", T_CLAIMS),
    Mutation("t interval: standard deviation used as standard error", "harness/statistics.py",
             "a = ours.std**2 / ours.n", "a = ours.std**2", T_CLAIMS),
    Mutation("claims: too few seeds still give a verdict", "harness/claims.py",
             "if shortfall := term.shortfall(claim.min_seeds):", "if shortfall := term.shortfall(1):", T_CLAIMS),
    # results, resume, locking
    Mutation("atomic write replaced by a direct write", "harness/results.py",
             'with os.fdopen(fd, "wb") as f:\n            write(f)\n            f.flush()\n'
             '            os.fsync(f.fileno())\n        os.replace(tmp, path)',
             'os.close(fd)\n        os.unlink(tmp)\n        tmp = None\n        with open(path, "wb") as f:\n'
             '            write(f)', T_RESULTS),
    Mutation("resume: failed runs never retried", "harness/results.py",
             'if r.get("status") in ("ok", "diverged")}', 'if r.get("status") in ("ok", "diverged", "failed")}',
             T_RESULTS),
    Mutation("resume: interrupted temporaries never cleared", "harness/results.py",
             'for tmp in (results_dir / folder).glob(".*.tmp"):', 'for tmp in (results_dir / folder).glob(".*.tmpx"):',
             T_RESULTS),
    Mutation("lock: shared instead of exclusive", "harness/results.py",
             "fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)", "fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)",
             T_RESULTS),
    # runner
    Mutation("early stopping: restore best is a no-op", "harness/training.py",
             "            self.built.network.load_state_dict(self.best_state)\n", "            pass\n", T_RUNNER),
    Mutation("early stopping: best weights aliased, not copied", "harness/training.py",
             "{k: v.detach().clone() for k, v in self.built.network.state_dict().items()}",
             "{k: v.detach() for k, v in self.built.network.state_dict().items()}", T_RUNNER),
    Mutation("divergence: exploded samples ranked as ok", "harness/evaluation.py",
             "return OUT_OF_RANGE * (float(np.abs(reference).max()) + 1.0)", "return np.inf", T_RUNNER),
    Mutation("hardware.dtype ignored", "harness/building.py",
             "dtype = getattr(torch, job.hardware.dtype)", "dtype = torch.float32", T_RUNNER),
    Mutation("reflow: init: teacher ignored", "harness/unit.py",
             'if job.method.teacher.init == "teacher":', "if False:", T_RUNNER),
    Mutation("reflow: student pairs z_1 drawn apart from z_0", "harness/training.py",
             "return Batch(x_0=self.pairs.z_0[idx], x_1=self.pairs.z_1[idx])",
             "return Batch(x_0=self.pairs.z_0[idx], x_1=self.pairs.z_1[idx.flip(0)])", T_RUNNER),
    Mutation("prepared batches: randomness depends on the thread", "harness/training.py",
             'gen = generator(self.seed, f"prepare/{self.index}")',
             'gen = generator(self.seed, f"prepare/{self.index if self.pool is None else -1}")', T_RUNNER),
    # streaming evaluation, feature statistics, latent flows
    Mutation("evaluation: every noise block from the first block's stream", "harness/evaluation.py",
             'return stream if block == 0 else f"{stream}/{block}"', "return stream", T_EVAL),
    Mutation("feature statistics: merge drops the between-shard scatter", "harness/frechet.py",
             "self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)",
             "self.scatter = self.scatter + other.scatter", T_EVAL),
    Mutation("evaluation: a saved shard is never resumed", "harness/evaluation.py",
             "if path is not None and path.is_file():", "if False:", T_EVAL),
    Mutation("evaluation: a bad sample's batch still accumulates", "harness/evaluation.py",
             "clean = tally.non_finite + tally.out_of_range == 0 and not (non_finite.any() or beyond.any())",
             "clean = True", T_EVAL),
    Mutation("latent: samples are not decoded", "harness/building.py",
             "None if latent is None else latent.decode, card)", "None, card)", T_EVAL),
    # executors
    Mutation("executor: a student may start before its teacher", "harness/executors.py",
             "return teacher is None or teacher.key not in keys or teacher.key in finished", "return True", T_EXEC),
    Mutation("executor: a dead worker's runs are not recorded", "harness/executors.py",
             "counts = _record_failure(results_dir, job, pending[job.key], _died(process), workers)",
             "counts = {}", T_EXEC),
    # seeding
    Mutation("seeding: the seed does not enter the stream", "harness/seeding.py",
             'digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()',
             'digest = hashlib.sha256(f"{stream}".encode()).digest()', T_SEED),
    # datasets
    Mutation("S-curve mirrored", "implementations/datasets/toy2d.py",
             "points = torch.stack([t.sin(), t.sign() * (t.cos() - 1)], dim=1)",
             "points = torch.stack([t.sin(), -t.sign() * (t.cos() - 1)], dim=1)", T_DATA),
    Mutation("spirals: radius grows linearly in u", "implementations/datasets/toy2d.py",
             "theta = torch.sqrt(torch.rand(n, generator=generator)) * 3 * math.pi",
             "theta = torch.rand(n, generator=generator) * 3 * math.pi", T_DATA),
    Mutation("checkerboard on the white squares", "implementations/datasets/toy2d.py",
             "x2 = x2 + torch.floor(x1).remainder(2)", "x2 = x2 + torch.floor(x1).remainder(2) - 1", T_DATA),
    Mutation("moons: inner moon shifted", "implementations/datasets/toy2d.py",
             "y = torch.where(upper, theta.sin(), 0.5 - theta.sin())",
             "y = torch.where(upper, theta.sin(), 0.25 - theta.sin())", T_DATA),
    Mutation("8 gaussians on a half circle", "implementations/datasets/toy2d.py",
             "angle = k.to(torch.float32) * (math.pi / 4)", "angle = k.to(torch.float32) * (math.pi / 8)", T_DATA),
    # tables
    Mutation("leaderboard: higher-is-better metrics ranked low-first", "harness/metrics.py",
             "return -value if self.higher_is_better else value", "return value", T_BOARD),
    Mutation("leaderboard: seeds counted as records", "harness/leaderboard.py",
             "return str(self.seeds) if self.finished in (self.seeds, 0) else f\"{self.finished}/{self.seeds}\"",
             "return str(self.seeds)", T_BOARD),
    # methods
    Mutation("distillation: one-step map without the skip connection", "implementations/distillation.py",
             "return z_0 + model(z_0, t)", "return model(z_0, t)", T_METHODS),
]


def apply(m: Mutation) -> str:
    path = PROJECT / m.file
    original = path.read_text()
    count = original.count(m.old)
    if count != 1:
        raise SystemExit(f"mutation {m.name!r}: the text to mutate occurs {count} times in {m.file}; update the list")
    path.write_text(original.replace(m.old, m.new))
    return original


def run_tests(tests: tuple[str, ...], timeout: float) -> tuple[bool, float, str]:
    """(the tests pass, seconds, the first failing test's name)."""
    missing = [t for t in tests if not (PROJECT / t).exists()]
    if missing:
        raise SystemExit(f"no such test file: {', '.join(missing)}")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                              cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
        survived = done.returncode == 0
        failed = next((line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")), "")
    except subprocess.TimeoutExpired:
        survived, failed = False, "(timed out)"  # a hang is caught too, if slowly
    return survived, time.perf_counter() - start, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--only", default="", help="run the mutations whose name contains this text")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation's tests")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.file}: {m.old.strip()!r}\n    -> {m.new.strip()!r}\n    tests: {' '.join(m.tests)}")
        print(f"{len(chosen)} mutations")
        return 0
    for m in chosen:  # check the whole list applies before spending time on any
        original = apply(m)
        (PROJECT / m.file).write_text(original)
    # Unmutated, every test file must pass: else each mutation would look "killed".
    files = tuple(sorted({t for m in chosen for t in m.tests}))
    passed, seconds, failed = run_tests(files, args.timeout * 2)
    print(f"baseline: {len(files)} test files {'pass' if passed else 'FAIL'} unmutated ({seconds:.0f} s)", flush=True)
    if not passed:
        print(f"fix the tests first: {failed}")
        return 2
    survivors = []
    for i, m in enumerate(chosen, 1):
        original = apply(m)
        try:
            survived, seconds, failed = run_tests(m.tests, args.timeout)
        finally:
            (PROJECT / m.file).write_text(original)
        by = "" if survived else f" by {failed.split('::', 1)[-1]}"
        print(f"[{i:2d}/{len(chosen)}] {'SURVIVED' if survived else 'killed  '} {m.name}{by} ({seconds:.0f} s)",
              flush=True)
        if survived:
            survivors.append(m.name)
    print(f"\n{len(chosen)} mutations, {len(chosen) - len(survivors)} killed, {len(survivors)} survived"
          + (":\n  " + "\n  ".join(survivors) if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
