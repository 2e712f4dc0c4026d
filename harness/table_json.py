"""The table model as JSON (``--format json``): raw numbers for other tools to re-render.

Every document is one JSON object with ``format`` and ``version``; a reader checks both.
A version changes when a field is removed or changes meaning; fields may be added within
a version. Numbers are raw (never the rounded text of the other formats); a value that
does not exist, or is not finite (NaN, ±inf), is ``null``. Text is UTF-8, unescaped.

``flowgauge.table`` (``leaderboard``, ``run``), ``view: "ranked"``::

    {"format": "flowgauge.table", "version": 1, "view": "ranked", "precision": 4,
     "tables": [{"dataset": "moons", "rank_by": "w2",
                 "columns": [{"metric": "w2", "label": "w2 ↓", "higher_is_better": false}, ...],
                 "rows": [{"rank": 1,            # null for a row whose seeds all failed or diverged
                           "method": "otcfm", "variant": "", "label": "otcfm", "sampler": "euler-100",
                           "seeds": 3,           # seeds run
                           "finished": 3,        # seeds that finished ok: the statistics are over these
                           "status": "ok",       # or the worst status when no seed finished
                           "cells": {"w2": STATISTIC, ...}}, ...],
                 "notes": ["..."]}],
     "notes": ["..."],                        # about the whole folder (shared machine, records left out)
     "claims": CLAIMS_DOCUMENT}               # leaderboard and run only; null when the suite makes none

``view: "nfe"`` (``leaderboard --view nfe``): one row per (method, sampler family), one
column per NFE::

    {"format": "flowgauge.table", "version": 1, "view": "nfe", "precision": 4, "legend": "...",
     "tables": [{"dataset": "moons", "rank_by": "w2", "rank_by_label": "w2 ↓",
                 "columns": [{"key": "4", "label": "4", "nfe": 4, "adaptive": false, "sampler": null},
                             {"key": "adaptive (dopri5)", ..., "nfe": null, "adaptive": true, "sampler": "dopri5"}],
                 "train_columns": [{"metric": "train_steps_per_s", "label": ..., "higher_is_better": true}, ...],
                 "rows": [{"method": "a", "variant": "", "label": "a", "family": "euler", "seeds": 2,
                           "cells": {"4": {"sampler": "euler-4", "status": "ok", "seeds": 2, "finished": 2,
                                           "value": STATISTIC,   # of rank_by; best: the column's best
                                           "nfe": STATISTIC}},   # NFE per sample, counted at the network
                           "train": {"train_steps_per_s": STATISTIC, "train_time": STATISTIC}}],
                 "notes": [...]}],
     "notes": [...]}

A ``STATISTIC`` is ``{"mean", "std", "n", "best", "values": [{"seed", "value"}, ...]}``:
mean and sample standard deviation (null for one value) over ``n`` finite values, whether
it is marked best, and the values it summarises (``seed`` is null where a value is not one
seed's: a training cost is one trained model's).

``flowgauge.claims`` (``claims``; nested under ``claims`` of a table document)::

    {"format": "flowgauge.claims", "version": 1,
     "claims": [{"claim": "npe(icfm) / npe(otcfm) >= 10",   # the claim as text
                 "dataset": "g", "verdict": "reproduced",   # one of harness.claims.VERDICTS
                 "reason": "",                              # why a verdict is inconclusive, not run, ...
                 "measured": "...",                         # the measurement as the tables state it
                 "test": "Welch t, 95 %",                   # the test behind the interval ("" when none)
                 "interval": {"estimate", "low", "high", "test"},   # or null
                 "spec": {...}}],                           # the claim as specified (source, tolerance, ...)
     "notes": [...]}
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.claims import ClaimResult
    from harness.leaderboard import Cell, NfeTable, Table

TABLE_FORMAT = "flowgauge.table"
CLAIMS_FORMAT = "flowgauge.claims"
VERSION = 1


def plain(value: Any) -> Any:
    """``value`` as JSON data: non-finite floats as None, numpy scalars as Python numbers,
    tuples as lists, mapping keys as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return plain(value.item())
    return str(value)


