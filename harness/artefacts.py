"""One store for the files that one part of a spec produces and others reuse.

Trained models, a teacher's pairs, autoencoders for latent flows, reference feature
statistics and the shards of an unfinished evaluation are all the same thing: a file made
from a spec part (with the fingerprint of the code that made it), written atomically,
found again by the hash of that part. Everything lives under one results folder:

    models/<training key>.pt (+ .json: the spec and the training statistics)
    pairs/<teacher key>__<pairs key>.pt
    autoencoders/<key>.pt (+ .json)
    references/<key>.npz (+ .json)
    shards/<record key>/<index>.npz      (deleted once the record is written)
    calibrations/<key>.npz (+ .json)     what a sampler learnt from a trained model (BOSS's costs)

:meth:`ArtefactStore.cached` is the one way in: it loads the artefact of a spec part when
it exists, and otherwise makes it, writes it, then its ``.json`` card (spec and made-by
facts), so a card on disk always has its file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from harness.plan import spec_hash
from harness.results import write_atomic, write_json_atomic

T = TypeVar("T")

KINDS = ("models", "pairs", "autoencoders", "references", "shards", "calibrations")


class ArtefactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown artefact kind {kind!r}; kinds are {', '.join(KINDS)}")
        return self.root / kind / name

    def card(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, f"{key}.json")
        return json.loads(path.read_text()) if path.is_file() else None

    def cached(self, kind: str, spec: Any, suffix: str, make: Callable[[], tuple[T, dict]],
               save: Callable[[T, Any], None], load: Callable[[Path], T]) -> tuple[T, dict]:
        """The artefact of ``spec`` (any JSON-able value): (object, card).

        When ``<kind>/<hash>.<suffix>`` and its card exist, ``load(path)`` it; otherwise
        ``make()`` returns (object, facts), ``save(object, binary file)`` writes it and the
        card records ``{"key", "spec", **facts}``."""
        key = spec_hash(spec)
        path = self.path(kind, f"{key}.{suffix}")
        card = self.card(kind, key)
        if path.is_file() and card is not None:
            return load(path), {**card, "reused": True}
        obj, facts = make()
        write_atomic(path, lambda f: save(obj, f))
        card = {"key": key, "spec": spec, **facts}
        write_json_atomic(self.path(kind, f"{key}.json"), card)
        return obj, {**card, "reused": False}

    # trained models: the layout records and `rerun` know (models/<training key>.pt + .json)
    def model_path(self, key: str) -> Path:
        return self.path("models", f"{key}.pt")

    def shard_path(self, record_key: str, index: int) -> Path:
        return self.path("shards", f"{record_key}/{index:05d}.npz")

    def drop_shards(self, record_key: str) -> None:
        shutil.rmtree(self.path("shards", record_key), ignore_errors=True)
