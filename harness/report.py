"""A results directory as a report: the leaderboard, the claims, and the plots people would
rather look at than read (quality against cost per dataset, quality against NFE when
some method was sampled at several NFEs, training loss curves).

Everything is computed from the records, like every table; matplotlib draws off-screen.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import htmldoc as h
from harness.htmldoc import Block, Code, Span, Strong
from harness.leaderboard import (
    NfeTable,
    badness,
    format_mean_std,
    header,
    higher_is_better,
    leaderboard,
    leaderboard_options,
    nfe_tables,
    render_nfe,
)
from harness.results import records_frame, suite_records, write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^v<>pP*Xh"


def pareto_front(points: list[tuple[float, float]], quality: str) -> list[int]:
    """Indices of the (cost, quality) points that no other point beats: none is at most as
    costly and at least as good (``quality``'s own direction) while better in one of the two.
    Sorted by cost."""
    scored = [(cost, badness(quality, value)) for cost, value in points]
    front = [i for i, (c, b) in enumerate(scored)
             if not any(c2 <= c and b2 <= b and (c2 < c or b2 < b) for c2, b2 in scored)]
    return sorted(front, key=lambda i: scored[i])


def plot_quality_vs_cost(frame: Any, quality: str, cost: str, path: Path,
                         sampler_order: list[str] | None = None, front: bool = False) -> Path | None:
    """One panel per dataset: mean ``quality`` against mean ``cost`` per (method, sampler),
    methods as colours and samplers as marker shapes, both in the legend (no text on the
    points, which would overlap where models coincide); the lower-left front is the good
    region for lower-is-better metrics. ``front``: ring the Pareto-optimal points
    (:func:`pareto_front`) and join them with a step line."""
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
    samplers = _ordered(ok["sampler"].unique(), sampler_order)
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")  # distinct colours up to 20 methods
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(samplers)}
    for ax, dataset in zip(axes.flat, datasets):
        mean = ok[ok["dataset"] == dataset].groupby(["method", "sampler"])[[quality, cost]].mean().reset_index()
        for _, row in mean.iterrows():
            ax.scatter(row[cost], row[quality], color=colours[row["method"]], marker=markers[row["sampler"]], s=36,
                       alpha=0.85, edgecolors="white", linewidths=0.5)
        if front:
            optimal = mean.iloc[pareto_front(list(zip(mean[cost], mean[quality])), quality)]
            ax.step(optimal[cost], optimal[quality], where="post", color="0.2", lw=0.9, alpha=0.7, zorder=1)
            ax.scatter(optimal[cost], optimal[quality], s=110, facecolors="none", edgecolors="0.1", linewidths=0.9,
                       zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel(header(cost))
        ax.set_ylabel(header(quality))
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in methods]
    handles += [plt.Line2D([], [], marker=markers[s], linestyle="", color="0.3", label=s) for s in samplers]
    if front:
        handles.append(plt.Line2D([], [], marker="o", markersize=9, markerfacecolor="none", color="0.1",
                                  label="Pareto front"))
    ncol = min(len(handles), 3 * cols)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=8,
               title="colour: method; shape: sampler (means over seeds)", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.05 * math.ceil(len(handles) / ncol) + 0.05, 1, 1))
    _save(fig, path, dpi=120)
    return path


NFE_CAPTION = ("{metric} against NFE per sample (log axis), one panel per dataset, one colour per method and one "
               "line style per sampler family (the sampler's name without its step count). Lines and shaded bands: "
               "mean ± one sample standard deviation over seeds (harness.statistics, as in the tables), not a "
               "confidence interval; stars: adaptive samplers at their mean NFE, with the same spread as an error "
               "bar (as for a family drawn at one NFE only).")


def _nfe_points(table: NfeTable) -> list[tuple[str, str, bool, list[tuple[float, float, float]]]]:
    """(method label, family or adaptive sampler, adaptive, [(NFE, mean, std)] by NFE) for every
    line and adaptive point of one dataset; finished rows with a value only."""
    series: dict[tuple[str, str, bool], list[tuple[float, float, float]]] = {}
    for row in table.rows:
        for column, cells in row.cells.items():
            nfe, value = cells.cells["nfe"].mean, cells.cells[table.rank_by]
            if cells.status != "ok" or nfe is None or value.mean is None or not math.isfinite(value.mean):
                continue
            name = column.sampler if column.adaptive else row.family
            series.setdefault((row.label, name, column.adaptive), []).append((nfe, value.mean, value.std or 0.0))
    return [(label, name, adaptive, sorted(points)) for (label, name, adaptive), points in series.items()]


def quality_vs_nfe_figure(tables: list[NfeTable]) -> Any:
    """One panel per dataset: the rank metric against NFE (log axis), one line per (method,
    sampler family) with its band over seeds, adaptive samplers as stars; see NFE_CAPTION."""
    import numpy as np

    plt = _pyplot()
    cols = min(3, len(tables))
    rows = math.ceil(len(tables) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows + 0.6), squeeze=False)
    series = [_nfe_points(t) for t in tables]
    methods = sorted({label for points in series for label, *_ in points})
    families = sorted({name for points in series for _, name, adaptive, _ in points if not adaptive})
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")  # distinct colours up to 20 methods
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    styles = {f: ("-", "--", ":", "-.")[i % 4] for i, f in enumerate(families)}
    for ax, table, points in zip(axes.flat, tables, series):
        for label, name, adaptive, xs in points:
            x, y, s = (np.array(v, dtype=float) for v in zip(*xs))
            style = {"color": colours[label], "label": f"{label} · {name}"}
            if adaptive or len(x) == 1:  # a point: its spread as an error bar
                ax.errorbar(x, y, yerr=s, marker="*" if adaptive else "o", markersize=11 if adaptive else 4,
                            linestyle="none", capsize=3, **style)
            else:
                ax.plot(x, y, linestyle=styles[name], marker="o", markersize=4, **style)
                ax.fill_between(x, y - s, y + s, color=colours[label], alpha=0.15, linewidth=0)
        _nfe_axes(ax, table, [x for *_, xs in points for x in xs])
    for ax in list(axes.flat)[len(tables):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], label=m) for m in methods]
    if len(families) > 1:
        handles += [plt.Line2D([], [], color="0.3", linestyle=styles[f], label=f) for f in families]
    if any(adaptive for points in series for _, _, adaptive, _ in points):
        handles += [plt.Line2D([], [], color="0.3", marker="*", markersize=9, linestyle="none", label="adaptive")]
    ncol = min(len(handles), 3 * cols)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=8,
               title="colour: method; bands: mean ± std over seeds", title_fontsize=8)
    fig.tight_layout(rect=(0, (0.22 * math.ceil(len(handles) / ncol) + 0.3) / (4 * rows + 0.6), 1, 1))
    return fig


def _nfe_axes(ax: Any, table: NfeTable, drawn: list[tuple[float, float, float]]) -> None:
    """Log NFE axis ticked at the fixed NFEs and the powers of two up to the largest NFE
    drawn; a log metric axis when the values span more than 30×; the metric's direction
    in the y label."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    if drawn:
        nfes, means = [x for x, _, _ in drawn], [y for _, y, _ in drawn]
        powers = {2**k for k in range(int(math.log2(max(nfes))) + 2) if min(nfes) <= 2**k <= 1.2 * max(nfes)}
        ax.set_xticks(sorted(powers | {c.nfe for c in table.columns if c.nfe is not None and not c.adaptive}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if min(means) > 0 and max(means) / min(means) > 30:
            ax.set_yscale("log")
    ax.set_xlabel("NFE per sample (log)")
    direction = "higher" if higher_is_better(table.rank_by) else "lower"
    ax.set_ylabel(f"{header(table.rank_by)} ({direction} is better)")
    ax.set_title(table.dataset)
    ax.grid(alpha=0.3)


def plot_quality_vs_nfe(tables: list[NfeTable], path: Path) -> Path | None:
    """Write :func:`quality_vs_nfe_figure` to ``path``; None when no dataset has an NFE sweep."""
    sweeps = [t for t in tables if t.is_sweep]
    if not sweeps:
        return None
    _save(quality_vs_nfe_figure(sweeps), path, dpi=120)
    return path


def _lowest_seeds(records: list[dict], results_dir: Path, artefact: str, sampler_order: list[str] | None
                  ) -> tuple[dict[tuple[str, str, str], dict], list[tuple[str, str]], list[str]] | None:
    """For figures of saved samples: the finished record of the lowest seed for each
    (dataset, sampler, method) whose ``artefact`` file is here (samples/ is not committed:
    a fresh clone draws what it has), the (dataset, sampler) rows in the suite's sampler
    order, and the methods; None when there is nothing to draw."""
    chosen: dict[tuple[str, str, str], dict] = {}
    for r in records:
        name = (r.get("artefacts") or {}).get(artefact)
        if r.get("status") != "ok" or not name or not (results_dir / name).is_file():
            continue
        slot = (r["dataset"], r["sampler"], r["method"])
        if slot not in chosen or r["seed"] < chosen[slot]["seed"]:
            chosen[slot] = r
    if not chosen:
        return None
    samplers = _ordered({s for _, s, _ in chosen}, sampler_order)
    rows = sorted({(d, s) for d, s, _ in chosen}, key=lambda ds: (ds[0], samplers.index(ds[1])))
    return chosen, rows, sorted({m for _, _, m in chosen})


def _ordered(names: Any, order: list[str] | None) -> list[str]:
    """``names`` in the suite's order (``order``), the rest alphabetically after them."""
    order = order or []
    names = list(names)
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


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


SAMPLES_CAPTION = ("Blue: generated samples of each method (its lowest seed), one row per sampler. Grey "
                   "segments join {lines} source points x_0 to the samples the model maps them to: the pairing "
                   "it learned (crossing for independent pairs, nearly parallel for straight flows). First "
                   "column, once per dataset: a fresh sample of the target (orange) and of the source (grey).")


def plot_samples(records: list[dict], results_dir: Path, path: Path, lines: int = 64,
                 sampler_order: list[str] | None = None) -> Path | None:
    """Generated 2-D samples against the target: one row per (dataset, sampler), one column
    per method, and a first column with the target's reference and the source drawn once
    per dataset (see :data:`SAMPLES_CAPTION`, which the report prints under it)."""
    import numpy as np

    found = _lowest_seeds(records, results_dir, "points", sampler_order)
    if found is None:
        return None
    chosen, rows, methods = found
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=(2.3 * (len(methods) + 1), 2.75 * len(rows) + 0.9),
                             squeeze=False)
    drawn: set[str] = set()
    for i, (dataset, sampler) in enumerate(rows):
        reference = source_points = None
        for j, method in enumerate(methods, start=1):
            ax = axes[i][j]
            record = chosen.get((dataset, sampler, method))
            if record is None:
                ax.axis("off")
                continue
            with np.load(results_dir / record["artefacts"]["points"]) as data:
                source_points, samples, reference = data["source"], data["samples"], data["reference"]
            k = min(lines, len(source_points))
            ax.plot(np.stack([source_points[:k, 0], samples[:k, 0]]), np.stack([source_points[:k, 1], samples[:k, 1]]),
                    color="0.6", lw=0.4, alpha=0.6)
            ax.scatter(samples[:, 0], samples[:, 1], s=1, color="C0", alpha=0.6)
            ax.set_title(f"{method}\n{sampler}, seed {record['seed']}", fontsize=8)
        ax = axes[i][0]
        if dataset in drawn or reference is None:
            ax.axis("off")
        else:
            drawn.add(dataset)
            ax.scatter(source_points[:, 0], source_points[:, 1], s=1, color="0.55", alpha=0.5)
            ax.scatter(reference[:, 0], reference[:, 1], s=1, color="C1", alpha=0.6)
            ax.set_title(f"{dataset}\ntarget and source", fontsize=8)
        limits = [a.get_xlim() + a.get_ylim() for a in axes[i] if a.has_data()]
        lo = min(min(lim[0], lim[2]) for lim in limits)
        hi = max(max(lim[1], lim[3]) for lim in limits)
        for a in axes[i]:
            a.set_xlim(lo, hi)
            a.set_ylim(lo, hi)
            a.set_aspect("equal")
            a.set_xticks([])
            a.set_yticks([])
    import textwrap

    caption = textwrap.fill(SAMPLES_CAPTION.format(lines=lines), width=int(28 * (len(methods) + 1)))
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.8 / (2.75 * len(rows) + 0.9), 1, 1), h_pad=1.2)
    _save(fig, path, dpi=110)
    return path


