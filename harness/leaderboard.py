"""Leaderboard tables from a directory of records.

Records → one DataFrame → mean ± std over seeds per (dataset, method, sampler) → one
table per dataset, ranked by the suite's ``rank_by`` metric in its own direction, units
in the headers and the best value of each column marked. One table model renders to
GitHub markdown, LaTeX (booktabs), HTML and CSV, and to JSON (:mod:`harness.table_json`:
the model itself, raw numbers, for other tools).

A second view, quality at NFE (``flowgauge leaderboard --view nfe``), pivots those rows to
one row per method and one column per (NFE, sampler), adaptive samplers last with their
mean NFE, beside each method's training cost: what each network evaluation buys.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import latex
from harness.registry import METRICS
from harness.statistics import summarize

FORMATS = ("markdown", "latex", "html", "csv", "json")
STATUS_ORDER = {"ok": 0, "diverged": 1, "failed": 2}


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int
    best: bool = False
    values: list[float] = field(default_factory=list, compare=False, repr=False)  # what mean and std summarise
    seeds: list[int] = field(default_factory=list, compare=False, repr=False)  # each value's seed, where known


@dataclass
class Row:
    method: str
    sampler: str
    seeds: int
    status: str  # "ok", or the worst status among the seeds
    cells: dict[str, Cell]
    finished: int = 0  # seeds that finished ok: the means are over these
    variant: str = ""  # what sets this row apart from others of its method and sampler

    @property
    def label(self) -> str:
        """The method, with its variant when one method has rows of several configurations."""
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    @property
    def seeds_text(self) -> str:
        """"5", or "4/5" when a seed failed or diverged: it is not in the means."""
        return str(self.seeds) if self.finished in (self.seeds, 0) else f"{self.finished}/{self.seeds}"


@dataclass
class Table:
    dataset: str
    metrics: list[str]
    rank_by: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # e.g. a metric's noise floor on this dataset


def higher_is_better(name: str) -> bool:
    """True when higher is better; metrics unknown to this version rank lower-is-better."""
    return METRICS.get(name).higher_is_better if name in METRICS else False


def badness(name: str, value: float) -> float:
    """What ranking minimises for ``name``; metrics unknown to this version: the value."""
    return METRICS.get(name).badness(value) if name in METRICS else value


def header(name: str) -> str:
    return METRICS.get(name).label if name in METRICS else name


def _rank_key(row: Row, rank_by: str) -> tuple:
    """Rows with a value first, best first; rows without one (diverged, failed) last."""
    v = row.cells[rank_by].mean if rank_by in row.cells else None
    missing = v is None or not math.isfinite(v)
    return (missing, 0.0 if missing else badness(rank_by, v), row.method, row.variant, row.sampler)


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value, separators=(",", ":"))}


def variant_labels(records: list[dict]) -> dict[str, str]:
    """For each configuration (``config`` of :func:`~harness.results.records_frame`) that
    shares its dataset, method and sampler with another, the settings that tell it apart,
    e.g. ``method.optimizer.lr=0.02``; configurations alone in their row get no label."""
    from harness.plan import config_key, config_spec

    by_row: dict[tuple, dict[str, dict]] = {}
    for r in records:
        try:
            spec = config_spec(r["spec"])
        except (KeyError, TypeError, AttributeError):
            continue
        by_row.setdefault((r["dataset"], r["method"], r["sampler"]), {})[config_key(r["spec"])] = spec
    labels: dict[str, str] = {}
    for configs in by_row.values():
        if len(configs) < 2:
            continue
        flat = {key: _flatten(spec) for key, spec in configs.items()}
        paths = sorted(set().union(*flat.values()))
        differing = [p for p in paths if len({f.get(p) for f in flat.values()}) > 1]
        for key, f in flat.items():
            shown = [f"{p}={json.loads(f[p]) if p in f else '(unset)'}" for p in differing[:2]]
            more = f", +{len(differing) - 2} more" if len(differing) > 2 else ""
            labels[key] = ", ".join(shown) + more if shown else f"config {key[:8]}"
    return labels


# Provenance entries that describe one value's own uncertainty (a standard error), not how
# it was made: values of one method differ in them, so they never make a column mixed.
VALUE_STATISTICS = frozenset({"std_error_nats"})


def mixed_provenance(frame: Any, metric: str) -> str:
    """What differs between the provenances of ``metric``'s values in ``frame`` (finished
    records of one table), e.g. "weights_sha256: 9192fcffb295, 0a1b2c3d4e5f"; "" when they
    agree or the metric records none."""
    from harness.results import PROVENANCE

    column = metric + PROVENANCE
    if column not in frame:
        return ""
    # only values that exist: a record whose metric is not applicable (—) made nothing
    has_value = frame[metric].notna() if metric in frame else True
    values = frame.loc[(frame["status"] == "ok") & has_value, column].dropna().unique()
    if len(values) < 2:
        return ""
    parsed = [json.loads(v) for v in values]
    keys = sorted({k for p in parsed for k in p} - VALUE_STATISTICS)
    differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in parsed}) > 1]
    return "; ".join(f"{k}: " + ", ".join(sorted({str(p.get(k))[:12] for p in parsed})) for k in differing)


def build_tables(frame: Any, metrics: list[str], rank_by: str, variants: dict[str, str] | None = None) -> list[Table]:
    """Aggregate over seeds and rank; ``frame`` comes from ``results.records_frame``. One
    row per (method, sampler, configuration): records are averaged only with records that
    differ from them by seed; ``variants`` labels rows of one method that differ otherwise."""
    tables = []
    if frame.empty:
        return tables
    variants = variants or {}
    if "config" not in frame:
        frame = frame.assign(config="")
    for dataset, by_dataset in frame.groupby("dataset", sort=True):
        rows = []
        for (method, sampler, config), group in by_dataset.groupby(["method", "sampler", "config"], sort=False):
            ok = group[group["status"] == "ok"]
            worst = max(group["status"], key=lambda s: STATUS_ORDER.get(s, 3))
            cells = {}
            for m in metrics:
                have = ok[m].dropna() if m in ok else ok["seed"].iloc[0:0]
                values = have.astype(float).tolist()
                summary = summarize(values) if values else None
                cells[m] = Cell(summary and summary.mean, summary and summary.std, len(values), values=values,
                                seeds=[int(s) for s in ok.loc[have.index, "seed"]])
            rows.append(Row(method, sampler, int(group["seed"].nunique()), worst if ok.empty else "ok", cells,
                            int(ok["seed"].nunique()), variants.get(config, "")))
        mixed = {m: differing for m in metrics if (differing := mixed_provenance(by_dataset, m))}
        if rank_by in mixed:
            rows.sort(key=lambda row: (row.method, row.variant, row.sampler))  # not ranked: see the note
        else:
            rows.sort(key=lambda row: _rank_key(row, rank_by))
        for m in metrics:
            vals = [r.cells[m].mean for r in rows if r.cells[m].mean is not None and math.isfinite(r.cells[m].mean)]
            if not vals or m in mixed:
                continue
            if m in METRICS and not METRICS.get(m).marks_best:
                continue  # the set-up decides it (a sampler's NFE): nothing to win
            best = min(vals, key=lambda v: badness(m, v))
            winners = [r for r in rows if r.cells[m].mean is not None and badness(m, r.cells[m].mean) == badness(m, best)]
            if len({(r.method, r.variant) for r in winners}) > 1:
                continue  # a tie between methods marks nothing (one model under several samplers is no tie)
            for r in winners:
                r.cells[m].best = True
        notes = [f"{m}: this column mixes values of different provenance ({differing}); they are not comparable, "
                 f"so none is marked best{' and the rows are not ranked' if m == rank_by else ''}. Rerun the "
                 "older records (run --rerun) to measure them alike."
                 for m, differing in mixed.items()]
        for m in metrics:
            if note := floor_note(by_dataset[by_dataset["status"] == "ok"], m):
                notes.append(note)
            floor = METRICS.get(m).noise_floor if m in METRICS else None
            if floor is not None and (note := floor(by_dataset[by_dataset["status"] == "ok"])):
                notes.append(note)
        tables.append(Table(str(dataset), metrics, rank_by, rows, notes))
    return tables


def floor_note(rows: Any, metric: str) -> str | None:
    """What a perfect model scores on ``metric`` in these records (``measurements.floors``):
    real training images at the evaluation's sample count (mean ± std over seeds), and for a
    latent flow, those images through its autoencoder, by method."""
    from harness.results import FLOOR

    column = f"{metric}{FLOOR}train_images"
    if column not in rows or rows[column].dropna().empty:
        return None
    per_seed = rows.dropna(subset=[column]).groupby("seed")[column].first().astype(float).tolist()
    n = rows[f"{metric}{FLOOR}num_samples"].dropna()
    text = (f"{metric} floor, what a perfect model scores: {format_mean_std((summary := summarize(per_seed)).mean, summary.std)} for "
            f"{int(n.iloc[0]) if len(n) else '?'} real training images")
    recon = f"{metric}{FLOOR}reconstructions"
    if recon in rows and not rows[recon].dropna().empty:
        by_method = rows.dropna(subset=[recon]).groupby("method")[recon].mean()
        text += "; the same images through the autoencoder of " + ", ".join(
            f"{method}: {format_number(float(v))}" for method, v in by_method.items()) + " (no latent flow can do better)"
    return text + "."


def format_number(v: float | None, precision: int = 4) -> str:
    """``precision`` significant digits in fixed notation (0.00001234, never 1.234e-05);
    integers as integers, thousands grouped."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10**precision:
        return f"{v:.0f}"
    decimals = max(0, precision - 1 - math.floor(math.log10(abs(v))))
    text = f"{v:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def spread_decimals(std: float) -> int:
    """Decimals that show a spread to two significant digits (0.74, 0.055, 47)."""
    return max(0, 1 - math.floor(math.log10(std)))


