"""Resolve specs: find files by name, apply ``extends:`` and ``--set`` overrides, validate
every part (including implementation params) and return typed, fully resolved specs.

Nothing here writes a file: a suite either resolves completely or raises SpecError.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import registry as reg
from harness.claims import Claim, parse_relation
from harness.errors import Loc, SpecError
from harness.limits import MAX_PATH_STATES, MAX_RUNS
from harness.registry import did_you_mean
from harness.source import KeyPath, Source, display_path, load_yaml, parse_yaml
from harness.spec import (
    SPEC_KINDS,
    DatasetSpec,
    HardwareSpec,
    MethodSpec,
    MetricSpec,
    RawSuite,
    SamplerSpec,
    StrictModel,
    SuiteSpec,
    TeacherSpec,
    check_name,
    validate,
)

# Suite fields that name other specs, and the spec kind (folder under specs/) they name.
REFERENCE_FIELDS = {"hardware": "hardware", "datasets": "datasets", "methods": "methods", "samplers": "samplers"}


def default_specs_root() -> Path:
    """``$FLOWGAUGE_SPECS``, else ``./specs``, else the specs folder of this checkout."""
    env = os.environ.get("FLOWGAUGE_SPECS")
    if env:
        return Path(env)
    here = Path.cwd() / "specs"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "specs"


def set_loc(text: str) -> Loc:
    """The place of a ``--set`` in messages, cut to a readable length (SpecError escapes
    its control characters)."""
    return Loc(f"--set {text if len(text) <= 120 else text[:117] + '...'}")


@dataclass(frozen=True)
class Override:
    """One ``--set key.path=value`` from the command line."""

    path: tuple[str, ...]
    value: Any
    text: str

    @property
    def loc(self) -> Loc:
        return set_loc(self.text)

    @classmethod
    def parse(cls, text: str) -> Override:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise SpecError("expected key.path=value", set_loc(text))
        path = tuple(part for part in key.strip().split("."))
        if any(not part for part in path):
            raise SpecError(f"malformed key path {key!r}", set_loc(text))
        value: Any = ""
        if raw.strip():
            try:  # the spec files' loader: aliases and nesting bounded as theirs are
                value = parse_yaml(raw, f"--set {text}").data
            except SpecError as err:
                if not err.message.startswith("YAML syntax error"):
                    raise SpecError(err.message, set_loc(text)) from None
                value = raw  # not YAML: the text itself (e.g. a description with ': ')
        return cls(path, value, text)


def apply_override(source: Source, path: KeyPath, value: Any, loc: Loc) -> None:
    """Set ``path`` in ``source`` to ``value``, creating mappings on the way."""
    node = source.data
    for i, key in enumerate(path[:-1]):
        if isinstance(node, list) and str(key).isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            where = ".".join(map(str, path[:i])) or "the spec"
            raise SpecError(f"cannot set {'.'.join(map(str, path))}: {where} is not a mapping", loc)
        if isinstance(node.get(key), str):  # a named component's shorthand (coupling: sinkhorn)
            node[key] = {"name": node[key]}
        elif not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    if not isinstance(node, dict):
        raise SpecError(f"cannot set {'.'.join(map(str, path))}: its parent is not a mapping", loc)
    node[path[-1]] = copy.deepcopy(value)
    n = len(path)
    for p in [p for p in source.locs if p[:n] == tuple(path)]:
        del source.locs[p]
    source.locs[tuple(path)] = loc


def _mergeable(a: Any, b: Any) -> bool:
    """Mappings merge, unless both name a component and the names differ: a child that
    switches ``path: {name: vp}`` must not inherit the parent path's parameters."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    return not ("name" in a and "name" in b and a["name"] != b["name"])


def _merge(parent: Source, child: Source) -> Source:
    """Deep-merge ``child`` over ``parent``: mappings merge, everything else replaces."""
    locs = dict(parent.locs)

    def merge(a: Any, b: Any, path: KeyPath) -> Any:
        if _mergeable(a, b):
            out = dict(a)
            for key, value in b.items():
                out[key] = merge(a.get(key), value, (*path, key)) if key in a else value
                if key not in a or not _mergeable(a[key], value):
                    for p in [p for p in locs if p[: len(path) + 1] == (*path, key)]:
                        del locs[p]
            return out
        return b

    data = merge(parent.data, child.data, ())
    locs.update(child.locs)
    return Source(data, locs, child.origin)