def dumps(document: dict) -> str:
    """The document as indented JSON; strict (never NaN or Infinity)."""
    return json.dumps(plain(document), indent=2, ensure_ascii=False, allow_nan=False)


def statistic(cell: Cell | None) -> dict | None:
    if cell is None:
        return None
    seeds = cell.seeds or [None] * len(cell.values)
    return {"mean": cell.mean, "std": cell.std, "n": cell.n, "best": cell.best,
            "values": [{"seed": s, "value": v} for s, v in zip(seeds, cell.values)]}


def _metric(name: str) -> dict:
    from harness.leaderboard import header, higher_is_better

    return {"metric": name, "label": header(name), "higher_is_better": higher_is_better(name)}


def ranked_document(tables: list[Table], precision: int = 4, notes: list[str] | None = None,
                    claims: dict | None = None, with_claims: bool = False) -> dict:
    """The ``flowgauge.table`` document of the ranked view; ``claims`` (a claims document)
    goes in when ``with_claims``."""
    out = []
    for table in tables:
        rows = [{"rank": i if row.status == "ok" else None, "method": row.method, "variant": row.variant,
                 "label": row.label, "sampler": row.sampler, "seeds": row.seeds, "finished": row.finished,
                 "status": row.status, "cells": {m: statistic(row.cells.get(m)) for m in table.metrics}}
                for i, row in enumerate(table.rows, 1)]
        out.append({"dataset": table.dataset, "rank_by": table.rank_by,
                    "columns": [_metric(m) for m in table.metrics], "rows": rows, "notes": list(table.notes)})
    document = {"format": TABLE_FORMAT, "version": VERSION, "view": "ranked", "precision": precision,
                "tables": out, "notes": list(notes or [])}
    if with_claims:
        document["claims"] = claims
    return document


def nfe_document(tables: list[NfeTable], precision: int = 4, notes: list[str] | None = None) -> dict:
    """The ``flowgauge.table`` document of the quality-at-NFE view."""
    from harness.leaderboard import NFE_LEGEND, TRAIN_COSTS, header

    out = []
    for table in tables:
        rows = []
        for row in table.rows:
            cells = {}
            for column in table.columns:
                if (cell := row.cells.get(column)) is None:
                    continue
                cells[column.label] = {"sampler": cell.sampler, "status": cell.status, "seeds": cell.seeds,
                                       "finished": cell.finished, "value": statistic(cell.cells.get(table.rank_by)),
                                       "nfe": statistic(cell.cells.get("nfe"))}
            rows.append({"method": row.method, "variant": row.variant, "label": row.label, "family": row.family,
                         "seeds": row.seeds, "cells": cells,
                         "train": {m: statistic(row.train.get(m)) for m in TRAIN_COSTS}})
        columns = [{"key": c.label, "label": c.label, "nfe": c.nfe, "adaptive": c.adaptive, "sampler": c.sampler}
                   for c in table.columns]
        out.append({"dataset": table.dataset, "rank_by": table.rank_by, "rank_by_label": header(table.rank_by),
                    "columns": columns, "train_columns": [_metric(m) for m in TRAIN_COSTS], "rows": rows,
                    "notes": list(table.notes)})
    return {"format": TABLE_FORMAT, "version": VERSION, "view": "nfe", "precision": precision, "legend": NFE_LEGEND,
            "tables": out, "notes": list(notes or [])}


def claims_document(results: list[ClaimResult], notes: list[str] | None = None) -> dict:
    """The ``flowgauge.claims`` document of claim verdicts."""
    claims = []
    for r in results:
        interval = r.interval
        claims.append({"claim": r.claim.describe(), "dataset": r.claim.dataset, "verdict": r.verdict,
                       "reason": r.reason, "measured": r.measured, "test": r.test,
                       "interval": None if interval is None else {"estimate": interval.estimate, "low": interval.low,
                                                                  "high": interval.high, "test": interval.test},
                       "spec": r.claim.model_dump(mode="json")})
    return {"format": CLAIMS_FORMAT, "version": VERSION, "claims": claims, "notes": list(notes or [])}
