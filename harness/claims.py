"""Published claims as data, and their verdicts against measured records.

A claim is either a **value** (a metric of one method on one dataset, with a tolerance)
or a **relation** between measured quantities, written as a small expression:

    npe(icfm) / npe(otcfm) >= 10
    straightness(2-rectified-flow@euler-100) < straightness(rectified-flow@euler-100)

Terms are ``metric(method)`` or ``metric(method@sampler)`` and numbers, combined with
``*`` and ``/`` and one comparison (``<``, ``<=``, ``>``, ``>=``). The grammar is parsed
here, never evaluated as code.

Verdicts are statements about an interval over seeds (:mod:`harness.statistics`):
``reproduced`` (the interval lies inside what the claim allows), ``not reproduced`` (wholly
outside), ``inconclusive`` (it straddles the boundary, or too few seeds finished),
``not comparable`` (the claim itself says that this suite's dataset or protocol differs
from the source's: the measurement is shown, no verdict of reproduction is given) and
``not run`` (the records lack what the claim needs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from harness import statistics as stats


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

COMPARATORS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}


class ClaimSource(StrictModel):
    paper: str
    table: str | None = None
    url: str | None = None
    note: str | None = Field(None, description="how the number was obtained or checked")


class Tolerance(StrictModel):
    """The margin δ within which the true mean may differ from the claimed value and the
    claim still holds: ``abs``, ``rel``·|value|, or ``sigmas``·std (k published seed
    standard deviations; needs the claim's ``std``); the largest one given. The verdict
    compares the interval of the difference of means with [−δ, δ]."""

    abs: NonNegativeFloat | None = None
    rel: NonNegativeFloat | None = None
    sigmas: PositiveFloat | None = None

    @model_validator(mode="after")
    def _one(self) -> Tolerance:
        if self.abs is None and self.rel is None and self.sigmas is None:
            raise ValueError("give abs, rel or sigmas (or several: the claim holds within the largest)")
        return self

    def margin(self, claimed: float, claimed_std: float | None = None) -> float:
        candidates = [self.abs, None if self.rel is None else self.rel * abs(claimed),
                      None if self.sigmas is None or claimed_std is None else self.sigmas * claimed_std]
        return max(c for c in candidates if c is not None)

    def describe(self) -> str:
        parts = [f"±{self.abs:g}" if self.abs is not None else "",
                 f"±{100 * self.rel:g}%" if self.rel is not None else "",
                 f"±{self.sigmas:g}σ" if self.sigmas is not None else ""]
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
    min_seeds: int = Field(3, strict=True, ge=1, le=1000, description="finished (ok) seeds each measured term needs for a verdict")
    differs: str | None = Field(None, description="how this suite's dataset or protocol differs from the "
                                                  "source's; such a claim is reported as not comparable")

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

Verdict = Literal["reproduced", "not reproduced", "inconclusive", "not comparable", "not run"]
VERDICTS: tuple[str, ...] = ("reproduced", "not reproduced", "inconclusive", "not comparable", "not run")


@dataclass
class ClaimResult:
    claim: Claim
    verdict: Verdict
    measured: str  # human-readable measurement with its interval
    reason: str = ""
    test: str = ""  # the statistical test behind the verdict
    interval: stats.Interval | None = None


@dataclass
class TermValues:
    """The finished seeds' values of one measured quantity, and the seeds that did not finish."""

    label: str
    values: dict[int, float]
    unfinished: dict[int, str]  # seed -> status (failed, diverged)

    def shortfall(self, min_seeds: int) -> str:
        """Why these seeds cannot carry a verdict, or ''."""
        if len(self.values) >= min_seeds:
            return ""
        others = ", ".join(f"seed {s} {status}" for s, status in sorted(self.unfinished.items()))
        return (f"{self.label}: {len(self.values)} finished seed(s)" + (f" ({others})" if others else "")
                + f"; the claim needs {min_seeds}")


def _fmt(summary: stats.Summary) -> str:
    return f"{summary.mean:.4g}" + (f" ± {summary.std:.2g}" if summary.std is not None else "") + f" (n={summary.n})"


def _values(frame: Any, dataset: str, metric: str, method: str, sampler: str | None) -> tuple[TermValues | None, str]:
    """Per-seed values of one metric; the reason string says why there are none."""
    label = f"{metric}({method}{'@' + sampler if sampler else ''})"
    if frame.empty or metric not in frame:
        return None, f"no {metric!r} in the records"
    rows = frame[(frame["dataset"] == dataset) & (frame["method"] == method)]
    if sampler is not None:
        rows = rows[rows["sampler"] == sampler]
    elif rows["sampler"].nunique() > 1:
        return None, f"{method} was sampled with several samplers; the claim must name one"
    if rows.empty:
        return None, f"no run of {method}{'@' + sampler if sampler else ''} on {dataset}"
    ok = rows[rows["status"] == "ok"].dropna(subset=[metric])
    values = {int(r["seed"]): float(r[metric]) for _, r in ok.iterrows()}
    unfinished = {int(r["seed"]): str(r["status"]) for _, r in rows.iterrows() if int(r["seed"]) not in values}
    if not values:
        return None, f"no finished run of {label} on {dataset}" + (
            f" ({', '.join(f'seed {k} {v}' for k, v in sorted(unfinished.items()))})" if unfinished else "")
    return TermValues(label, values, unfinished), ""


def evaluate(claim: Claim, frame: Any) -> ClaimResult:
    result = _evaluate_relation(claim, frame) if claim.relation is not None else _evaluate_value(claim, frame)
    if claim.differs and result.verdict != "not run":
        return ClaimResult(claim, "not comparable", result.measured, claim.differs, result.test, result.interval)
    return result


def _evaluate_value(claim: Claim, frame: Any) -> ClaimResult:
    term, reason = _values(frame, claim.dataset, claim.metric, claim.method, claim.sampler)
    if term is None:
        return ClaimResult(claim, "not run", "—", reason)
    summary = stats.summarize(list(term.values.values()))
    measured = _fmt(summary)
    if shortfall := term.shortfall(claim.min_seeds):
        return ClaimResult(claim, "inconclusive", measured, shortfall)
    interval = stats.mean_difference(summary, claim.value, claim.std, claim.seeds)
    if interval is None:  # min_seeds: 1 and one seed: no spread, so no interval
        return ClaimResult(claim, "inconclusive", measured, "one seed: its spread is unknown, no interval can be formed")
    delta = claim.tolerance.margin(claim.value, claim.std)
    measured += f"; difference {interval.describe()}"
    verdict = stats.within(interval, -delta, delta)
    reason = "" if verdict != "inconclusive" else f"the interval straddles ±{delta:.3g}"
    return ClaimResult(claim, verdict, measured, reason, interval.test, interval)


def _evaluate_relation(claim: Claim, frame: Any) -> ClaimResult:
    relation = parse_relation(claim.relation)
    terms: dict[Term, TermValues] = {}
    for term in relation.terms():
        values, reason = _values(frame, claim.dataset, term.metric, term.method, term.sampler or claim.sampler)
        if values is None:
            return ClaimResult(claim, "not run", "—", reason)
        terms[term] = values
    means = {t: stats.summarize(list(v.values.values())).mean for t, v in terms.items()}
    left = _side_value(relation.left, means.get)
    right = _side_value(relation.right, means.get)
    measured = f"{left:.4g} vs {right:.4g}"
    shortfalls = [s for s in (v.shortfall(claim.min_seeds) for v in terms.values()) if s]
    if shortfalls:
        return ClaimResult(claim, "inconclusive", measured, "; ".join(shortfalls))
    # The claim holds where lhs − rhs is below 0 (<, <=) or above it (>, >=).
    region = (-math.inf, 0.0) if relation.comparator in ("<", "<=") else (0.0, math.inf)
    seeds = sorted(set.intersection(*(set(v.values) for v in terms.values())))
    if len(seeds) >= claim.min_seeds:
        differences = [_side_value(relation.left, lambda t, s=s: terms[t].values[s])
                       - _side_value(relation.right, lambda t, s=s: terms[t].values[s]) for s in seeds]
        interval = stats.paired_difference(differences)
    else:
        order = list(terms)
        samples = [list(terms[t].values.values()) for t in order]

        def difference(m: list[float]) -> float:
            lookup = dict(zip(order, m)).get
            return _side_value(relation.left, lookup) - _side_value(relation.right, lookup)

        interval = stats.bootstrap_difference(samples, difference)
    if interval is None:
        return ClaimResult(claim, "inconclusive", measured, "no interval could be formed")
    measured += f"; lhs − rhs {interval.describe()}"
    verdict = stats.within(interval, *region)
    reason = "" if verdict != "inconclusive" else "the interval contains 0"
    return ClaimResult(claim, verdict, measured, reason, interval.test, interval)


def suite_claims(suite: dict) -> list[Claim]:
    """Every claim of a resolved suite (as stored in suite.json): its own and its methods'."""
    claims = [Claim.model_validate(c) for c in suite.get("claims", [])]
    for method in suite.get("methods", []):
        claims += [Claim.model_validate(c) for c in method.get("claims", [])]
    return claims


def render(results: list[ClaimResult], fmt: str = "markdown") -> str:
    """The claims table in ``fmt`` (markdown, latex, html, csv or json: see
    :mod:`harness.table_json`)."""
    from tabulate import tabulate

    if fmt == "json":
        from harness import table_json

        return table_json.dumps(table_json.claims_document(results))

    rows = []
    for r in results:
        source = r.claim.source.paper + (f", {r.claim.source.table}" if r.claim.source.table else "")
        verdict = r.verdict + (f" ({r.reason})" if r.reason else "")
        rows.append([r.claim.dataset, r.claim.describe(), r.measured, verdict, r.test or "—", source])
    headers = ["dataset", "claim", "measured (mean ± std over seeds; interval)", "verdict", "test", "source"]
    if fmt == "latex":
        from harness import latex

        return latex.tabular([latex.escape(h) for h in headers], [[latex.escape(c) for c in r] for r in rows],
                             "lp{0.24\\linewidth}p{0.22\\linewidth}p{0.12\\linewidth}p{0.1\\linewidth}"
                             "p{0.12\\linewidth}",
                             latex.escape("Published claims against these records: verdicts on 95 % intervals "
                                          "over seeds."), "tab:claims")
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        csv.writer(out).writerows([headers, *rows])
        return out.getvalue().rstrip("\n")
    if fmt == "html":
        return tabulate(rows, headers, tablefmt="html", disable_numparse=True)  # escapes every cell
    from harness.leaderboard import markdown_escape

    return tabulate([[markdown_escape(c) for c in r] for r in rows], [markdown_escape(h) for h in headers],
                    tablefmt="github", disable_numparse=True)
