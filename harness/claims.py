"""Published claims as data, and their verdicts against measured records.

A claim is either a **value** (a metric of one method on one dataset, with a tolerance)
or a **relation** between measured quantities, written as a small expression:

    npe(icfm) / npe(otcfm) >= 10
    straightness(2-rectified-flow@euler-100) < straightness(rectified-flow@euler-100)

Terms are ``metric(method)`` or ``metric(method@sampler)`` and numbers, combined with
``*`` and ``/`` and one comparison (``<``, ``<=``, ``>``, ``>=``). The grammar is parsed
here, never evaluated as code. Verdicts: ``reproduced``, ``not reproduced`` or ``not run``
(the records lack what the claim needs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

COMPARATORS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}


class ClaimSource(StrictModel):
    paper: str
    table: str | None = None
    url: str | None = None
    note: str | None = Field(None, description="how the number was obtained or checked")


class Tolerance(StrictModel):
    """How far the measured mean may be from the claimed value; the claim holds within any
    one that is given. ``sigmas: k`` allows k·√(s_claimed² + s_measured²), the two seed
    standard deviations combined, for claims published as mean ± std over seeds (it needs
    the claim's ``std``); it treats both as spreads of single seeds, which is conservative
    when they are means over several."""

    abs: NonNegativeFloat | None = None
    rel: NonNegativeFloat | None = None
    sigmas: PositiveFloat | None = None

    @model_validator(mode="after")
    def _one(self) -> Tolerance:
        if self.abs is None and self.rel is None and self.sigmas is None:
            raise ValueError("give abs, rel or sigmas (or several: the claim holds within any)")
        return self

    def allows(self, measured: float, claimed: float, claimed_std: float | None = None,
               measured_std: float | None = None) -> bool:
        gap = abs(measured - claimed)
        if self.abs is not None and gap <= self.abs:
            return True
        if self.rel is not None and gap <= self.rel * abs(claimed):
            return True
        if self.sigmas is not None and claimed_std is not None:
            return gap <= self.sigmas * math.hypot(claimed_std, measured_std or 0.0)
        return False

    def describe(self) -> str:
        parts = [f"±{self.abs:g}" if self.abs is not None else "",
                 f"±{100 * self.rel:g}%" if self.rel is not None else "",
                 f"within {self.sigmas:g}σ" if self.sigmas is not None else ""]
        return " or ".join(p for p in parts if p)


class Claim(StrictModel):
    """A published number or relation, with its source."""

    source: ClaimSource
    dataset: str
    metric: str | None = None
    method: str | None = Field(None, description="on a method spec: that method by default")
    sampler: str | None = None
    value: float | None = None
    std: NonNegativeFloat | None = Field(None, description="the published spread over seeds (value ± std)")
    seeds: PositiveInt | None = Field(None, description="how many seeds the published value averages")
    tolerance: Tolerance | None = None
    relation: str | None = None

    @model_validator(mode="after")
    def _kind(self) -> Claim:
        if self.relation is not None:
            if any(x is not None for x in (self.value, self.std, self.tolerance, self.metric)):
                raise ValueError("a relation claim takes no metric, value, std or tolerance")
            parse_relation(self.relation)
        elif self.metric is None or self.value is None or self.tolerance is None:
            raise ValueError("a claim needs either relation, or metric with value and tolerance")
        elif self.tolerance.sigmas is not None and self.std is None:
            raise ValueError("tolerance.sigmas needs the published std of the value")
        return self

    def describe(self) -> str:
        if self.relation is not None:
            return self.relation
        where = f"{self.method}@{self.sampler}" if self.sampler else f"{self.method}"
        value = f"{self.value:g}" + (f" ± {self.std:g}" if self.std is not None else "")
        return f"{self.metric}({where}) = {value}, {self.tolerance.describe()}"


# --- the relation grammar ----------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<op><=|>=|<|>|\*|/)"
                    r"|(?P<call>[A-Za-z_][A-Za-z0-9_]*)\(\s*(?P<arg>[^()@\s]+)(?:\s*@\s*(?P<at>[^()@\s]+))?\s*\))")


@dataclass(frozen=True)
class Term:
    metric: str
    method: str
    sampler: str | None


@dataclass(frozen=True)
class Relation:
    left: list[tuple[str, Term | float]]  # [(op, operand)], the first op is "*"
    comparator: str
    right: list[tuple[str, Term | float]]

    def terms(self) -> list[Term]:
        return [x for _, x in self.left + self.right if isinstance(x, Term)]


def parse_relation(text: str) -> Relation:
    """Parse ``text``; raises ValueError that says where it stopped making sense."""
    pos, sides, comparator = 0, [[]], None
    expect_operand = True
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"relation: cannot read {text[pos:].strip()!r} (expected metric(method), a number, "
                             "*, / or a comparison)")
        pos = match.end()
        if expect_operand:
            if match.group("num"):
                operand: Term | float = float(match.group("num"))
            elif match.group("call"):
                operand = Term(match.group("call"), match.group("arg"), match.group("at"))
            else:
                raise ValueError(f"relation: expected a term before {match.group('op')!r}")
            op = "*" if not sides[-1] else sides[-1].pop()[0]
            sides[-1].append((op, operand))
            expect_operand = False
        else:
            op = match.group("op")
            if op is None:
                raise ValueError("relation: two terms in a row; join them with * or /")
            if op in COMPARATORS:
                if comparator is not None:
                    raise ValueError("relation: only one comparison is allowed")
                comparator = op
                sides.append([])
            else:
                sides[-1].append((op, None))  # the operator waits for its operand
            expect_operand = True
    if comparator is None:
        raise ValueError("relation: needs a comparison (<, <=, >, >=)")
    if expect_operand:
        raise ValueError("relation: ends without a term")
    left, right = sides
    if not any(isinstance(x, Term) for _, x in left + right):
        raise ValueError("relation: compares no measured quantity")
    return Relation(left, comparator, right)


def _side_value(side: list[tuple[str, Term | float]], lookup) -> float | None:
    value = 1.0
    for op, operand in side:
        x = operand if isinstance(operand, float) else lookup(operand)
        if x is None:
            return None
        value = value * x if op == "*" else (value / x if x != 0 else math.inf)
    return value


# --- verdicts ----------------------------------------------------------------------------

Verdict = Literal["reproduced", "not reproduced", "not run"]


@dataclass
class ClaimResult:
    claim: Claim
    verdict: Verdict
    measured: str  # human-readable measurement: "0.021 ± 0.004 (n=3)" or "lhs 2.6 vs rhs 0.2"
    reason: str = ""


def _stats(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "") + f" (n={n})"


def _values(frame: Any, dataset: str, metric: str, method: str, sampler: str | None) -> tuple[dict[int, float], str]:
    """Per-seed values of one metric; the reason string says why there are none."""
    if frame.empty or metric not in frame:
        return {}, f"no {metric!r} in the records"
    rows = frame[(frame["dataset"] == dataset) & (frame["method"] == method) & (frame["status"] == "ok")]
    if sampler is not None:
        rows = rows[rows["sampler"] == sampler]
    elif rows["sampler"].nunique() > 1:
        return {}, f"{method} was sampled with several samplers; the claim must name one"
    rows = rows.dropna(subset=[metric])
    if rows.empty:
        return {}, f"no finished run of {method}{'@' + sampler if sampler else ''} on {dataset}"
    return {int(r["seed"]): float(r[metric]) for _, r in rows.iterrows()}, ""


def evaluate(claim: Claim, frame: Any) -> ClaimResult:
    if claim.relation is None:
        values, reason = _values(frame, claim.dataset, claim.metric, claim.method, claim.sampler)
        if not values:
            return ClaimResult(claim, "not run", "—", reason)
        mean, std = _stats(list(values.values()))
        ok = claim.tolerance.allows(mean, claim.value, claim.std, std)
        return ClaimResult(claim, "reproduced" if ok else "not reproduced", _fmt(mean, std, len(values)))
    relation = parse_relation(claim.relation)
    per_term: dict[Term, dict[int, float]] = {}
    for term in relation.terms():
        values, reason = _values(frame, claim.dataset, term.metric, term.method, term.sampler or claim.sampler)
        if not values:
            return ClaimResult(claim, "not run", "—", reason)
        per_term[term] = values
    means = {t: _stats(list(v.values()))[0] for t, v in per_term.items()}
    left = _side_value(relation.left, means.get)
    right = _side_value(relation.right, means.get)
    holds = COMPARATORS[relation.comparator](float(left), float(right))
    # The verdict compares the expression of the seed means; the per-seed spread of the
    # left side is shown beside it as a measure of its noise.
    measured = f"{left:.4g} vs {right:.4g}"
    seeds = set.intersection(*(set(v) for v in per_term.values()))
    if len(seeds) > 1 and all(isinstance(x, float) for _, x in relation.right):
        per_seed = [_side_value(relation.left, lambda t, s=s: per_term[t][s]) for s in sorted(seeds)]
        mean, std = _stats(per_seed)
        measured += f" (per seed: {_fmt(mean, std, len(per_seed))})"
    return ClaimResult(claim, "reproduced" if holds else "not reproduced", measured)


def suite_claims(suite: dict) -> list[Claim]:
    """Every claim of a resolved suite (as stored in suite.json): its own and its methods'."""
    claims = [Claim.model_validate(c) for c in suite.get("claims", [])]
    for method in suite.get("methods", []):
        claims += [Claim.model_validate(c) for c in method.get("claims", [])]
    return claims


def render(results: list[ClaimResult], fmt: str = "markdown") -> str:
    from tabulate import tabulate

    rows = []
    for r in results:
        source = r.claim.source.paper + (f", {r.claim.source.table}" if r.claim.source.table else "")
        verdict = r.verdict + (f" ({r.reason})" if r.reason else "")
        rows.append([r.claim.dataset, r.claim.describe(), r.measured, verdict, source])
    headers = ["dataset", "claim", "measured (mean ± std over seeds)", "verdict", "source"]
    table_fmt = {"markdown": "github", "latex": "latex_booktabs", "html": "html", "csv": "tsv"}.get(fmt, "github")
    return tabulate(rows, headers, tablefmt=table_fmt, disable_numparse=True)