def format_mean_std(mean: float | None, std: float | None, precision: int = 4) -> str:
    """``mean ± std`` with the mean rounded where the spread's second digit is (3.03 ± 0.74,
    282 ± 47); one seed (no spread) or a spread of 0 (NFE): the mean alone."""
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std) or std == 0:
        return format_number(mean, precision)
    d = spread_decimals(std)
    grouped = "," if abs(mean) >= 1000 else ""
    return f"{mean:{grouped}.{d}f} ± {std:.{d}f}"


def markdown_escape(text: Any) -> str:
    """Text for a cell of a GitHub markdown table: a pipe escaped (it would end the cell),
    a backslash doubled, ``<`` before a letter escaped (it would open raw HTML), line
    breaks as spaces."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"\s*[\r\n]+\s*", " ", re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text))


def _cell_text(cell: Cell, precision: int, bold: tuple[str, str]) -> str:
    text = format_mean_std(cell.mean, cell.std, precision)
    return f"{bold[0]}{text}{bold[1]}" if cell.best else text


def render(tables: list[Table], fmt: str = "markdown", precision: int = 4) -> str:
    """Render tables; ``csv`` gives raw means and stds, one line per (dataset, method, sampler)."""
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _render_csv(tables)
    if fmt == "json":
        from harness import table_json

        return table_json.dumps(table_json.ranked_document(tables, precision))
    bold = {"markdown": ("**", "**"), "latex": (r"\textbf{", "}"), "html": ("<b>", "</b>")}[fmt]
    parts = []
    for table in tables:
        headers = ["#", "method", "sampler", "seeds"] + [header(m) for m in table.metrics]
        body = []
        for i, row in enumerate(table.rows, 1):
            if row.status != "ok":
                metric_cells = [row.status] + ["—"] * (len(table.metrics) - 1)
            else:
                metric_cells = [_cell_text(row.cells[m], precision, bold) for m in table.metrics]
            body.append([i if row.status == "ok" else "—", row.label, row.sampler, row.seeds_text, *metric_cells])
        if fmt == "markdown":
            title = (f"### {markdown_escape(table.dataset)}  (ranked by {header(table.rank_by)}; best in bold; "
                     "mean ± std over seeds)")
            align = ("right", "left", "left", "right", *["right"] * len(table.metrics))
            body = [[r[0], markdown_escape(r[1]), markdown_escape(r[2]), *r[3:]] for r in body]
            parts.append(title + "\n\n" + tabulate(body, list(map(markdown_escape, headers)), tablefmt="github",
                                                    disable_numparse=True, colalign=align)
                         + "".join(f"\n\n{note}" for note in table.notes))
        elif fmt == "latex":
            cells = [[latex.escape(str(c)) for c in r[:4]]
                     + [(r"\textbf{" + latex.escape(c[len(bold[0]):-1]) + "}") if c.startswith(bold[0])
                        else latex.escape(c) for c in r[4:]] for r in body]
            seeds = sorted({row.seeds for row in table.rows})
            over = f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1 else "seeds"
            caption = latex.escape(f"{table.dataset}: mean ± std over {over}, ranked by {header(table.rank_by)}; "
                                   "best in bold.")
            parts.append(latex.tabular([latex.escape(h) for h in headers], cells, "rllr" + "r" * len(table.metrics),
                                       caption, "tab:" + re.sub(r"[^A-Za-z0-9:-]", "-", table.dataset)))
        else:
            # only the metric cells carry the bold markers: numbers and statuses, no names
            esc = [[html.escape(str(c)) for c in r[:4]]
                   + [html.escape(c).replace("&lt;b&gt;", "<b>").replace("&lt;/b&gt;", "</b>") for c in r[4:]]
                   for r in body]
            parts.append(f"<h3>{html.escape(table.dataset)}</h3>\n"
                         + tabulate(esc, [html.escape(h) for h in headers], tablefmt="unsafehtml")
                         + "".join(f"\n<p>{html.escape(note)}</p>" for note in table.notes))
    return "\n\n".join(parts)


def _render_csv(tables: list[Table]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    metrics = tables[0].metrics if tables else []
    writer.writerow(["dataset", "rank", "method", "sampler", "seeds", "status",
                     *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]])
    for table in tables:
        for i, row in enumerate(table.rows, 1):
            values = []
            for m in metrics:
                c = row.cells[m]
                values += ["" if c.mean is None else repr(c.mean), "" if c.std is None else repr(c.std)]
            writer.writerow([table.dataset, i, row.label, row.sampler, row.seeds, row.status, *values])
    return out.getvalue().rstrip("\n")


def leaderboard_options(results_dir: Path) -> tuple[list[str], str, int]:
    """(metrics, rank_by, precision) from the suite that wrote ``results_dir``."""
    from pydantic import ValidationError

    from harness.results import read_suite
    from harness.spec import LeaderboardSpec

    suite = read_suite(results_dir)
    if suite is None:
        return [], "w2", 4
    try:  # suite.json is data on disk, maybe edited or from an older flowgauge: checked as a spec is
        lb = LeaderboardSpec.model_validate(suite.get("leaderboard") or {})
        metrics = lb.columns or [m["name"] if isinstance(m, dict) else m for m in suite.get("metrics") or []]
        if not all(isinstance(m, str) for m in metrics):
            raise TypeError("metric names must be strings")
    except (ValidationError, TypeError, KeyError, AttributeError) as err:
        first = err.errors(include_url=False)[0] if isinstance(err, ValidationError) else None
        why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(err)
        print(f"warning: ignored unusable leaderboard options in {results_dir / 'suite.json'} ({why}); "
              "using the defaults", file=sys.stderr)
        return [], "w2", 4
    return metrics, lb.rank_by, lb.precision


def current_claims(results_dir: Path, stored: dict) -> tuple[dict, list[str]]:
    """The suite whose claims to check, and notes for the reader. Claims are descriptive
    (editing them keeps every record), so they are read from the suite's specs as they
    stand now, found again through suite.json's ``origin``; the stored suite is the
    fallback when the specs cannot be read. A note says when the claims changed since the
    run, and when the specs changed in more than their claims (the records then describe
    the suite as it was run, not as it stands)."""
    from harness.claims import suite_claims
    from harness.errors import SpecError
    from harness.plan import canonical, make_plan
    from harness.resolve import load_suite
    from harness.results import current_keys, read_suite_file

    origin = (read_suite_file(results_dir) or {}).get("origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("suite"), str):
        return stored, []
    try:
        root = Path(origin["specs"]) if origin.get("specs") else None
        suite = load_suite(origin["suite"], list(origin.get("overrides") or []), root=root)
    except SpecError as err:
        return stored, [f"Note: the claims are those stored at run time; the suite's specs cannot be read now ({err})."]
    now = canonical(suite)
    notes = []
    if [c.model_dump() for c in suite_claims(now)] != [c.model_dump() for c in suite_claims(stored)]:
        notes.append(f"Note: the claims changed since the run; these verdicts use them as {origin['suite']} "
                     "states them now.")
    keys = current_keys(results_dir)
    if keys is not None and set(make_plan(suite).record_keys) != keys:
        notes.append(f"Note: {origin['suite']} (or the code it runs) changed since the run in more than its claims; "
                     "the verdicts are on the records of the suite as it was run. Rerun it for records of the suite "
                     "as it stands.")
    return now, notes


def claims_report(results_dir: Path, fmt: str = "markdown", frame: Any = None,
                  reread_specs: bool = True) -> tuple[str, list]:
    """The claims table of a results directory and the verdicts behind it; ``frame`` is
    its records' DataFrame when the caller has already loaded it. Notes (claims changed
    since the run, say) come first, as paragraphs. ``reread_specs=False`` takes the claims
    stored in suite.json as they are (``run``, which has just written them)."""
    from harness.claims import evaluate, suite_claims
    from harness.claims import render as render_claims
    from harness.results import read_suite, records_frame, suite_records

    stored = read_suite(results_dir)
    if stored is None:
        return "", []
    suite, notes = current_claims(results_dir, stored) if reread_specs else (stored, [])
    claims = suite_claims(suite)
    if not claims:
        return "", []
    if frame is None:  # claims are about the suite as it was run: its own records only
        frame = records_frame(suite_records(results_dir)[0])
    results = [evaluate(c, frame) for c in claims]
    if fmt == "json":  # notes go in the document
        from harness import table_json

        return table_json.dumps(table_json.claims_document(results, notes)), results
    text = render_claims(results, fmt)
    if notes and fmt == "markdown":
        text = "\n\n".join(notes) + "\n\n" + text
    elif notes and fmt == "html":
        text = "".join(f"<p>{html.escape(n)}</p>\n" for n in notes) + text
    elif notes:
        print("\n".join(notes), file=sys.stderr)
    return text, results


TIMING_NEEDS = {"latency", "memory", "train"}


def concurrency_note(records: list[dict], metrics: list[str]) -> str:
    """A warning when timings in the table were taken while other runs shared the machine."""
    timed = [m for m in metrics if m in METRICS and METRICS.get(m).needs & TIMING_NEEDS]
    shared = [r for r in records if (r.get("environment") or {}).get("concurrent_runs", 1) > 1]
    if not timed or not shared:
        return ""
    most = max(r["environment"]["concurrent_runs"] for r in shared)
    return (f"Note: {len(shared)} of {len(records)} records were measured with up to {most} runs sharing the "
            f"machine (--workers); their {', '.join(timed)} are not comparable with runs made alone.")


def busy_records(records: list[dict]) -> list[dict]:
    """Records with a timing taken while other processes loaded the machine: their
    evaluation's or their training's ``load`` says ``busy`` (see ``harness.measure.OtherLoad``)."""
    from harness.measure import busy_timing

    return [r for r in records if busy_timing((r.get("measurements") or {}).get("load"))
            or busy_timing((r.get("train") or {}).get("load"))]


def load_note(records: list[dict], metrics: list[str]) -> str:
    """A warning when timings in the table were taken on a machine that other processes
    kept busy (more than ``BUSY_CORES`` of CPU), with the largest load seen."""
    from harness.measure import BUSY_CORES

    timed = [m for m in metrics if m in METRICS and METRICS.get(m).needs & TIMING_NEEDS]
    busy = busy_records(records)
    if not timed or not busy:
        return ""
    loads = [(r.get(part) or {}).get("load") or {} for r in busy for part in ("measurements", "train")]
    most = max((ld.get("other_cores") or 0.0) for ld in loads)
    return (f"Note: {len(busy)} of {len(records)} records were timed on a busy machine (other processes used more "
            f"than {BUSY_CORES:g} cores, up to {most:.2f}); their {', '.join(timed)} carry that load.")


def _no_records(results_dir: Path, older: list[dict], fmt: str, view: str) -> str:
    """What the leaderboard says of a folder without records of its suite; in JSON, a
    document without tables that says it in its notes."""
    text = f"no records under {results_dir / 'records'}" + (f" ({len(older)} older ones left out)" if older else "")
    if fmt != "json":
        return text
    from harness import table_json

    document = (table_json.ranked_document([], notes=[text], with_claims=True) if view == "ranked"
                else table_json.nfe_document([], notes=[text]))
    return table_json.dumps(document)


def older_records_note(older: list[dict], results_dir: Path) -> str:
    """Why some records of the folder are not in the tables, and how to see them."""
    if not older:
        return ""
    return (f"Left out: {len(older)} record(s) in {results_dir / 'records'} that the suite as last run no longer "
            f"produces (other settings or older specs); `flowgauge leaderboard {results_dir} --all` shows them as "
            "rows of their own, `flowgauge run ... --prune` deletes them.")


@dataclass
class Ranked:
    """What every rendering of the ranked leaderboard starts from: the records as a frame,
    the tables built from it, and the notes that go under them."""

    loaded: Any  # records_frame of the records shown
    tables: list[Table]
    metrics: list[str]
    precision: int
    notes: list[str]


def ranked_tables(results_dir: Path, records: list[dict], older: list[dict], rank_by: str | None = None) -> Ranked:
    """The ranked tables of ``records`` (the suite's columns, or every metric the records
    have), ranked by ``rank_by`` or the suite's choice, with the notes on shared or busy
    machines and on the ``older`` records left out."""
    from harness.results import records_frame

    loaded = records_frame(records)
    frame = loaded.copy()
    metrics, default_rank, precision = leaderboard_options(results_dir)
    if not metrics:
        fixed = {"key", "config", "suite", "dataset", "method", "sampler", "seed", "status"}
        metrics = [c for c in frame.columns if c not in fixed and not c.endswith("@provenance")]
    rank = rank_by or default_rank
    if rank not in metrics:
        metrics = [rank, *metrics]
    for m in metrics:
        if m not in frame:
            frame[m] = None
    tables = build_tables(frame, metrics, rank, variant_labels(records))
    notes = [n for n in (concurrency_note(records, metrics), load_note(records, metrics),
                         older_records_note(older, results_dir)) if n]
    return Ranked(loaded, tables, metrics, precision, notes)


def leaderboard(results_dir: Path, fmt: str = "markdown", rank_by: str | None = None,
                records: list[dict] | None = None, include_older: bool = False, reread_specs: bool = True) -> str:
    """The tables (and, in markdown and HTML, the claims) of ``results_dir``; ``records``
    when the caller has already read them. Only the records of the suite as last run are
    shown unless ``include_older``; each row is one configuration."""
    from harness.results import suite_records

    records, older = suite_records(results_dir, records, include_older)
    if not records:
        return _no_records(results_dir, older, fmt, "ranked")
    ranked = ranked_tables(results_dir, records, older, rank_by)
    loaded, tables, precision, notes = ranked.loaded, ranked.tables, ranked.precision, ranked.notes
    text = render(tables, fmt, precision)
    if fmt == "json":
        from harness import table_json

        claims, verdicts = claims_report(results_dir, fmt, None if include_older else loaded, reread_specs)
        return table_json.dumps(table_json.ranked_document(tables, precision, notes,
                                                           json.loads(claims) if verdicts else None, with_claims=True))
    if notes and fmt in ("markdown", "html"):
        text += "".join(f"\n\n{n}" if fmt == "markdown" else f"\n<p>{html.escape(n)}</p>" for n in notes)
    if fmt in ("markdown", "html"):
        claims, _ = claims_report(results_dir, fmt, None if include_older else loaded, reread_specs)
        if claims:
            text += ("\n\n### Claims\n\n" if fmt == "markdown" else "\n\n<h3>Claims</h3>\n") + claims
    return text


# Quality at NFE: what each network evaluation buys ---------------------------------------

TRAIN_COSTS = ("train_steps_per_s", "train_time")  # metric names: their headers and directions


@dataclass(frozen=True)
class NfeColumn:
    """A column of the quality-at-NFE view: an NFE per sample (counted at the network,
    rounded to an integer), or an adaptive sampler whose cells state their own mean NFE."""

    sampler: str | None  # the adaptive sampler; None for a fixed-NFE column
    nfe: int | None  # None: adaptive, or not measured (every seed failed)
    adaptive: bool = False

    @property
    def label(self) -> str:
        """"4", "adaptive (dopri5)"; "?" when no seed measured it."""
        if self.adaptive:
            return f"adaptive ({self.sampler})"
        return "?" if self.nfe is None else str(self.nfe)


def sampler_family(sampler: str) -> str:
    """The sampler's name without its step count: euler-4 and euler-8 are one family (one
    row of the NFE view, one line of its plot); boss-4 is another."""
    return re.sub(r"-\d+$", "", sampler)


ONE_STEP = "any (one-step map)"


@dataclass
class NfeRow:
    method: str
    variant: str
    family: str  # the samplers of this row: sampler_family, or ONE_STEP
    cells: dict[NfeColumn, Row]  # the leaderboard's row of this method and family under each column
    train: dict[str, Cell]  # TRAIN_COSTS over the method's trained models, one per seed

    @property
    def label(self) -> str:
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    @property
    def seeds(self) -> int:
        return max(row.seeds for row in self.cells.values())


@dataclass
class NfeTable:
    dataset: str
    rank_by: str
    columns: list[NfeColumn]
    rows: list[NfeRow]
    notes: list[str] = field(default_factory=list)

    @property
    def is_sweep(self) -> bool:
        """Whether some method was sampled at more than one NFE (an adaptive sampler's is
        its own; two samplers at one fixed NFE are one)."""
        methods: dict[tuple[str, str], set] = {}
        for row in self.rows:
            methods.setdefault((row.method, row.variant), set()).update(
                c.sampler if c.adaptive else c.nfe for c in row.cells)
        return any(len(nfes) > 1 for nfes in methods.values())


def summary_cell(values: list[float | None]) -> Cell:
    """Mean ± std (harness.statistics) of the finite values; an empty cell when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    summary = summarize(finite) if finite else None
    return Cell(summary and summary.mean, summary and summary.std, len(finite), values=finite)


