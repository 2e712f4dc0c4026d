"""Records on disk: one JSON file per evaluated (run, sampler), written atomically, and
a loader that turns a directory of records into one pandas DataFrame.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
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

    def dump(f) -> None:
        f.write(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, default=str).encode() + b"\n")

    write_atomic(path, dump)


def write_atomic(path: Path, write: Any) -> None:
    """``write(binary_file)`` into a uniquely named temporary file next to ``path``, fsync,
    then rename it over ``path``: concurrent writers of one path (two worker processes
    caching the same teacher pairs) never share a temporary file, and a reader never sees
    a half-written one. A process killed midway leaves only a ``.*.tmp`` file, which
    :func:`remove_leftovers` clears.

    Any ``OSError`` (a full disk, a read-only or missing folder) is raised as a
    :class:`~harness.errors.StorageError` that names ``path``; the old file is intact."""
    from harness.errors import StorageError

    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _open_lock(results_dir: Path) -> Any:
    results_dir.mkdir(parents=True, exist_ok=True)
    return open(results_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run


@contextlib.contextmanager
def lock_results(results_dir: Path) -> Iterator[bool]:
    """Hold ``results_dir/.lock`` for one run: a second run on the same directory is refused
    at once (it would redo the same work and clear the first one's temporary files). The
    kernel releases the lock when the holder dies, however it dies.

    Yields whether the directory can be written. An existing directory that cannot
    (read-only, no permission) yields False without a lock: nobody can write there, and a
    run whose every record is finished may still read it and print its tables."""
    from harness.errors import SpecError

    if results_dir.exists() and not results_dir.is_dir():
        raise SpecError(f"--results {results_dir}: is a file, not a folder")
    try:
        handle = _open_lock(results_dir)
    except OSError as err:
        if results_dir.is_dir() and err.errno in READ_ONLY_ERRNOS:
            yield False
            return
        raise SpecError(f"--results {results_dir}: cannot write there ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise SpecError(f"--results {results_dir}: another flowgauge run (pid {owner}) is using it; "
                            "wait for it to finish or give another --results") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield True
    finally:
        handle.close()


def remove_leftovers(results_dir: Path) -> int:
    """Delete temporary files that an interrupted run left in ``results_dir``; their final
    files were never written, so the run that owns the directory redoes that work."""
    removed = 0
    for folder in ("records", "models", "pairs", "samples"):
        for tmp in (results_dir / folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def record_path(results_dir: Path, key: str, label: str) -> Path:
    safe = label.replace("/", "__")
    return results_dir / "records" / f"{safe}__{key}.json"


RECORD_FIELDS = {"key": str, "train_key": str, "dataset": str, "method": str, "sampler": str, "seed": int,
                 "status": str, "metrics": dict}


def load_record(path: Path) -> dict:
    """One record, checked for the fields every reader relies on; ValueError names what is wrong."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a readable JSON file ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for name, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(name), kind):
            raise ValueError(f"field {name!r} is missing or not a {kind.__name__}")
    return record


def read_records(results_dir: Path) -> list[dict]:
    """Every readable record of ``results_dir``. An unreadable one (truncated, garbage, wrong
    shape) is skipped with a warning that names the file: the tables, claims and reports
    of the rest stand, and a resumed run redoes the skipped one (it is not finished)."""
    records = []
    for path in sorted((results_dir / "records").glob("*.json")):
        try:
            records.append(load_record(path))
        except ValueError as err:
            print(f"warning: skipped unreadable record {path}: {err}", file=sys.stderr)
    return records


def read_suite(results_dir: Path, quiet: bool = False) -> dict | None:
    """The resolved suite stored in ``results_dir/suite.json``; None (with a warning naming
    the file, unless ``quiet``) when it is missing or unreadable."""
    path = results_dir / "suite.json"
    if not path.is_file():
        return None
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))["suite"]
        if not isinstance(suite, dict):
            raise TypeError("'suite' is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        if not quiet:
            print(f"warning: ignored unreadable {path}: {err}", file=sys.stderr)
        return None
    return suite


def read_suite_file(results_dir: Path) -> dict | None:
    """The whole of ``results_dir/suite.json``, or None when it is missing or unreadable."""
    try:
        document = json.loads((results_dir / "suite.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def current_keys(results_dir: Path) -> set[str] | None:
    """The keys of the records that the suite, as last run into ``results_dir``, produces;
    None for results written before suite.json listed them (every record then counts)."""
    keys = (read_suite_file(results_dir) or {}).get("records")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return None
    return set(keys)


def suite_records(results_dir: Path, records: list[dict] | None = None,
                  include_older: bool = False) -> tuple[list[dict], list[dict]]:
    """(the records that tables show, the older ones left out): records whose key the suite
    as last run no longer produces (a rerun with other settings, an edited spec) are left
    out unless ``include_older``; even then they never share a row (see ``config`` in
    :func:`records_frame`)."""
    records = read_records(results_dir) if records is None else records
    keys = current_keys(results_dir)
    if include_older or keys is None:
        return records, []
    return [r for r in records if r["key"] in keys], [r for r in records if r["key"] not in keys]


def rekey_records(results_dir: Path, accept_code: bool = False, note: str | None = None) -> int:
    """Give every record the key this version computes from its own contents (its training
    key and stored spec), renaming its file; returns how many changed. For results written
    before a change to the record key, so that a rerun resumes from them.

    ``accept_code``: also declare that the implementation code as it stands would produce
    the same numbers (a refactor, an import moved): each record takes the current code
    fingerprint, and with it new training and record keys; the fingerprint it had is kept
    under ``code_accepted``, with the modules that differ and ``note`` (how the change was
    checked). Trained models move with their keys. Only after checking that the numbers do not change (rerun a slice and compare)."""
    from datetime import datetime, timezone

    from harness.codeversion import changed_modules, record_code
    from harness.plan import record_key, training_key_of

    changed = 0
    for path in sorted((results_dir / "records").glob("*.json")):
        try:
            record = load_record(path)
            updated = dict(record)
            spec = record["spec"]
            if accept_code:
                code, modules = record_code(spec)
                if spec.get("code") != code:
                    accepted = {"from": spec.get("code"), "modules": changed_modules(record.get("code_modules"), spec),
                                "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "note": note}
                    updated["code_accepted"] = [*record.get("code_accepted", []), accepted]
                    updated["spec"] = spec = {**spec, "code": code}
                    updated["code_modules"] = modules
                    updated["train_key"] = training_key_of(spec, code["train"])
            updated["key"] = record_key(updated["train_key"], spec)
        except (ValueError, KeyError, TypeError) as err:
            print(f"warning: not re-keyed, unreadable record {path}: {err}", file=sys.stderr)
            continue
        if updated == record:
            continue
        label = f"{record['dataset']}/{record['method']}/{record['sampler']}/seed{record['seed']}"
        new_path = record_path(results_dir, updated["key"], label)
        write_json_atomic(new_path, updated)
        if new_path != path:
            path.unlink()
        _move_model(results_dir, record["train_key"], updated["train_key"])
        changed += 1
    return changed


def _move_model(results_dir: Path, old: str, new: str) -> None:
    for suffix in (".pt", ".json"):
        source = results_dir / "models" / f"{old}{suffix}"
        if source.is_file() and not (results_dir / "models" / f"{new}{suffix}").exists():
            source.rename(results_dir / "models" / f"{new}{suffix}")


def stale_records(results_dir: Path, keys: set[str]) -> list[Path]:
    """Record files whose key is not in ``keys`` (the current plan's): left by an older
    version of the suite's specs, they would otherwise be averaged with the current ones."""
    stale = []
    for path in sorted((results_dir / "records").glob("*.json")):
        try:
            if load_record(path)["key"] not in keys:
                stale.append(path)
        except ValueError:
            continue  # unreadable: read_records warns about it; a rerun overwrites it
    return stale


def final_keys(results_dir: Path) -> set[str]:
    """Keys of records that need no rerun (finished, or diverged: a result in itself)."""
    return {r["key"] for r in read_records(results_dir) if r.get("status") in ("ok", "diverged")}


FLOOR = "@floor:"  # records_frame columns <metric>@floor:<kind>: what a perfect model scores
PROVENANCE = "@provenance"  # suffix of a frame column holding a metric's provenance (JSON text)


def records_frame(records: list[dict]):
    """One row per record: identifiers, ``config`` (the hash of everything but the seed
    that produced it: records averaged into one table row must agree on it), status, and
    one column per metric."""
    import pandas as pd

    from harness.plan import config_key

    rows = []
    for r in records:
        try:
            config = config_key(r["spec"])
        except (KeyError, TypeError, AttributeError):
            config = ""  # a record without a usable spec (hand-made, very old): its own kind
        row = {
            "key": r["key"],
            "config": config,
            "suite": r.get("suite"),
            "dataset": r["dataset"],
            "method": r["method"],
            "sampler": r["sampler"],
            "seed": r["seed"],
            "status": r["status"],
        }
        for name, value in (r.get("metrics") or {}).items():
            row[name] = value
        provenance = ((r.get("measurements") or {}).get("provenance") or {})
        for name, what in provenance.items():  # what produced the value, for comparing columns
            row[name + PROVENANCE] = json.dumps(what, sort_keys=True)
        floors = ((r.get("measurements") or {}).get("floors") or {})
        for name, values in floors.items():  # what a perfect model scores (harness.evaluation)
            for kind, value in values.items():
                if kind != "num_samples":
                    row[f"{name}{FLOOR}{kind}"] = value
            row[f"{name}{FLOOR}num_samples"] = values.get("num_samples")
        rows.append(row)
    return pd.DataFrame(rows)
