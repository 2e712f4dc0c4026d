"""The contracts between the harness and the reference implementations.

A method is a small class with ``loss`` and ``sample``; a solver integrates any
``velocity(x, t)`` callable; a dataset knows its source and target distributions and
its own exact reference sampler. Every registered entry declares ``Params``, a frozen
pydantic model of what a spec may set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from harness.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")

Velocity = Callable[["Tensor", "Tensor"], "Tensor"]
"""``velocity(x, t)`` with x of shape (batch, *dims) and t a 0-d tensor or shape (batch,)."""


class Params(BaseModel):
    """Base for every implementation's parameter model: frozen, no unknown keys.

    Dumped with every default filled in, except fields declared with :func:`added`: those
    are left out while they hold their default, so that the canonical spec, and with it
    every training key, of a run made before the field existed stays the same.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _omit_added_defaults(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and "added_in" in extra and name in data:
                if getattr(self, name) == info.default:
                    del data[name]
        return data


def added(default, *, added_in: str, **kwargs):
    """A parameter introduced after specs (and committed results) already existed.

    ``default`` must reproduce the behaviour from before the field existed. The field is
    left out of dumps at that default, so adding it changes no training key; a spec that
    sets any other value gets a new key, as it should. ``added_in`` names the release or
    commit that introduced it, for the reader.
    """
    return Field(default, json_schema_extra={"added_in": added_in}, **kwargs)


@dataclass
class Batch:
    """One training minibatch: source samples ``x_0`` and target (data) samples ``x_1``.

    Shapes: (batch, *dims). The harness draws them independently (or takes them from a
    teacher's cached pairs); a method's ``prepare`` may re-pair them and attach per-pair
    loss ``weights`` of shape (batch,).

    With a teacher that keeps its trajectories (``teacher.keep: path``), each row also
    carries the teacher's recorded states from x_0 to x_1: ``path`` of shape
    (batch, T+1, *dims), with ``path[:, 0] = x_0`` and ``path[:, T] = x_1``, recorded at
    ``times`` of shape (T+1,), the same for every row (t_0 = 0 < ... < t_T = 1 for a
    fixed-step sampler). Both are None otherwise. A ``prepare`` that re-pairs rows must
    carry them with it.
    """

    x_0: Tensor
    x_1: Tensor
    weights: Tensor | None = None
    # The class of each x_1, shape (batch,), int64, when the dataset has labels and the
    # batch comes from its training split; None otherwise. A ``prepare`` that re-pairs or
    # re-orders x_1 must carry the labels with it (today's couplings build new batches
    # without them, so a conditional method sees None after them).
    labels: Tensor | None = None
    path: Tensor | None = None  # (batch, T+1, *dims): the teacher's states from x_0 to x_1
    times: Tensor | None = None  # (T+1,): the times of those states, shared by every row


@dataclass
class Solution:
    """What a solver (and so a method's ``sample``) returns.

    Attributes:
        x: final state, shape (batch, *dims).
        times: the times at which ``trajectory`` was recorded (first is t0, last is t1).
        trajectory: states at ``times`` when recording was asked for, else empty.
        steps: accepted solver steps.
        rejected_steps: rejected steps (adaptive solvers only).
    """

    x: Tensor
    steps: int
    times: list[float] = field(default_factory=list)
    trajectory: list[Tensor] = field(default_factory=list)
    rejected_steps: int = 0


@runtime_checkable
class Solver(Protocol):
    Params: ClassVar[type[Params]]
    nfe_convention: ClassVar[str]

    def solve(self, velocity: Velocity, x_0: Tensor, t_0: float = 0.0, t_1: float = 1.0,
              record: bool = False) -> Solution: ...


@runtime_checkable
class Method(Protocol):
    """Optional members: ``conditional = True``, for a method that uses class labels: its
    training batches carry ``labels`` and the harness calls ``sample(..., labels=y)`` with
    one class per source point (uniform over the dataset's classes, from the evaluation's
    own stream); ``prepare(batch, generator) -> Batch``, which the harness calls on
    every training batch before ``loss`` (ahead of time, in a worker thread, when the
    method sets ``prefetch = True``; each batch gets a generator of its own, so the result
    does not depend on scheduling), and ``log_likelihood(model, x, generator, labels=None)
    -> Tensor``, per-sample log-likelihood in nats of held-out data x, which the model
    metrics ``nll`` and ``bpd`` read (with ``likelihood_convention``, a sentence stating the
    dequantisation); ``autoregressive = True`` for a method that samples by inverting an
    autoregressive flow with the ``ar-*`` samplers instead of solving an ODE.

    A student of a teacher sets ``requires_teacher = True`` (the spec must then name a
    ``teacher:``), and ``teacher_keep = "path"`` when it trains on the teacher's recorded
    trajectories (the spec must then say ``keep: path``). It may define
    ``bind_teacher(pairs) -> dict | None``, which the harness calls once before training
    with the teacher's training pairs (CPU tensors: ``z_0``, ``z_1``, and ``path`` and
    ``times`` with ``keep: path``); the method may keep what its loss needs (a schedule),
    and what it returns is merged into the training statistics, which are saved with the
    model and handed to the evaluation's solvers (``train_stats``). Sampling must not
    depend on what ``bind_teacher`` kept: a model reloaded from the store is sampled by a
    method object that never saw the pairs."""

    Params: ClassVar[type[Params]]

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        """Scalar training loss on one batch."""

    def sample(self, model: Callable, x_0: Tensor, solver: Solver,
               generator: torch.Generator, record: bool = False) -> Solution:
        """Map source samples ``x_0`` to generated samples (``Solution.x``)."""


@runtime_checkable
class Dataset(Protocol):
    Params: ClassVar[type[Params]]
    shape: tuple[int, ...]

    def sample_source(self, n: int, generator: torch.Generator) -> Tensor: ...

    def sample_target(self, n: int, generator: torch.Generator) -> Tensor:
        """Fresh samples of the target (data) distribution: the exact reference sampler."""

    def train_split(self, generator: torch.Generator) -> Tensor | None:
        """A fixed training set, or None to train on fresh target samples every step."""