def training_cost(train: dict) -> dict[str, float | None]:
    """Steps/s and training time (s) of one trained model, as harness.training defines them:
    the first step, which carries warm-up and compilation, is left out of both, so the rate
    is (steps − 1) / train_s where a record predates ``steps_per_s``."""
    seconds, rate, steps = train.get("train_s"), train.get("steps_per_s"), train.get("steps")
    if rate is None and seconds and steps is not None and steps > 1:
        rate = (steps - 1) / seconds
    return {"train_steps_per_s": rate, "train_time": seconds}


def training_costs(records: list[dict], variants: dict[str, str]) -> dict[tuple[str, str, str], dict[str, Cell]]:
    """TRAIN_COSTS per (dataset, method, variant): mean ± std over its trained models (one
    per seed and training key; the samplers of one model share its training, counted once)."""
    from harness.plan import config_key

    models: dict[tuple[str, str, str], dict[str, dict]] = {}
    for r in records:
        if not r.get("train"):
            continue
        try:
            variant = variants.get(config_key(r["spec"]), "")
        except (KeyError, TypeError, AttributeError):
            variant = ""
        model = r.get("train_key", r["key"])
        models.setdefault((r["dataset"], r["method"], variant), {})[model] = training_cost(r["train"])
    return {slot: {name: summary_cell([cost[name] for cost in by_model.values()]) for name in TRAIN_COSTS}
            for slot, by_model in models.items()}


