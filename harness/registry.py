"""One generic registry for everything a spec can name: methods, networks, datasets,
solvers and metrics.

    METHODS = Registry[type]("method")

    @METHODS.register("cfm")
    class ConditionalFlowMatching: ...

    METHODS.get("cmf")  # UnknownNameError: unknown method 'cmf'; did you mean 'cfm'?

An entry whose code must import torch at definition time (an ``nn.Module`` subclass) is
registered *deferred*: its ``Params`` model now, its code by dotted path, imported the
first time :meth:`Registry.get` is asked for it. Reading specs needs only
:meth:`Registry.params`, so ``flowgauge validate`` never imports torch.

    NETWORKS.defer("mlp", "implementations.networks.mlp:MLP", MLPParams)
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from harness.errors import Loc, UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ``"; did you mean 'x'?"`` suffix for the closest choices, or the list of choices."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if choices:
        return "; choices are " + ", ".join(sorted(choices))
    return ""


@dataclass(frozen=True)
class Deferred:
    """A registered entry not imported yet: where its code is, and its parameter model."""

    target: str  # "package.module:Attribute"
    Params: type

    def load(self) -> object:
        module, _, attr = self.target.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        declared = getattr(entry, "Params", None)
        if declared is not self.Params:
            raise TypeError(f"{self.target} declares Params {declared!r}, registered with {self.Params!r}")
        return entry


class Registry(Generic[T]):
    """Maps names to entries of one kind, with a decorator to register them."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``. Registering a name twice is an error."""

        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
        self._check_base(name, entry)
        self._entries[name] = entry

    def _check_base(self, name: str, entry: object) -> None:
        if self.base is not None and isinstance(entry, type) and not issubclass(entry, self.base):
            raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}, got {entry!r}")

    def defer(self, name: str, target: str, params: type) -> None:
        """Register ``name`` as the object at ``target`` ("module:Attribute"), imported on
        first :meth:`get`; ``params`` is its ``Params`` model, checked when it loads."""
        self.add(name, Deferred(target, params))  # type: ignore[arg-type]

    def get(self, name: str, loc: Loc | None = None) -> T:
        """The entry registered as ``name``, importing it first if it was deferred."""
        entry = self._lookup(name, loc)
        if isinstance(entry, Deferred):
            loaded = entry.load()
            self._check_base(name, loaded)
            entry = self._entries[name] = loaded  # type: ignore[assignment]
        return entry

    def params(self, name: str, loc: Loc | None = None) -> type:
        """The ``Params`` model of ``name``, without importing a deferred entry's code."""
        return self._lookup(name, loc).Params  # type: ignore[attr-defined]

    def module_of(self, name: str, loc: Loc | None = None) -> str:
        """The module that defines ``name``'s code, without importing a deferred entry."""
        entry = self._lookup(name, loc)
        if isinstance(entry, Deferred):
            return entry.target.partition(":")[0]
        return entry.__module__  # type: ignore[attr-defined]

    def _lookup(self, name: str, loc: Loc | None) -> T:
        try:
            return self._entries[name]
        except KeyError:
            msg = f"unknown {self.kind} {name!r}" + did_you_mean(name, list(self._entries))
            raise UnknownNameError(msg, loc) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def clear(self) -> None:
        """Forget every entry (tests only)."""
        self._entries.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """Every (name, entry), deferred entries imported."""
        return [(name, self.get(name)) for name in self.names()]


# The registries a spec can name. Implementations fill them when ``implementations`` is
# imported; the harness only looks entries up. Every entry exposes ``Params``, a pydantic
# model of the parameters a spec may give it.
METHODS: Registry[type] = Registry("method")
NETWORKS: Registry[type] = Registry("network")
DATASETS: Registry[type] = Registry("dataset")
SOLVERS: Registry[type] = Registry("solver")
OPTIMIZERS: Registry[type] = Registry("optimizer")
METRICS: Registry = Registry("metric")
AUTOENCODERS: Registry[type] = Registry("autoencoder")