def plot_image_grids(records: list[dict], results_dir: Path, path: Path,
                     sampler_order: list[str] | None = None) -> Path | None:
    """The saved grids of generated images (each record's first 64 samples, its lowest
    seed): one row per (dataset, sampler), one column per method."""
    found = _lowest_seeds(records, results_dir, "grid", sampler_order)
    if found is None:
        return None
    chosen, rows, methods = found
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(methods), figsize=(2.6 * len(methods), 2.9 * len(rows)), squeeze=False)
    for i, (dataset, sampler) in enumerate(rows):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            ax.axis("off")
            record = chosen.get((dataset, sampler, method))
            if record is not None:
                image = plt.imread(results_dir / record["artefacts"]["grid"])
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{method}\n{dataset}, {sampler}, seed {record['seed']}", fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path


def plot_loss_curves(records: list[dict], path: Path) -> Path | None:
    """Training loss against step, one panel per dataset, one line per (method, seed), each
    divided by its own first logged value: methods define their losses differently (a mean
    or a sum over dimensions, another objective), so only the relative decrease compares."""
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
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")  # distinct colours up to 20 methods
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    cols = min(2, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows + 0.8), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        for (d, method, _seed), curve in sorted(seen.items()):
            points = [(step, value) for step, value in curve if value is not None and math.isfinite(value)]
            if d != dataset or not points or points[0][1] <= 0:
                continue
            first = points[0][1]
            ax.plot([p[0] for p in points], [p[1] / first for p in points], color=colours[method], alpha=0.7, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss / first logged loss")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], label=m) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 5), frameon=False, fontsize=8,
               title="one line per seed; losses differ between methods, so each is relative to its first value",
               title_fontsize=8)
    fig.tight_layout(rect=(0, (0.35 * math.ceil(len(methods) / 5) + 0.45) / (3.4 * rows + 0.8), 1, 1))
    _save(fig, path, dpi=120)
    return path