def measured_nfe(record: dict) -> float | None:
    """NFE per sample as counted at the network (``measurements.nfe``; the metric otherwise)."""
    nfe = (record.get("measurements") or {}).get("nfe")
    return nfe if nfe is not None else (record.get("metrics") or {}).get("nfe")


def counted_samplers(records: list[dict]) -> set[str]:
    """Samplers whose solver sets its own NFE by error control (NFE convention "counted")."""
    return {r["sampler"] for r in records if (r.get("measurements") or {}).get("nfe_convention") == "counted"}


def _adaptive_samplers(rows: list[Row], counted: set[str]) -> set[str]:
    """``counted`` and the samplers whose NFE varies between seeds or is not a whole number
    (a data-dependent sampler: Jacobi iterations to a tolerance)."""
    varies = {r.sampler for r in rows if (c := r.cells["nfe"]).mean is not None
              and ((c.std or 0) > 0 or abs(c.mean - round(c.mean)) > 1e-9)}
    return counted | varies


def _nfe_column(row: Row, adaptive: set[str], known: dict[str, set[int]]) -> NfeColumn:
    """The column of a leaderboard row; a row without a measured NFE takes its sampler's
    NFE from the other methods when they agree on it."""
    if row.sampler in adaptive:
        return NfeColumn(row.sampler, None, adaptive=True)
    if row.cells["nfe"].mean is not None:
        return NfeColumn(None, round(row.cells["nfe"].mean))
    others = known.get(row.sampler, set())
    return NfeColumn(None, next(iter(others)) if len(others) == 1 else None)


