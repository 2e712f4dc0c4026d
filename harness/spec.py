"""The spec language: typed models for suites, methods, datasets, samplers, hardware,
budgets, metric selection and leaderboard options.

Every model forbids unknown keys and is frozen. Implementation parameters (``params:``)
are validated against the ``Params`` model that the named registry entry declares, so a
misspelt or mistyped hyperparameter fails at load time with its file and line.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from harness.errors import SpecError
from harness.registry import did_you_mean
from harness.source import KeyPath, Source


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paper(StrictModel):
    title: str
    url: str | None = None
    authors: str | None = None
    year: int | None = None


# --- specs that live in their own files (specs/<kind>/<name>.yaml) --------------------


class MethodSpec(StrictModel):
    """A method variant: implementation, its hyperparameters, network and optimiser."""

    name: str
    implementation: str = Field(description="key in the method registry")
    description: str = ""
    paper: Paper | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    network: dict[str, Any] = Field(default_factory=lambda: {"name": "mlp"})
    optimizer: dict[str, Any] = Field(default_factory=lambda: {"name": "adam"})
    batch_size: PositiveInt = 256


class DatasetSpec(StrictModel):
    name: str
    implementation: str
    description: str = ""
    paper: Paper | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class SamplerSpec(StrictModel):
    name: str
    solver: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)


class HardwareSpec(StrictModel):
    """Where and how a run executes. The runner honours and records every field."""

    name: str
    description: str = ""
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    autocast: Literal["bfloat16", "float16"] | None = Field(
        None, description="mixed precision for network calls (CUDA); parameters stay in dtype"
    )
    threads: PositiveInt | None = Field(None, description="torch intra-op threads; null keeps torch's default")
    deterministic: bool = True
    compile: bool = Field(False, description="wrap the network in torch.compile")


# --- parts of a suite -----------------------------------------------------------------


class TrainBudget(StrictModel):
    """Training stops at whichever limit is reached first. At least one must be given."""

    steps: PositiveInt | None = None
    seconds: PositiveFloat | None = None
    samples: PositiveInt | None = None
    epochs: PositiveFloat | None = Field(None, description="passes over a fixed train split")
    log_every: PositiveInt = Field(50, description="loss-curve resolution and divergence-check interval")

    @model_validator(mode="after")
    def _not_empty(self) -> TrainBudget:
        if self.steps is None and self.seconds is None and self.samples is None and self.epochs is None:
            raise ValueError("the training budget is empty: give steps, seconds, samples or epochs")
        return self


class EvalBudget(StrictModel):
    num_samples: PositiveInt = Field(2000, description="generated samples (and fresh reference samples)")
    warmup: NonNegativeInt = Field(1, description="untimed sampling calls before timing")
    repeats: PositiveInt = Field(5, description="timed sampling calls; latency is their median")


class Budget(StrictModel):
    train: TrainBudget
    eval: EvalBudget = EvalBudget()


class MetricSpec(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class LeaderboardSpec(StrictModel):
    rank_by: str = "w2"
    columns: list[str] | None = Field(None, description="metric columns to show; default: the suite's metrics")
    precision: PositiveInt = 4


SpecRef = Union[str, dict[str, Any]]  # noqa: UP007  a file name under specs/<kind>/ or an inline spec


class RawSuite(StrictModel):
    """A suite as written: other specs are named or given inline; resolved by ``resolve``."""

    name: str
    description: str = ""
    hardware: SpecRef = "cpu"
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    budget: Budget
    datasets: Annotated[list[SpecRef], Field(min_length=1)]
    methods: Annotated[list[SpecRef], Field(min_length=1)]
    samplers: Annotated[list[SpecRef], Field(min_length=1)]
    metrics: Annotated[list[str | MetricSpec], Field(min_length=1)] = ["w2", "mmd", "nfe", "latency"]
    leaderboard: LeaderboardSpec = LeaderboardSpec()


class SuiteSpec(StrictModel):
    """A suite with every reference resolved to a validated spec."""

    name: str
    description: str = ""
    hardware: HardwareSpec
    seeds: list[int]
    budget: Budget
    datasets: list[DatasetSpec]
    methods: list[MethodSpec]
    samplers: list[SamplerSpec]
    metrics: list[MetricSpec]
    leaderboard: LeaderboardSpec


SPEC_KINDS: dict[str, type[StrictModel]] = {
    "suites": RawSuite,
    "methods": MethodSpec,
    "datasets": DatasetSpec,
    "samplers": SamplerSpec,
    "hardware": HardwareSpec,
}


# --- validation with locations ----------------------------------------------------------


def validate(model: type[BaseModel], source: Source, prefix: KeyPath = ()) -> BaseModel:
    """Validate ``source.data`` against ``model``; the first error becomes a located SpecError.

    ``prefix`` is prepended to error paths in messages (``params.sigma``) when ``source``
    is a part of a larger spec.
    """
    if not isinstance(source.data, dict):
        raise SpecError(
            f"{_dotted(prefix) + ': ' if prefix else ''}expected a mapping of keys, got {_show(source.data)}",
            source.loc(),
        )
    try:
        return model.model_validate(source.data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        first = errors[0]
        path = _data_path(source.data, first["loc"])
        message = _describe(model, first, path)
        where = _dotted((*prefix, *path))
        more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise SpecError(f"{where + ': ' if where else ''}{message}{more}", source.loc(path)) from None


def _data_path(data: Any, loc: tuple) -> KeyPath:
    """Keep the parts of a pydantic ``loc`` that are real keys in the data (drops union tags)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str):
            path.append(part)  # a missing key: name it; its parent holds the line
    return tuple(path)


def _describe(model: type[BaseModel], error: dict, path: KeyPath) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        allowed = _fields_at(model, path[:-1])
        return f"unknown key {key!r}" + (did_you_mean(key, allowed) if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {_show(value)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected an integer, got {_show(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {_show(value)}"
    if kind in ("string_type",):
        return f"expected a string, got {_show(value)}"
    if kind in ("list_type",):
        return f"expected a list, got {_show(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {_show(value)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {op} {bound}, got {_show(value)}"
    if kind == "too_short":
        return f"must not be empty, got {_show(value)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        return f"expected {expected}, got {_show(value)}"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", value))
        expected = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        return f"unknown name {tag!r}" + did_you_mean(tag, [t for t in expected if t])
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {_show(value)}"


def _fields_at(model: type[BaseModel], path: KeyPath) -> list[str]:
    """Names of the fields of the (sub)model found at ``path``, for did-you-mean hints."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            current = _unwrap(current, sequence=True)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _unwrap(current.model_fields[part].annotation, sequence=False)
    current = _unwrap(current, sequence=False)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any, sequence: bool) -> Any:
    """Strip Optional/Annotated/list wrappers down to a model class where there is one."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0], sequence)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg, sequence)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
        return None
    if origin is list and sequence:
        return _unwrap(typing.get_args(annotation)[0], False)
    return annotation


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if value is None:
        return "null (nothing)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