class Resolver:
    """Loads specs by kind and name from a specs root and resolves them."""

    def __init__(self, root: Path | None = None, overrides: list[Override] | None = None):
        self.root = Path(root) if root is not None else default_specs_root()
        self.overrides = list(overrides or [])
        self._used: set[int] = set()
        self._teacher_chain: list[str] = []
        self._claim_locs: dict[tuple[str, int], Loc] = {}  # (method, index) -> where the claim is written

    # -- finding and loading files -------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        folder = self.root / kind
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def path_of(self, kind: str, name: str, loc: Loc | None) -> Path:
        """The file of spec ``name`` inside this root's ``kind`` folder; names are never paths."""
        singular = kind.removesuffix("s")
        try:
            check_name(name)
        except ValueError as err:
            raise SpecError(f"{singular} {err}; a spec is named by its file under {kind}/", loc) from None
        path = self.root / kind / f"{name}.yaml"
        if not path.is_file():
            msg = f"unknown {singular} {name!r} (no file {display_path(path)})" + did_you_mean(name, self.names(kind))
            raise SpecError(msg, loc)
        return path

    def load_file(self, kind: str, path: Path, chain: tuple[str, ...] = ()) -> Source:
        """Read a spec file of ``kind``, following ``extends:``; its name defaults to the stem."""
        source = load_yaml(path)
        if not isinstance(source.data, dict):
            raise SpecError("a spec must be a mapping of keys", source.loc())
        source.data.setdefault("name", path.stem)
        source.locs.setdefault(("name",), source.origin)
        return self._extend(kind, source, (*chain, str(path.resolve())))

    def _extend(self, kind: str, source: Source, chain: tuple[str, ...]) -> Source:
        parent_name = source.data.pop("extends", None)
        if parent_name is None:
            return source
        loc = source.loc(("extends",))
        if not isinstance(parent_name, str):
            raise SpecError(f"extends: expected the name of a {kind} spec, got {parent_name!r}", loc)
        parent_path = self.path_of(kind, parent_name, loc)
        if str(parent_path.resolve()) in chain:
            raise SpecError(f"extends: {parent_name!r} extends itself through a cycle", loc)
        parent = self.load_file(kind, parent_path, chain)
        parent.data.pop("name", None)
        return _merge(parent, source)

    # -- specs of one kind ---------------------------------------------------------------

    def resolve_ref(self, kind: str, ref: Any, source: Source, path: KeyPath) -> StrictModel:
        """Resolve ``ref`` (a name, or an inline mapping at ``path`` of ``source``)."""
        if isinstance(ref, str):
            spec_source = self.load_file(kind, self.path_of(kind, ref, source.loc(path)))
        elif isinstance(ref, dict):
            spec_source = self._extend(kind, source.sub(path), ())
        else:
            raise SpecError(f"expected a {kind} name or an inline spec, got {ref!r}", source.loc(path))
        name = spec_source.data.get("name")
        self._apply_deferred(kind, name, spec_source)
        return self.resolve_source(kind, spec_source)

    def resolve_source(self, kind: str, source: Source) -> StrictModel:
        """Validate a spec of ``kind`` and the params of the implementations it names."""
        model = SPEC_KINDS[kind]
        spec = validate(model, source)
        if kind == "methods":
            return self._method(spec, source)
        if kind == "datasets":
            params = self._params(reg.DATASETS, spec.implementation, source, ("params",), ("implementation",))
            return spec.model_copy(update={"params": params})
        if kind == "samplers":
            params = self._params(reg.SOLVERS, spec.solver, source, ("params",), ("solver",))
            return spec.model_copy(update={"params": params})
        return spec

    def _method(self, spec: MethodSpec, source: Source) -> MethodSpec:
        params = self._params(reg.METHODS, spec.implementation, source, ("params",), ("implementation",))
        network = self._component(reg.NETWORKS, source, "network", spec.network)
        optimizer = self._component(reg.OPTIMIZERS, source, "optimizer", spec.optimizer)
        update = {"params": params, "network": network, "optimizer": optimizer,
                  "claims": self._claims(spec.claims, source, default_method=spec.name)}
        needs_teacher = getattr(reg.METHODS.get(spec.implementation), "requires_teacher", False)
        if spec.latent is not None:
            latent = source.sub(("latent",))
            update["latent"] = spec.latent.model_copy(update={
                "autoencoder": self._component(reg.AUTOENCODERS, latent, "autoencoder", spec.latent.autoencoder),
                "optimizer": self._component(reg.OPTIMIZERS, latent, "optimizer", spec.latent.optimizer)})
        if spec.teacher is not None:
            update["teacher"] = self._teacher(spec, source)
            keep = getattr(reg.METHODS.get(spec.implementation), "teacher_keep", "endpoints")
            if keep == "path" and spec.teacher.keep != "path":
                raise SpecError(
                    f"teacher: method implementation {spec.implementation!r} trains on the teacher's recorded "
                    "trajectories: add keep: path to teacher:",
                    source.loc(("teacher", "keep") if "keep" in (source.data.get("teacher") or {}) else ("teacher",)),
                )
        elif needs_teacher:
            raise SpecError(
                f"method implementation {spec.implementation!r} trains on a teacher's pairs: "
                "add teacher: {method: ..., sampler: ...}",
                source.loc(("implementation",)),
            )
        return spec.model_copy(update=update)

    def _claims(self, claims: list[Claim], source: Source, default_method: str | None = None,
                methods: list[str] | None = None) -> list[Claim]:
        """Fill in the owning method and check every metric (and, in a suite, method) named."""
        out = []
        for i, claim in enumerate(claims):
            loc = source.loc(("claims", i))
            if default_method is not None:
                self._claim_locs[(default_method, i)] = loc
            if claim.relation is None and claim.method is None:
                if default_method is None:
                    raise SpecError(f"claims[{i}]: a suite claim needs method:", loc)
                claim = claim.model_copy(update={"method": default_method})
            named = ([(claim.metric, claim.method)] if claim.relation is None
                     else [(t.metric, t.method) for t in parse_relation(claim.relation).terms()])
            for metric, method in named:
                reg.METRICS.get(metric, loc)
                # A method left out of this run (--set methods=...) makes its claims "not run";
                # a name that is neither in the suite nor a method spec is a mistake.
                if methods is not None and method not in methods and method not in self.names("methods"):
                    raise SpecError(f"claims[{i}]: no method {method!r} in the suite or in specs/methods"
                                    + did_you_mean(method, methods), loc)
            out.append(claim)
        return out

    def _check_claim_samplers(self, claim: Claim, samplers: list[str], where: str, loc: Loc | None) -> None:
        """Every measured term of a claim names one sampler: a known one, and, when the
        suite has several, explicitly (a claim about "the" sampler would be ambiguous)."""
        terms = ([(claim.method, claim.sampler)] if claim.relation is None
                 else [(t.method, t.sampler or claim.sampler) for t in parse_relation(claim.relation).terms()])
        for method, sampler in terms:
            if sampler is None and len(samplers) > 1:
                raise SpecError(f"{where}: the suite samples with {len(samplers)} samplers ({', '.join(samplers)}); "
                                f"say which one the claim is about: sampler: NAME, or {method}@NAME in a relation",
                                loc)
            if sampler is not None and sampler not in samplers and sampler not in self.names("samplers"):
                raise SpecError(f"{where}: no sampler {sampler!r} in the suite or in specs/samplers"
                                + did_you_mean(sampler, samplers), loc)

    def _teacher(self, spec: MethodSpec, source: Source) -> TeacherSpec:
        """Resolve ``teacher.method`` and ``teacher.sampler``; a teacher chain may not loop."""
        teacher = spec.teacher
        if spec.name in self._teacher_chain:
            chain = " -> ".join([*self._teacher_chain, spec.name])
            raise SpecError(f"teacher.method: the teacher chain loops ({chain})", source.loc(("teacher", "method")))
        self._teacher_chain.append(spec.name)
        try:
            method = self.resolve_ref("methods", teacher.method, source, ("teacher", "method"))
            sampler = self.resolve_ref("samplers", teacher.sampler, source, ("teacher", "sampler"))
        finally:
            self._teacher_chain.pop()
        if teacher.keep == "path":
            self._check_path_size(teacher, sampler, source)
        return teacher.model_copy(update={"method": method, "sampler": sampler})

    @staticmethod
    def _check_path_size(teacher: TeacherSpec, sampler: SamplerSpec, source: Source) -> None:
        """``keep: path`` holds num_pairs × (steps + 1) recorded states: the sampler needs a
        fixed number of steps, and the states are bounded (the dims are checked before the
        teacher runs, once the data's shape is known)."""
        steps = sampler.params.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise SpecError(f"teacher.keep: path records the teacher's states on a fixed grid, and sampler "
                            f"{sampler.name!r} ({sampler.solver}) has no fixed number of steps; use a fixed-step "
                            "sampler such as euler-100", source.loc(("teacher", "sampler")))
        states = teacher.num_pairs * (steps + 1)
        if states > MAX_PATH_STATES:
            where = ("teacher", "num_pairs") if "num_pairs" in (source.data.get("teacher") or {}) else ("teacher",)
            raise SpecError(f"teacher.num_pairs: keep: path stores num_pairs x (steps + 1) = {teacher.num_pairs} x "
                            f"{steps + 1} = {states} recorded states, more than {MAX_PATH_STATES} "
                            "(harness.limits.MAX_PATH_STATES); lower num_pairs or the sampler's steps",
                            source.loc(where))

    def _component(self, registry: reg.Registry, source: Source, key: str, data: dict) -> dict:
        """A ``{name: ..., **params}`` mapping such as ``network:`` or ``optimizer:``."""
        if "name" not in data:
            raise SpecError(f"{key}.name: required key is missing", source.loc((key,)))
        name = data["name"]
        model = registry.params(name, source.loc((key, "name")))
        rest = {k: v for k, v in data.items() if k != "name"}
        sub = source.sub((key,)) if key in source.data else Source(data, {}, source.loc((key,)))
        params = validate(model, Source(rest, sub.locs, sub.origin), prefix=(key,))
        return {"name": name, **params.model_dump(mode="json")}

    def _params(
        self, registry: reg.Registry, name: str, source: Source, key: KeyPath, name_key: KeyPath
    ) -> dict:
        model = registry.params(name, source.loc(name_key))
        if key[0] in source.data:
            sub = source.sub(key)
        else:
            sub = Source({}, {}, source.loc(name_key))
        return validate(model, sub, prefix=key).model_dump(mode="json")

    # -- overrides -----------------------------------------------------------------------

    def _apply_deferred(self, kind: str, name: str | None, source: Source) -> None:
        for i, ov in enumerate(self.overrides):
            target = _deferred_target(ov)
            if target is None:
                continue
            ov_kind, ov_name, rest = target
            if ov_kind == kind and (ov_name is None or ov_name == name):
                apply_override(source, rest, ov.value, ov.loc)
                self._used.add(i)

    # -- suites --------------------------------------------------------------------------

    def find_suite(self, ref: str) -> Path:
        path = Path(ref)
        if path.suffix in (".yaml", ".yml") or os.sep in ref:
            if path.is_dir():
                raise SpecError(f"is a folder; give spec files (e.g. {display_path(path)}/*.yaml)",
                                Loc(display_path(path)))
            if not path.is_file():
                raise SpecError("file not found", Loc(display_path(path)))
            return path
        return self.path_of("suites", ref, None)

    def suite(self, ref: str) -> SuiteSpec:
        """Resolve a suite given by name (``quickstart``) or path."""
        path = self.find_suite(ref)
        source = self.load_file("suites", path)
        for i, ov in enumerate(self.overrides):
            if _deferred_target(ov) is None:
                apply_override(source, ov.path, ov.value, ov.loc)
                self._used.add(i)
        raw: RawSuite = validate(RawSuite, source)

        hardware = self.resolve_ref("hardware", raw.hardware, source, ("hardware",))
        resolved: dict[str, list] = {}
        for key in ("datasets", "methods", "samplers"):
            items = []
            seen: dict[str, int] = {}
            for i, ref in enumerate(getattr(raw, key)):
                spec = self.resolve_ref(key, ref, source, (key, i))
                if spec.name in seen:
                    raise SpecError(
                        f"{key}[{i}]: {spec.name!r} is listed twice (also {key}[{seen[spec.name]}])",
                        source.loc((key, i)),
                    )
                seen[spec.name] = i
                items.append(spec)
            resolved[key] = items
        metrics = self._metrics(raw, source)
        self._check_unused(resolved)
        self._check_leaderboard(raw, metrics, source)
        if len(set(raw.seeds)) != len(raw.seeds):
            raise SpecError(f"seeds: duplicate seed in {raw.seeds}", source.loc(("seeds",)))
        runs = len(raw.seeds) * len(resolved["datasets"]) * len(resolved["methods"]) * len(resolved["samplers"])
        if runs > MAX_RUNS:
            raise SpecError(f"{runs} evaluations (seeds x datasets x methods x samplers) is more than a suite may "
                            f"hold ({MAX_RUNS}); split it into several suites", source.loc())
        self._check_samplers_apply(resolved, source)
        self._check_devices(hardware, resolved["methods"], source)
        claims = self._claims(raw.claims, source, methods=[m.name for m in resolved["methods"]])
        samplers = [s.name for s in resolved["samplers"]]
        for i, claim in enumerate(claims):
            self._check_claim_samplers(claim, samplers, f"claims[{i}]", source.loc(("claims", i)))
        for method in resolved["methods"]:
            for i, claim in enumerate(method.claims):
                self._check_claim_samplers(claim, samplers, f"method {method.name}: claims[{i}]",
                                           self._claim_locs.get((method.name, i)))
        return SuiteSpec(
            claims=claims,
            name=raw.name,
            description=raw.description,
            hardware=hardware,
            seeds=raw.seeds,
            budget=raw.budget,
            datasets=resolved["datasets"],
            methods=resolved["methods"],
            samplers=resolved["samplers"],
            metrics=metrics,
            leaderboard=raw.leaderboard,
            gate=raw.gate,
        )

    @staticmethod
    def _check_devices(hardware: HardwareSpec, methods: list[MethodSpec], source: Source) -> None:
        """With ``hardware.devices`` W > 1 every rank trains on batch_size / W rows of each
        global batch (harness.distributed): a batch that does not split evenly is refused,
        a teacher's included (it trains on the same hardware)."""
        world = hardware.devices
        if world == 1:
            return
        for i, method in enumerate(methods):
            spec, where = method, ""
            while spec is not None:
                if spec.batch_size % world:
                    raise SpecError(f"methods[{i}]: {method.name!r}{where} has batch_size {spec.batch_size}, which "
                                    f"hardware.devices = {world} does not divide: each device trains on an equal "
                                    "slice of every batch; choose a batch_size that is a multiple of "
                                    f"{world}", source.loc(("methods", i)))
                teacher = spec.teacher
                spec = None if teacher is None else teacher.method
                where = f" (its teacher {spec.name!r})" if spec is not None else where

    def _check_samplers_apply(self, resolved: dict[str, list], source: Source) -> None:
        """Every method has at least one sampler of the suite that can sample it (see
        ``plan.sampler_applies``); pairs that do not apply are left out of the plan."""
        from harness.plan import sampler_applies

        for i, method in enumerate(resolved["methods"]):
            if any(sampler_applies(method, sampler) for sampler in resolved["samplers"]):
                continue
            autoregressive = getattr(reg.METHODS.get(method.implementation), "autoregressive", False)
            fitting = [n for n in reg.SOLVERS.names()
                       if getattr(reg.SOLVERS.get(n), "autoregressive", False) == autoregressive]
            kind = "an autoregressive flow, inverted block by block" if autoregressive else "sampled by an ODE solver"
            raise SpecError(f"methods[{i}]: {method.name!r} is {kind}, and none of the suite's samplers "
                            f"({', '.join(s.name for s in resolved['samplers'])}) can sample it; add a sampler "
                            f"whose solver is one of {', '.join(fitting)}", source.loc(("methods", i)))

    def _metrics(self, raw: RawSuite, source: Source) -> list[MetricSpec]:
        out: list[MetricSpec] = []
        for i, item in enumerate(raw.metrics):
            spec = MetricSpec(name=item) if isinstance(item, str) else item
            path: KeyPath = ("metrics", i) if isinstance(item, str) else ("metrics", i, "name")
            metric = reg.METRICS.get(spec.name, source.loc(path))
            if any(m.name == spec.name for m in out):
                raise SpecError(f"metrics[{i}]: {spec.name!r} is listed twice", source.loc(path))
            sub = source.sub(("metrics", i, "params")) if isinstance(item, MetricSpec) and item.params else Source({}, {}, source.loc(path))
            params = validate(metric.Params, sub, prefix=("metrics", i, "params"))
            out.append(MetricSpec(name=spec.name, params=params.model_dump(mode="json")))
        return out

    def _check_leaderboard(self, raw: RawSuite, metrics: list[MetricSpec], source: Source) -> None:
        names = [m.name for m in metrics]
        if raw.leaderboard.rank_by not in names:
            raise SpecError(
                f"leaderboard.rank_by: {raw.leaderboard.rank_by!r} is not one of the suite's metrics"
                + did_you_mean(raw.leaderboard.rank_by, names),
                source.loc(("leaderboard", "rank_by")),
            )
        for i, col in enumerate(raw.leaderboard.columns or []):
            if col not in names:
                raise SpecError(
                    f"leaderboard.columns[{i}]: {col!r} is not one of the suite's metrics" + did_you_mean(col, names),
                    source.loc(("leaderboard", "columns", i)),
                )

    def _check_unused(self, resolved: dict[str, list]) -> None:
        for i, ov in enumerate(self.overrides):
            if i in self._used:
                continue
            kind, name, _ = _deferred_target(ov)  # type: ignore[misc]
            names = [s.name for s in resolved.get(kind, [])]
            raise SpecError(f"the suite has no {kind[:-1]} {name!r}" + did_you_mean(str(name), names), ov.loc)

    # -- single files (flowgauge validate) -----------------------------------------------

    def kind_of(self, path: Path) -> str:
        """The kind of spec in ``path``: the specs folder it sits in (``methods/``, ...),
        else what its keys say (a ``solver`` is a sampler, a ``device`` a hardware target,
        a registered method or dataset ``implementation`` a method or a dataset, a list of
        ``methods`` a suite). An ``extends:`` with nothing telling is followed, as far as
        a parent of the same name can be found in one kind's folder."""
        if path.parent.name in SPEC_KINDS:
            return path.parent.name
        source = load_yaml(path)
        if not isinstance(source.data, dict):
            raise SpecError("a spec must be a mapping of keys", source.loc())
        data = source.data
        if "solver" in data:
            return "samplers"
        if "device" in data:
            return "hardware"
        implementation = data.get("implementation")
        if isinstance(implementation, str):
            if implementation in reg.METHODS:
                return "methods"
            if implementation in reg.DATASETS:
                return "datasets"
        if any(key in data for key in ("methods", "datasets", "samplers", "seeds", "budget", "metrics")):
            return "suites"
        parent = data.get("extends")
        if isinstance(parent, str):
            kinds = [k for k in SPEC_KINDS if k != "suites" and (self.root / k / f"{parent}.yaml").is_file()]
            if len(kinds) == 1:
                return kinds[0]
        raise SpecError(f"cannot tell which kind of spec this is ({', '.join(SPEC_KINDS)}): put it in a folder of "
                        "that name, or give validate --kind", source.loc())

    def validate_file(self, path: Path, kind: str | None = None) -> StrictModel:
        """Validate one spec file of ``kind`` (default: :meth:`kind_of`)."""
        kind = kind or self.kind_of(path)
        if kind == "suites":
            return Resolver(_root_of(path) or self.root, self.overrides).suite(str(path))
        source = self.load_file(kind, path)
        for ov in self.overrides:  # keys are relative to this file
            apply_override(source, ov.path, ov.value, ov.loc)
        return self.resolve_source(kind, source)


