"""A results directory as a report: the leaderboard, the claims, and the plots people would
rather look at than read (quality against cost per dataset, training loss curves).

Everything is computed from the records, like every table; matplotlib draws off-screen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.leaderboard import badness, header, leaderboard, leaderboard_options
from harness.results import records_frame, suite_records, write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality_vs_cost(frame: Any, quality: str, cost: str, path: Path) -> Path | None:
    """One panel per dataset: mean ``quality`` against mean ``cost`` per (method, sampler),
    methods as colours, samplers labelled; the lower-left front is the good region for
    lower-is-better metrics."""
    if frame.empty or quality not in frame or cost not in frame:
        return None
    ok = frame[frame["status"] == "ok"].dropna(subset=[quality, cost])
    if ok.empty:
        return None
    plt = _pyplot()
    datasets = sorted(ok["dataset"].unique())
    cols = min(3, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    methods = sorted(ok["method"].unique())
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for ax, dataset in zip(axes.flat, datasets):
        mean = ok[ok["dataset"] == dataset].groupby(["method", "sampler"])[[quality, cost]].mean().reset_index()
        for _, row in mean.iterrows():
            ax.scatter(row[cost], row[quality], color=colours[row["method"]], s=30)
            ax.annotate(row["sampler"], (row[cost], row[quality]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(header(cost))
        ax.set_ylabel(header(quality))
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in methods]
    ncol = min(len(methods), 2 * cols)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 * math.ceil(len(methods) / ncol) + 0.02, 1, 1))
    _save(fig, path, dpi=120)
    return path


def plot_by_method(frame: Any, metric: str, path: Path) -> Path | None:
    """One panel per dataset: ``metric`` of every seed (dots) and its mean (bar) for each
    (method, sampler), best first: the seed spread at a glance."""
    if frame.empty or metric not in frame:
        return None
    ok = frame[frame["status"] == "ok"].dropna(subset=[metric])
    if ok.empty:
        return None
    plt = _pyplot()
    datasets = sorted(ok["dataset"].unique())
    cols = min(3, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    most = max(ok[ok["dataset"] == d].groupby(["method", "sampler"]).ngroups for d in datasets)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, (1.2 + 0.32 * most) * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        sub = ok[ok["dataset"] == dataset]
        groups = [((m, s), g[metric].to_numpy(dtype=float)) for (m, s), g in sub.groupby(["method", "sampler"])]
        groups.sort(key=lambda item: badness(metric, item[1].mean()), reverse=True)  # best at the top
        several_samplers = sub["sampler"].nunique() > 1
        labels = [f"{m} @ {s}" if several_samplers else m for (m, s), _ in groups]
        for i, (_, values) in enumerate(groups):
            ax.barh(i, values.mean(), color="0.85", edgecolor="0.4", height=0.6)
            ax.scatter(values, [i] * len(values), color="C0", s=14, zorder=3)
        ax.set_yticks(range(len(groups)), labels, fontsize=8)
        values = sub[metric].to_numpy(dtype=float)
        if (values > 0).all() and values.max() / values.min() > 30:
            ax.set_xscale("log")
        ax.set_xlabel(header(metric))
        ax.set_title(f"{dataset} (bars: mean; dots: seeds)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path, dpi=120)
    return path


def _cost_varies(frame: Any, cost: str) -> bool:
    """Whether some dataset was measured at more than one cost (else a quality-against-cost
    plot is a column of dots)."""
    if frame.empty or cost not in frame:
        return False
    return bool((frame.dropna(subset=[cost]).groupby("dataset")[cost].nunique() > 1).any())


def plot_samples(records: list[dict], results_dir: Path, path: Path, lines: int = 64) -> Path | None:
    """Generated 2-D samples (seed with the lowest number) against the reference: one row
    per (dataset, sampler), one column per method, the reference first. Grey segments join
    a few source points to the samples the flow maps them to, which shows the coupling a
    method learned (crossing for independent pairs, nearly parallel for OT)."""
    import numpy as np

    chosen: dict[tuple[str, str, str], dict] = {}
    for r in records:
        points = (r.get("artefacts") or {}).get("points")
        if r.get("status") != "ok" or not points or not (results_dir / points).is_file():
            continue  # samples/ is not committed: a fresh clone draws what it has
        slot = (r["dataset"], r["sampler"], r["method"])
        if slot not in chosen or r["seed"] < chosen[slot]["seed"]:
            chosen[slot] = r
    if not chosen:
        return None
    rows = sorted({(d, s) for d, s, _ in chosen})
    methods = sorted({m for _, _, m in chosen})
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=(2.3 * (len(methods) + 1), 2.3 * len(rows)),
                             squeeze=False)
    for i, (dataset, sampler) in enumerate(rows):
        reference = None
        for j, method in enumerate(methods, start=1):
            ax = axes[i][j]
            record = chosen.get((dataset, sampler, method))
            if record is None:
                ax.axis("off")
                continue
            with np.load(results_dir / record["artefacts"]["points"]) as data:
                source, samples, reference = data["source"], data["samples"], data["reference"]
            k = min(lines, len(source))
            ax.plot(np.stack([source[:k, 0], samples[:k, 0]]), np.stack([source[:k, 1], samples[:k, 1]]),
                    color="0.6", lw=0.4, alpha=0.6)
            ax.scatter(samples[:, 0], samples[:, 1], s=1, color="C0", alpha=0.6)
            ax.set_title(f"{method}\n{sampler}, seed {record['seed']}", fontsize=8)
        ax = axes[i][0]
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=1, color="C1", alpha=0.6)
        ax.set_title(f"{dataset}\nreference", fontsize=8)
        limits = [a.get_xlim() + a.get_ylim() for a in axes[i] if a.has_data()]
        lo = min(min(l[0], l[2]) for l in limits)
        hi = max(max(l[1], l[3]) for l in limits)
        for a in axes[i]:
            a.set_xlim(lo, hi)
            a.set_ylim(lo, hi)
            a.set_aspect("equal")
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path


def plot_loss_curves(records: list[dict], path: Path) -> Path | None:
    """Training loss against step, one panel per dataset, one line per (method, seed)."""
    seen: dict[tuple, list] = {}
    for r in records:
        curve = (r.get("train") or {}).get("loss_curve")
        if curve:
            seen.setdefault((r["dataset"], r["method"], r["seed"]), curve)
    if not seen:
        return None
    plt = _pyplot()
    datasets = sorted({d for d, _, _ in seen})
    methods = sorted({m for _, m, _ in seen})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        for (d, method, seed), curve in sorted(seen.items()):
            if d != dataset:
                continue
            steps = [p[0] for p in curve if p[1] is not None]
            values = [p[1] for p in curve if p[1] is not None]
            ax.plot(steps, values, color=colours[method], alpha=0.8, lw=1,
                    label=method if seed == min(s for dd, m, s in seen if dd == d and m == method) else None)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(dataset)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=120)
    return path


def write_report(results_dir: Path, out: Path | None = None) -> Path:
    """Write ``report.md`` with its plots into ``out`` (default RESULTS_DIR/report)."""
    out = out or results_dir / "report"
    records, older = suite_records(results_dir)  # the suite as last run; older records are noted
    frame = records_frame(records)
    metrics, rank_by, _ = leaderboard_options(results_dir)
    parts = [f"# {results_dir.name}\n", leaderboard(results_dir, "markdown", records=records + older)]  # with the claims
    if plot_by_method(frame, rank_by, out / f"{rank_by}_by_method.png"):
        parts.append(f"![{rank_by} by method and seed]({rank_by}_by_method.png)")
    cost = next((c for c in ("nfe", "latency", "train_time") if c in metrics and _cost_varies(frame, c)), None)
    if cost and rank_by != cost and plot_quality_vs_cost(frame, rank_by, cost, out / "quality_vs_cost.png"):
        parts.append(f"![{rank_by} against {cost}](quality_vs_cost.png)")
    if plot_samples(records, results_dir, out / "samples.png"):
        parts.append("![generated samples against the reference](samples.png)")
    if plot_loss_curves(records, out / "loss_curves.png"):
        parts.append("![training loss](loss_curves.png)")
    path = out / "report.md"
    text = "\n\n".join(parts) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Write a figure atomically (a full disk is a StorageError naming the file) and close it."""
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        _pyplot().close(fig)
