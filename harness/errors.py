"""Errors a user can cause, each carrying the place in a spec file that caused it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A place in a spec: a file (or ``--set``) and a 1-based line (0 when unknown)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class SpecError(Exception):
    """A mistake in user input. The CLI prints ``str(err)`` on one line and exits 2."""

    def __init__(self, message: str, loc: Loc | None = None, more: list[SpecError] | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.more = list(more or [])  # further errors found in the same check (``validate`` prints them all)

    def all(self) -> list[str]:
        """This error and every further one, each on its own line as the CLI prints them;
        this one without its "(and N more errors)" count."""
        first = SpecError(self.message.split(" (and ", 1)[0] if self.more else self.message, self.loc)
        return [str(first), *(str(e) for e in self.more)]

    def __str__(self) -> str:
        return one_line(f"{self.loc}: {self.message}" if self.loc else self.message)


def one_line(text: str) -> str:
    """``text`` with its control characters (a newline in a key a user typed) escaped, so
    that an error is always one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class UnknownNameError(SpecError, KeyError):
    """A name that no registry entry has; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return SpecError.__str__(self)


class StorageError(Exception):
    """The results directory cannot take a write (full disk, read-only, not a folder, no
    permission). Not a run's failure: the suite stops, finished records are kept, and the
    CLI prints one line and exits 2."""


_cancelled = False  # set by cancel_on_sigint's handler: this task was cancelled


def cancel_on_sigint() -> None:
    """In a task that its driver cancels with SIGINT (submitit's local jobs): remember the
    cancellation, so that an error it causes later (an import it cut short leaves a module
    half initialised, and the next import of it fails) is not recorded as a failed run.
    Torch-free, so that a task installs it before importing anything heavy."""
    import signal

    def handler(signum: int, frame: object) -> None:
        global _cancelled
        _cancelled = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def cancelled() -> bool:
    """Whether this process's task has been cancelled (see :func:`cancel_on_sigint`)."""
    return _cancelled