def _column_order(column: NfeColumn) -> tuple:
    """Fixed NFE ascending, then columns of unknown NFE, adaptive samplers last."""
    return (column.adaptive, column.nfe is None, column.nfe or 0, column.sampler or "")


def _mark_best_per_column(table: NfeTable) -> None:
    """Bold the best method of each column; a tie between methods marks nothing."""
    for column in table.columns:
        cells = [row.cells[column].cells[table.rank_by] for row in table.rows
                 if column in row.cells and row.cells[column].status == "ok"]
        values = [c for c in cells if c.mean is not None and math.isfinite(c.mean)]
        if not values:
            continue
        best = min(badness(table.rank_by, c.mean) for c in values)
        winners = [c for c in values if badness(table.rank_by, c.mean) == best]
        if len(winners) == 1:
            winners[0].best = True


def _one_step(rows: list[Row], adaptive: set[str]) -> bool:
    """Whether every sampler of a method measured NFE 1: a one-step map, which ignores the
    sampler (its samplers' rows are the same samples)."""
    nfes = [r.cells["nfe"].mean for r in rows if r.sampler not in adaptive]
    return bool(nfes) and all(n is not None and round(n) == 1 for n in nfes)


def _nfe_table(table: Table, counted: set[str], costs: dict, ranked: bool) -> NfeTable:
    """One leaderboard table pivoted to one row per (method, variant, sampler family), one
    column per NFE (adaptive samplers in columns of their own, on the method's first row);
    a one-step map gets one row. Rows in the order of their best entry in the ranked
    leaderboard."""
    adaptive = _adaptive_samplers(table.rows, counted)
    known: dict[str, set[int]] = {}
    by_method: dict[tuple[str, str], list[Row]] = {}
    for row in table.rows:
        row.cells[table.rank_by].best = False  # the leaderboard marks the dataset's best; here each column's
        by_method.setdefault((row.method, row.variant), []).append(row)
        if row.sampler not in adaptive and row.cells["nfe"].mean is not None:
            known.setdefault(row.sampler, set()).add(round(row.cells["nfe"].mean))
    rows: dict[tuple[str, str, str], NfeRow] = {}
    for (method, variant), method_rows in by_method.items():
        one_step = _one_step(method_rows, adaptive)
        first = None
        # uniform Euler's row first; adaptive samplers last, in the first row
        for row in sorted(method_rows, key=lambda r: (r.sampler in adaptive, sampler_family(r.sampler) != "euler")):
            column = _nfe_column(row, adaptive, known)
            family = ONE_STEP if one_step else sampler_family(row.sampler)
            if column.adaptive:  # beside the method's first fixed-NFE row
                family = first or family
            slot = (method, variant, family)
            first = first or (None if column.adaptive else family)
            if slot not in rows:
                rows[slot] = NfeRow(method, variant, family, {}, costs.get((table.dataset, method, variant), {}))
            if column in rows[slot].cells:  # a second sampler of one family at one NFE
                if one_step:
                    continue  # the same samples: keep the first sampler's
                slot = (method, variant, row.sampler)
                rows.setdefault(slot, NfeRow(method, variant, row.sampler, {}, rows[(method, variant, family)].train))
            rows[slot].cells[column] = row
    columns = sorted({c for r in rows.values() for c in r.cells}, key=_column_order)
    nfe = NfeTable(table.dataset, table.rank_by, columns, list(rows.values()),
                   [n for n in table.notes if n.startswith(table.rank_by)])
    if ranked:
        _mark_best_per_column(nfe)
    return nfe