def _compact(value: Any, prefix: str = "") -> list[str]:
    """``key=value`` items of a spec part; a mapping that holds only a ``name`` is its name."""
    if isinstance(value, dict):
        if set(value) == {"name"}:
            return [f"{prefix}={value['name']}"] if prefix else [str(value["name"])]
        out: list[str] = []
        for key, item in value.items():
            out += _compact(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if value is None:
        return []
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return [f"{prefix}={text}" if prefix else text]


def _counted(values: list[str]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{v} ({n} records)" for v, n in counts.items())


def setup_items(suite: dict | None, records: list[dict]) -> tuple[list[list[Span]], list[SetupTable]]:
    """What produced the tables, as data for :func:`setup_section` and the HTML report: the
    bullets (the suite, budget, hardware, software versions, commit and dirty flag), each a
    list of spans, and one table per kind of spec (datasets, methods, samplers) of their
    resolved parameters."""
    bullets: list[list[Span]] = []
    if suite is not None:
        bullets.append([Strong("Suite"), " ", Code(str(suite.get("name"))), ": ",
                        suite.get("description") or "(no description)"])
        budget = suite.get("budget") or {}
        bullets.append([Strong("Budget"), (f": training {', '.join(_compact(budget.get('train'))) or '-'}; "
                                           f"evaluation {', '.join(_compact(budget.get('eval'))) or '-'}; "
                                           f"seeds {suite.get('seeds')}")])
        hardware = {k: v for k, v in (suite.get("hardware") or {}).items() if k not in ("description",)}
        bullets.append([Strong("Hardware spec"), " ", Code(str(hardware.pop("name", "?"))), ": ",
                        ", ".join(_compact(hardware))])
    envs = [r.get("environment") or {} for r in records]
    if envs:
        machine = [f"{e.get('cpu', '?')}, {e.get('cpu_count', '?')} cores, {e.get('device', '?')}"
                   + (", CUDA" if e.get("cuda_available") else "") for e in envs]
        bullets.append([Strong("Measured on"),
                        f": {_counted(machine)}; {_counted([str(e.get('platform')) for e in envs])}"])
        versions = [", ".join(f"{k} {e[k]}" for k in ("python", "torch", "numpy", "scipy", "torchdiffeq", "pydantic",
                                                         "flowgauge") if e.get(k)) for e in envs]
        bullets.append([Strong("Software"), f": {_counted(versions)}"])
        code = [f"commit {str(e.get('git_commit'))[:12]}" + (" (tree differed: " + ", ".join(e.get("git_dirty_files")
                or []) + ")" if e.get("git_dirty") else " (clean)") for e in envs]
        bullets.append([Strong("Code"), f": {_counted(code)}"])
        accepted = [r for r in records if r.get("code_accepted")]
        if accepted:
            bullets.append([Strong("Code fingerprint accepted later"), f" for {len(accepted)} records (",
                            Code("flowgauge rekey --accept-code"),
                            f"): {_counted([str(r['code_accepted'][-1].get('note')) for r in accepted])}"])
        shared = [e.get("concurrent_runs", 1) for e in envs]
        if max(shared) > 1:
            bullets.append([Strong("Concurrency"), (f": up to {max(shared)} runs shared the machine (timings are "
                                                    "not those of runs made alone)")])
    tables = []
    for kind, columns in (("datasets", ("implementation",)), ("methods", ("implementation",)),
                          ("samplers", ("solver",))):
        rows = []
        for spec in (suite or {}).get(kind) or []:
            extra = {}
            if kind == "methods":
                extra = {"network": spec.get("network"), "optimizer": spec.get("optimizer"),
                         "batch_size": spec.get("batch_size")}
                teacher = spec.get("teacher")
                if teacher:
                    extra["teacher"] = {"method": teacher["method"]["name"], "sampler": teacher["sampler"]["name"],
                                        **{k: v for k, v in teacher.items() if k not in ("method", "sampler")}}
            rows.append(SetupRow(spec.get("name"), [spec.get(c) for c in columns],
                                 ", ".join(_compact(spec.get("params") or {}) + _compact(extra)) or "-",
                                 spec.get("description") or ""))
        if rows:
            tables.append(SetupTable(kind, list(columns), rows))
    return bullets, tables


@dataclass
class SetupRow:
    name: Any
    columns: list[Any]  # the implementation (a sampler: its solver)
    parameters: str
    description: str


@dataclass
class SetupTable:
    kind: str  # datasets, methods, samplers
    columns: list[str]
    rows: list[SetupRow]


def markdown_spans(spans: list[Span]) -> str:
    """Spans as markdown: strong text in ``**``, code in backticks."""
    return "".join(f"**{s.text}**" if isinstance(s, Strong) else f"`{s.text}`" if isinstance(s, Code) else s
                   for s in spans)


def setup_section(suite: dict | None, records: list[dict]) -> str:
    """What produced the tables: the suite, budget, hardware, software versions, commit and
    dirty flag, and every dataset's, method's and sampler's resolved parameters."""
    from tabulate import tabulate

    bullets, tables = setup_items(suite, records)
    lines = ["## Set-up", "", *(f"- {markdown_spans(b)}" for b in bullets)]
    for table in tables:
        rows = [[row.name, *row.columns, row.parameters] for row in table.rows]
        lines += ["", f"**{table.kind.capitalize()}**", "",
                  tabulate(rows, ["name", *table.columns, "parameters (resolved, defaults included)"],
                           tablefmt="github", disable_numparse=True)]
    return "\n".join(lines)


@dataclass
class Figure:
    """A plot of the report: its file in the report's folder, its alternative text, and the
    caption printed under it ("" for none)."""

    file: str
    alt: str
    caption: str = ""

    def markdown(self) -> str:
        return f"![{self.alt}]({self.file})" + (f"\n\n{self.caption}" if self.caption else "")


LATENCY_CAPTION = ("{metric} against latency (ms per batch of generated samples, median over repeats; log axis), "
                   "means over seeds for each method and sampler. Ringed points and the step line: the Pareto front, "
                   "the points that no other is both faster and better than.")
IMAGES_CAPTION = "The first 64 generated images of each method's lowest seed, one row per sampler."


@dataclass
class ReportData:
    """What both renderings of a report show, read from a results directory once, with its
    plots drawn into ``out``; ``figures`` by role (by_method, cost, latency, nfe, samples,
    images, loss), only those drawn."""

    results_dir: Path
    out: Path
    suite: dict | None
    records: list[dict]  # the suite's, as last run
    older: list[dict]  # left out of the tables
    rank_by: str
    precision: int
    cost: str | None  # what quality_vs_cost.png plots against
    nfe: list[NfeTable]
    figures: dict[str, Figure]


def gather(results_dir: Path, out: Path) -> ReportData:
    """Read ``results_dir`` and draw the report's plots into ``out``."""
    from harness.results import read_suite

    records, older = suite_records(results_dir)  # the suite as last run; older records are noted
    frame = records_frame(records)
    suite = read_suite(results_dir)
    order = [s["name"] for s in (suite or {}).get("samplers") or [] if isinstance(s, dict) and "name" in s]
    metrics, rank_by, precision = leaderboard_options(results_dir)
    figures: dict[str, Figure] = {}
    if plot_by_method(frame, rank_by, out / f"{rank_by}_by_method.png"):
        figures["by_method"] = Figure(f"{rank_by}_by_method.png", f"{rank_by} by method and seed")
    cost = next((c for c in ("nfe", "latency", "train_time") if c in metrics and _cost_varies(frame, c)), None)
    by_latency = cost == "latency"  # then the cost plot is the latency plot: it gets the front
    if cost and rank_by != cost and plot_quality_vs_cost(frame, rank_by, cost, out / "quality_vs_cost.png", order,
                                                         front=by_latency):
        figures["cost"] = Figure("quality_vs_cost.png", f"{rank_by} against {cost}",
                                 LATENCY_CAPTION.format(metric=rank_by) if by_latency else "")
    if (not by_latency and rank_by != "latency" and _cost_varies(frame, "latency")
            and plot_quality_vs_cost(frame, rank_by, "latency", out / "quality_vs_latency.png", order, front=True)):
        figures["latency"] = Figure("quality_vs_latency.png", f"{rank_by} against latency, with the Pareto front",
                                    LATENCY_CAPTION.format(metric=rank_by))
    tables = nfe_tables(records, rank_by)
    if plot_quality_vs_nfe(tables, out / "quality_vs_nfe.png"):
        figures["nfe"] = Figure("quality_vs_nfe.png", f"{rank_by} against NFE", NFE_CAPTION.format(metric=rank_by))
    if plot_samples(records, results_dir, out / "samples.png", sampler_order=order):
        figures["samples"] = Figure("samples.png", "generated samples against the target",
                                    SAMPLES_CAPTION.format(lines=64))
    if plot_image_grids(records, results_dir, out / "image_samples.png", sampler_order=order):
        figures["images"] = Figure("image_samples.png", "generated images", IMAGES_CAPTION)
    if plot_loss_curves(records, out / "loss_curves.png"):
        figures["loss"] = Figure("loss_curves.png", "training loss, relative to its first logged value")
    return ReportData(results_dir, out, suite, records, older, rank_by, precision, cost, tables, figures)


def markdown_report(data: ReportData) -> str:
    """The text of report.md."""
    suite, figures = data.suite, data.figures
    title = f"# {data.results_dir.name}\n" + (f"\n{suite['description']}\n" if suite and suite.get("description")
                                               else "")
    parts = [title, leaderboard(data.results_dir, "markdown", records=data.records + data.older)]  # with the claims
    parts += [figures[role].markdown() for role in ("by_method", "cost", "latency") if role in figures]
    if any(t.is_sweep for t in data.nfe):
        text = "## Quality at NFE\n\n" + render_nfe(data.nfe, "markdown", data.precision)
        if "nfe" in figures:
            text += "\n\n" + figures["nfe"].markdown()
        parts.append(text)
    parts += [figures[role].markdown() for role in ("samples", "images", "loss") if role in figures]
    parts.append(setup_section(suite, data.records))
    return "\n\n".join(parts) + "\n"


def write_report(results_dir: Path, out: Path | None = None) -> Path:
    """Write ``report.md`` with its plots into ``out`` (default RESULTS_DIR/report): the
    tables and claims, the plots, and the set-up that produced them; and beside it
    ``report.html``, the same with the plots inline, the environment and the command that
    reproduces each run (:func:`report_blocks`)."""
    out = out or results_dir / "report"
    data = gather(results_dir, out)
    path = out / "report.md"
    text = markdown_report(data)
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    h.write_document(out / "report.html", results_dir.name, html_blocks(data))
    return path


# The HTML report -------------------------------------------------------------------------

BEST = ("\ue000", "\ue001")  # private-use characters around a best value, turned into Strong


def _marked(text: str) -> list[Span]:
    """Spans of a cell whose best value sits between the BEST marks."""
    spans: list[Span] = []
    for i, part in enumerate(re.split(f"[{''.join(BEST)}]", text)):
        if part:
            spans.append(Strong(part) if i % 2 else part)
    return spans


def leaderboard_blocks(results_dir: Path, records: list[dict], older: list[dict]) -> list[Block]:
    """The leaderboard's tables (as :func:`harness.leaderboard.leaderboard` builds them), its
    notes, and the claims with their verdicts and the test behind each."""
    from harness.claims import evaluate, suite_claims
    from harness.leaderboard import current_claims, ranked_tables
    from harness.results import read_suite

    if not records:
        return [h.Paragraph(f"no records under {results_dir / 'records'}"
                            + (f" ({len(older)} older ones left out)" if older else ""))]
    ranked = ranked_tables(results_dir, records, older)
    loaded, precision = ranked.loaded, ranked.precision
    blocks: list[Block] = [h.Heading("Leaderboard", 2)]
    for table in ranked.tables:
        rows = []
        for i, row in enumerate(table.rows, 1):
            if row.status != "ok":
                cells: list[h.Text] = [row.status] + ["—"] * (len(table.metrics) - 1)
            else:
                cells = [(Strong if row.cells[m].best else str)(format_mean_std(row.cells[m].mean, row.cells[m].std,
                                                                                 precision)) for m in table.metrics]
            rows.append([str(i) if row.status == "ok" else "—", row.label, row.sampler, row.seeds_text, *cells])
        blocks += [h.Heading(table.dataset, 3),
                   h.Table(["#", "method", "sampler", "seeds", *(header(m) for m in table.metrics)], rows,
                           f"ranked by {header(table.rank_by)}; best in bold; mean ± std over seeds",
                           "rllr" + "r" * len(table.metrics), cls="leaderboard"),
                   *(h.Paragraph(note) for note in table.notes)]
    blocks += [h.Paragraph(n) for n in ranked.notes]
    stored = read_suite(results_dir, quiet=True)
    if stored is None:
        return blocks
    suite, notes = current_claims(results_dir, stored)
    claims = suite_claims(suite)
    if not claims:
        return blocks
    results = [evaluate(c, loaded) for c in claims]
    rows = []
    for r in results:
        source = r.claim.source.paper + (f", {r.claim.source.table}" if r.claim.source.table else "")
        rows.append([r.claim.dataset, h.Code(r.claim.describe()), r.measured,
                     [Strong(r.verdict), f" ({r.reason})" if r.reason else ""], r.test or "—",
                     source + (f" ({r.claim.source.url})" if r.claim.source.url else "")])
    return blocks + [h.Heading("Claims", 3), *(h.Paragraph(n) for n in notes),
                     h.Table(["dataset", "claim", "measured (mean ± std over seeds; interval)", "verdict", "test",
                              "source"], rows, "Published claims against these records: verdicts on 95 % intervals "
                             "over seeds, with the statistical test behind each.", cls="claims")]


def nfe_blocks(tables: list[NfeTable], precision: int) -> list[Block]:
    """The quality-at-NFE tables (when some method was sampled at more than one NFE)."""
    from harness.leaderboard import NFE_LEGEND, _nfe_body

    if not any(t.is_sweep for t in tables):
        return []
    blocks: list[Block] = [h.Heading("Quality at NFE", 2)]
    for table in tables:
        headers, body = _nfe_body(table, precision, str, lambda s: f"{BEST[0]}{s}{BEST[1]}" if s else s)
        blocks += [h.Heading(f"{table.dataset}: {header(table.rank_by)} at each NFE", 3),
                   h.Table(headers, [[_marked(cell) for cell in row] for row in body],
                           "mean ± std over seeds; best of each column in bold", "llr" + "r" * (len(headers) - 3),
                           cls="nfe"),
                   *(h.Paragraph(n) for n in [NFE_LEGEND, *table.notes])]
    return blocks


def _figure(data: ReportData, role: str) -> list[Block]:
    """The figure of ``role`` inline, if it was drawn."""
    figure = data.figures.get(role)
    if figure is None:
        return []
    return [h.Image.from_file(data.out / figure.file, figure.alt, figure.caption or None)]


def environment_blocks(records: list[dict]) -> list[Block]:
    """Every environment field of the records (machine, versions, determinism settings,
    commit): the value, with a count of records where they differ."""
    envs = [r.get("environment") or {} for r in records]
    keys = sorted({k for e in envs for k in e})
    if not keys:
        return []

    def text(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "(none)"
        return "—" if value is None else str(value)

    rows = [[h.Code(k), _counted([text(e.get(k)) for e in envs])] for k in keys]
    return [h.Heading("Environment", 2),
            h.Details(f"What the {len(envs)} records were measured with ({len(keys)} fields)",
                      [h.Table(["field", "value (record counts where they differ)"], rows, cls="environment")],
                      open=True)]


@dataclass
class Reproduction:
    """How to run one training (dataset/method/seedN) of a results directory again."""

    run: str
    records: int
    code: str  # the commit(s) of its records, and whether the tree was dirty
    command: str


def _suite_reference(origin: dict, suite: dict | None) -> tuple[str, str | None]:
    """(the suite as ``flowgauge run`` takes it, a ``--specs`` root or None) from suite.json's
    ``origin``: a suite file inside a checkout's specs/suites/ as the path from the
    checkout's root; a specs root named specs/ as the checkout's own (left out)."""
    ref = origin.get("suite") if isinstance(origin.get("suite"), str) else (suite or {}).get("name") or "SUITE"
    specs = origin.get("specs") if isinstance(origin.get("specs"), str) else None
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        parts = Path(ref).parts
        if len(parts) >= 3 and parts[-3:-1] == ("specs", "suites"):
            ref = str(Path("specs", "suites", parts[-1]))
    if specs is not None and Path(specs).name == "specs":
        specs = None
    return ref, specs


def reproductions(results_dir: Path, records: list[dict], suite: dict | None) -> list[Reproduction]:
    """For every training of ``records``: the commit that made it and the command that runs
    it again into ``results_dir`` (``--rerun``: train again, not reuse the records)."""
    import shlex

    from harness.results import read_suite_file

    origin = (read_suite_file(results_dir) or {}).get("origin")
    ref, specs = _suite_reference(origin if isinstance(origin, dict) else {}, suite)
    overrides = [o for o in (origin or {}).get("overrides") or [] if isinstance(o, str)]
    base = ["flowgauge", *(["--specs", specs] if specs else []), "run", ref,
            *(arg for o in overrides for arg in ("--set", o))]
    runs: dict[tuple[str, str, int], list[dict]] = {}
    for r in records:
        runs.setdefault((r["dataset"], r["method"], r["seed"]), []).append(r)
    out = []
    for (dataset, method, seed), group in sorted(runs.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])):
        label = f"{dataset}/{method}/seed{seed}"
        envs = [r.get("environment") or {} for r in group]
        commits = sorted({str(e["git_commit"]) for e in envs if e.get("git_commit")})
        dirty = sorted({f for e in envs if e.get("git_dirty") for f in e.get("git_dirty_files") or ["?"]})
        code = ", ".join(c[:12] for c in commits) or "—"
        if dirty:
            code += f" (dirty tree: {', '.join(dirty)})"
        command = shlex.join([*base, "--only", label, "--rerun", "--results", str(results_dir)])
        if len(commits) == 1:
            command = f"git checkout {commits[0]} && {command}"
        out.append(Reproduction(label, len(group), code, command))
    return out


REPRODUCE_TEXT = ("Each training (dataset/method/seed) with the commit its records were made at and the command that "
                  "trains and evaluates it again from a checkout's root: --rerun replaces its records in this folder "
                  "(give another --results folder to keep them). A dirty tree means that files differed from the "
                  "commit; those changes are not in it.")


def html_blocks(data: ReportData) -> list[Block]:
    """The HTML report's blocks: report.md's content, plus the latency Pareto plot (in both),
    the environment of the records and the command that reproduces each run."""
    suite = data.suite
    blocks: list[Block] = [h.Heading(data.results_dir.name, 1)]
    if suite and suite.get("description"):
        blocks.append(h.Paragraph(str(suite["description"])))
    blocks += leaderboard_blocks(data.results_dir, data.records, data.older)
    plots = [b for role in ("by_method", "cost", "latency") for b in _figure(data, role)]
    if plots:
        blocks += [h.Heading("Quality against cost", 2), *plots]
    nfe = nfe_blocks(data.nfe, data.precision)
    blocks += nfe + (_figure(data, "nfe") if nfe else [])
    samples = [b for role in ("samples", "images") for b in _figure(data, role)]
    if samples:
        blocks += [h.Heading("Samples", 2), *samples]
    if loss := _figure(data, "loss"):
        blocks += [h.Heading("Training loss", 2), *loss]
    bullets, tables = setup_items(suite, data.records)
    blocks += [h.Heading("Set-up", 2), h.BulletList(bullets)]
    for table in tables:
        blocks += [h.Heading(table.kind.capitalize(), 3),
                   h.Table(["name", *table.columns, "description", "parameters (resolved, defaults included)"],
                           [[str(r.name or ""), *("" if c is None else str(c) for c in r.columns), r.description,
                             r.parameters] for r in table.rows], cls=f"setup-{table.kind}")]
    blocks += environment_blocks(data.records)
    runs = reproductions(data.results_dir, data.records, suite)
    if runs:
        blocks += [h.Heading("Reproduce", 2), h.Paragraph(REPRODUCE_TEXT),
                   h.Table(["run", "records", "code", "command"],
                           [[r.run, str(r.records), r.code, h.Code(r.command)] for r in runs], align="lrll",
                           cls="reproduce")]
    return blocks


def report_blocks(results_dir: Path, out: Path) -> list[Block]:
    """The HTML report of ``results_dir`` as blocks (its plots drawn into ``out``), for a
    page of one's own: :func:`write_html_comparison` puts two side by side."""
    return html_blocks(gather(results_dir, out))


def write_html_comparison(left: Path, right: Path, out: Path, summary: list[Block] | None = None) -> Path:
    """Write the HTML reports of two results directories side by side into the file ``out``
    (plots inline; drawn in a temporary folder), after the blocks of ``summary`` (what a
    comparison found, say) under the page's title."""
    import tempfile

    names = (left.name, right.name) if left.name != right.name else (str(left), str(right))
    with tempfile.TemporaryDirectory() as tmp:
        columns = h.side_by_side(names[0], report_blocks(left, Path(tmp) / "left"),
                                 names[1], report_blocks(right, Path(tmp) / "right"))
    title = f"{names[0]} vs {names[1]}"
    return h.write_document(out, title, [h.Heading(title, 1), *(summary or []), columns])


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Write a figure atomically (a full disk is a StorageError naming the file) and close it."""
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)