def _deferred_target(ov: Override) -> tuple[str, str | None, KeyPath] | None:
    """For overrides of a referenced spec: (kind, spec name or None, path inside the spec)."""
    head = ov.path[0]
    if head not in REFERENCE_FIELDS or len(ov.path) == 1:
        return None
    if head == "hardware":
        return "hardware", None, ov.path[1:]
    if len(ov.path) < 3:
        raise SpecError(f"give a key inside the {head[:-1]}, e.g. {head}.{ov.path[1]}.params.x=...", ov.loc)
    return head, ov.path[1], ov.path[2:]


def _root_of(path: Path) -> Path | None:
    """The specs root of a file at ``<root>/<kind>/<name>.yaml``."""
    parent = path.resolve().parent
    return parent.parent if parent.name in SPEC_KINDS else None


def load_suite(ref: str, overrides: list[str] | None = None, root: Path | None = None) -> SuiteSpec:
    """Resolve a suite by name or path, with ``--set`` overrides; raises SpecError."""
    parsed = [Override.parse(text) for text in overrides or []]
    if root is None and (ref.endswith((".yaml", ".yml")) or os.sep in ref):
        root = _root_of(Path(ref))
    return Resolver(root, parsed).suite(ref)


__all__ = [
    "DatasetSpec",
    "HardwareSpec",
    "MethodSpec",
    "Override",
    "Resolver",
    "SamplerSpec",
    "SuiteSpec",
    "load_suite",
]