def build_nfe_tables(frame: Any, records: list[dict], rank_by: str,
                     variants: dict[str, str] | None = None) -> list[NfeTable]:
    """The quality-at-NFE view of ``records`` (``frame`` is their ``records_frame`` with a
    ``nfe`` column): the leaderboard's tables of ``rank_by`` and NFE, pivoted by
    :func:`_nfe_table`, with each method's training cost."""
    variants = variants or {}
    costs = training_costs(records, variants)
    counted = counted_samplers(records)
    return [_nfe_table(t, counted, costs, not mixed_provenance(frame[frame["dataset"] == t.dataset], rank_by))
            for t in build_tables(frame, [rank_by, "nfe"], rank_by, variants)]


def nfe_tables(records: list[dict], rank_by: str) -> list[NfeTable]:
    """:func:`build_nfe_tables` straight from records."""
    from harness.results import records_frame

    frame = records_frame(records)
    if frame.empty:
        return []
    frame["nfe"] = [measured_nfe(r) for r in records]
    if rank_by not in frame:
        frame[rank_by] = None
    return build_nfe_tables(frame, records, rank_by, variant_labels(records))


NFE_LEGEND = ("Columns: NFE per sample, counted at the network; rows: a method with one family of samplers (euler: "
              "uniform steps; boss: BOSS's Bellman grids; the sampler's name without its step count), so two "
              "samplers at one NFE stay apart; a one-step map, which ignores the sampler, has one row. adaptive: "
              "the solver sets its own NFE, and each cell gives its mean. Training cost: per trained model (shared by its samplers), the first step "
              "excluded. All cells mean ± std over seeds; n/m: only n of m seeds finished.")


