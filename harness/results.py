"""Records on disk: one JSON file per evaluated (run, sampler), written atomically, and
a loader that turns a directory of records into one pandas DataFrame.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_SCHEMA = 1


def json_safe(obj: Any) -> Any:
    """Non-finite floats (NaN, ±inf) become None: JSON has no spelling for them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader sees the old file or the new one, never a half-written one.
    """
    obj = json_safe(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def record_path(results_dir: Path, key: str, label: str) -> Path:
    safe = label.replace("/", "__")
    return results_dir / "records" / f"{safe}__{key}.json"


def read_records(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted((results_dir / "records").glob("*.json")):
        with path.open(encoding="utf-8") as f:
            records.append(json.load(f))
    return records


def final_keys(results_dir: Path) -> set[str]:
    """Keys of records that need no rerun (finished, or diverged: a result in itself)."""
    return {r["key"] for r in read_records(results_dir) if r.get("status") in ("ok", "diverged")}


def records_frame(records: list[dict]):
    """One row per record: identifiers, status, and one column per metric."""
    import pandas as pd

    rows = []
    for r in records:
        row = {
            "key": r["key"],
            "suite": r.get("suite"),
            "dataset": r["dataset"],
            "method": r["method"],
            "sampler": r["sampler"],
            "seed": r["seed"],
            "status": r["status"],
        }
        for name, value in (r.get("metrics") or {}).items():
            row[name] = value
        rows.append(row)
    return pd.DataFrame(rows)
