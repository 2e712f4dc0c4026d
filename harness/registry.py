"""One generic registry for everything a spec can name: methods, networks, datasets,
solvers and metrics.

    METHODS = Registry[type]("method")

    @METHODS.register("cfm")
    class ConditionalFlowMatching: ...

    METHODS.get("cmf")  # UnknownNameError: unknown method 'cmf'; did you mean 'cfm'?
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
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
        if self.base is not None and isinstance(entry, type) and not issubclass(entry, self.base):
            raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}, got {entry!r}")
        self._entries[name] = entry

    def get(self, name: str, loc: Loc | None = None) -> T:
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
        return sorted(self._entries.items())


# The registries a spec can name. Implementations fill them when ``implementations`` is
# imported; the harness only looks entries up. Every entry exposes ``Params``, a pydantic
# model of the parameters a spec may give it.
METHODS: Registry[type] = Registry("method")
NETWORKS: Registry[type] = Registry("network")
DATASETS: Registry[type] = Registry("dataset")
SOLVERS: Registry[type] = Registry("solver")
OPTIMIZERS: Registry[type] = Registry("optimizer")
METRICS: Registry = Registry("metric")