def _nfe_cell_text(row: Row | None, column: NfeColumn, rank_by: str, precision: int) -> tuple[str, str]:
    """(the value, what follows it): ("43.2 ± 1.1", " (NFE 86)"); a blank for a sampler not run."""
    if row is None:
        return "", ""
    if row.status != "ok":
        return row.status, ""
    extra = [f"NFE {format_number(row.cells['nfe'].mean, 3)}"] if column.adaptive else []
    extra += [row.seeds_text] if row.finished != row.seeds else []
    cell = row.cells[rank_by]
    return format_mean_std(cell.mean, cell.std, precision), f" ({'; '.join(extra)})" if extra else ""


def _nfe_body(table: NfeTable, precision: int, escape: Callable[[str], str],
              strong: Callable[[str], str]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells, escaped with ``escape``; a column's best value through ``strong``."""
    headers = ["method", "sampler", "seeds", *[c.label for c in table.columns], *[header(m) for m in TRAIN_COSTS]]
    body = []
    for row in table.rows:
        cells = []
        for column in table.columns:
            value, extra = _nfe_cell_text(row.cells.get(column), column, table.rank_by, precision)
            best = column in row.cells and row.cells[column].cells[table.rank_by].best
            cells.append((strong(escape(value)) if best else escape(value)) + escape(extra))
        costs = [format_mean_std(c.mean, c.std, precision) if (c := row.train.get(m)) else "—" for m in TRAIN_COSTS]
        body.append([escape(row.label), escape(row.family), str(row.seeds), *cells, *map(escape, costs)])
    return [escape(h) for h in headers], body


def render_nfe(tables: list[NfeTable], fmt: str = "markdown", precision: int = 4) -> str:
    """Render the quality-at-NFE view; ``csv`` gives one line per (dataset, method, column)."""
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _render_nfe_csv(tables)
    if fmt == "json":
        from harness import table_json

        return table_json.dumps(table_json.nfe_document(tables, precision))
    parts = []
    for table in tables:
        title = (f"{table.dataset}: {header(table.rank_by)} at each NFE (mean ± std over seeds; best of each column "
                 "in bold)")
        if fmt == "markdown":
            title = markdown_escape(title)
            headers, body = _nfe_body(table, precision, markdown_escape, lambda s: f"**{s}**" if s else s)
            align = ("left", "left", "right", *["right"] * (len(headers) - 3))
            grid = tabulate(body, headers, tablefmt="github", disable_numparse=True, colalign=align)
            parts.append(f"### {title}\n\n{grid}\n\n{NFE_LEGEND}" + "".join(f"\n\n{note}" for note in table.notes))
        elif fmt == "latex":
            headers, body = _nfe_body(table, precision, latex.escape, lambda s: r"\textbf{" + s + "}" if s else s)
            caption = latex.escape(f"{title}. {NFE_LEGEND}")
            parts.append(latex.tabular(headers, body, "llr" + "r" * (len(headers) - 3), caption,
                                       "tab:nfe-" + re.sub(r"[^A-Za-z0-9:-]", "-", table.dataset)))
        else:
            headers, body = _nfe_body(table, precision, html.escape, lambda s: f"<b>{s}</b>" if s else s)
            parts.append(f"<h3>{html.escape(title)}</h3>\n" + tabulate(body, headers, tablefmt="unsafehtml")
                         + "".join(f"\n<p>{html.escape(n)}</p>" for n in [NFE_LEGEND, *table.notes]))
    return "\n\n".join(parts)


def _render_nfe_csv(tables: list[NfeTable]) -> str:
    import csv
    import io

    def raw(cell: Cell | None) -> list[str]:
        return ["" if cell is None or v is None else repr(v) for v in ((cell.mean, cell.std) if cell else (None, None))]

    out = io.StringIO()
    writer = csv.writer(out)
    rank_by = tables[0].rank_by if tables else "rank"
    writer.writerow(["dataset", "method", "column", "sampler", "adaptive", "nfe_mean", "seeds", "status",
                     f"{rank_by}_mean", f"{rank_by}_std", *[f"{m}_{s}" for m in TRAIN_COSTS for s in ("mean", "std")]])
    for table in tables:
        for row in table.rows:
            costs = [v for m in TRAIN_COSTS for v in raw(row.train.get(m))]
            for column in table.columns:
                if (cell := row.cells.get(column)) is None:
                    continue
                writer.writerow([table.dataset, row.label, column.label, cell.sampler, column.adaptive,
                                 raw(cell.cells["nfe"])[0], cell.seeds, cell.status, *raw(cell.cells[rank_by]), *costs])
    return out.getvalue().rstrip("\n")


def nfe_leaderboard(results_dir: Path, fmt: str = "markdown", rank_by: str | None = None,
                    records: list[dict] | None = None, include_older: bool = False) -> str:
    """The quality-at-NFE view of ``results_dir`` (``flowgauge leaderboard --view nfe``),
    with the notes of :func:`leaderboard` (timings shared with other runs, records left out)."""
    from harness.results import suite_records

    records, older = suite_records(results_dir, records, include_older)
    if not records:
        return _no_records(results_dir, older, fmt, "nfe")
    _, default_rank, precision = leaderboard_options(results_dir)
    tables = nfe_tables(records, rank_by or default_rank)
    text = render_nfe(tables, fmt, precision)
    notes = [n for n in (concurrency_note(records, list(TRAIN_COSTS)), load_note(records, list(TRAIN_COSTS)),
                         older_records_note(older, results_dir)) if n]
    if fmt == "json":
        from harness import table_json

        return table_json.dumps(table_json.nfe_document(tables, precision, notes))
    if notes and fmt in ("markdown", "html"):
        text += "".join(f"\n\n{n}" if fmt == "markdown" else f"\n<p>{html.escape(n)}</p>" for n in notes)
    return text
