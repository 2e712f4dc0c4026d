"""Claims: the relation grammar, the verdict logic, and claim errors in specs."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.claims import Claim, Term, evaluate, parse_relation
from harness.errors import SpecError
from harness.resolve import Resolver
from tests.conftest import write

SOURCE = {"paper": "Somebody et al. 2024", "table": "Table 2"}


def frame(rows):
    return pd.DataFrame([{"dataset": d, "method": m, "sampler": s, "seed": seed, "status": st, "npe": v}
                         for d, m, s, seed, st, v in rows])


RECORDS = frame([
    ("g", "otcfm", "euler-100", 0, "ok", 0.02), ("g", "otcfm", "euler-100", 1, "ok", 0.04),
    ("g", "icfm", "euler-100", 0, "ok", 0.30), ("g", "icfm", "euler-100", 1, "ok", 0.50),
    ("g", "icfm", "euler-1", 0, "ok", 9.0),
    ("g", "broken", "euler-100", 0, "failed", None),
])


def test_parse_relation_terms_and_structure():
    rel = parse_relation("npe(icfm) / npe(2-rectified-flow@euler-100) >= 10")
    assert rel.comparator == ">="
    assert rel.terms() == [Term("npe", "icfm", None), Term("npe", "2-rectified-flow", "euler-100")]
    assert rel.right == [("*", 10.0)]


@pytest.mark.parametrize("text, message", [
    ("npe(icfm)", "needs a comparison"),
    ("npe(icfm) < < 3", "expected a term"),
    ("npe(icfm) npe(otcfm) < 1", "two terms in a row"),
    ("npe(icfm) < 1 < 2", "only one comparison"),
    ("1 < 2", "compares no measured quantity"),
    ("npe(icfm) < ", "ends without a term"),
    ("npe(icfm) + 1 < 2", "cannot read"),
])
def test_parse_relation_rejects_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_relation(text)


def test_value_claim_verdicts_use_the_mean_over_seeds():
    ok = Claim(source=SOURCE, dataset="g", method="otcfm", sampler="euler-100", metric="npe", value=0.03,
               tolerance={"abs": 0.005})
    result = evaluate(ok, RECORDS)
    assert result.verdict == "reproduced" and result.measured.startswith("0.03 ± 0.014 (n=2)")
    far = ok.model_copy(update={"value": 0.1, "tolerance": ok.tolerance.model_copy(update={"abs": None, "rel": 0.5})})
    assert evaluate(far, RECORDS).verdict == "not reproduced"


def test_sigmas_tolerance_combines_published_and_measured_spread():
    # measured otcfm: mean 0.03, std 0.01414 (n=2)
    claim = Claim(source=SOURCE, dataset="g", method="otcfm", sampler="euler-100", metric="npe", value=0.07,
                  std=0.02, seeds=3, tolerance={"sigmas": 1})
    assert claim.describe() == "npe(otcfm@euler-100) = 0.07 ± 0.02, within 1σ"
    assert evaluate(claim, RECORDS).verdict == "not reproduced"  # gap 0.04 > √(0.02² + 0.01414²) = 0.0245
    two = claim.model_copy(update={"tolerance": claim.tolerance.model_copy(update={"sigmas": 2})})
    assert evaluate(two, RECORDS).verdict == "reproduced"  # 0.04 <= 0.049
    # one measured seed (0.02) has no spread: only the published one counts, 0.05 > 2·0.02
    one_seed = RECORDS[~((RECORDS["method"] == "otcfm") & (RECORDS["seed"] == 1))]
    assert evaluate(two, one_seed).verdict == "not reproduced"
    with pytest.raises(ValueError, match="sigmas needs the published std"):
        Claim(source=SOURCE, dataset="g", method="otcfm", metric="npe", value=0.06, tolerance={"sigmas": 2})
    with pytest.raises(ValueError, match="takes no metric, value, std"):
        Claim(source=SOURCE, dataset="g", std=0.1, relation="npe(a) < 1")


def test_not_run_when_records_lack_what_the_claim_needs():
    missing = Claim(source=SOURCE, dataset="other", method="otcfm", metric="npe", value=1, tolerance={"rel": 0.1})
    assert evaluate(missing, RECORDS).verdict == "not run"
    ambiguous = Claim(source=SOURCE, dataset="g", method="icfm", metric="npe", value=1, tolerance={"rel": 0.1})
    result = evaluate(ambiguous, RECORDS)
    assert result.verdict == "not run" and "several samplers" in result.reason
    failed = Claim(source=SOURCE, dataset="g", relation="npe(broken@euler-100) < 1")
    assert evaluate(failed, RECORDS).verdict == "not run"


def test_relation_claims():
    holds = Claim(source=SOURCE, dataset="g", sampler="euler-100", relation="npe(icfm) / npe(otcfm) >= 10")
    result = evaluate(holds, RECORDS)
    assert result.verdict == "reproduced"  # the ratio of the means: 0.4 / 0.03 = 13.3
    assert result.measured == "13.33 vs 10 (per seed: 13.75 ± 1.8 (n=2))"  # per seed: 15 and 12.5
    fails = Claim(source=SOURCE, dataset="g", relation="npe(icfm@euler-1) < npe(otcfm@euler-100)")
    assert evaluate(fails, RECORDS).verdict == "not reproduced"


def test_claim_needs_a_kind():
    with pytest.raises(ValueError, match="either relation, or metric with value and tolerance"):
        Claim(source=SOURCE, dataset="g", metric="npe")
    with pytest.raises(ValueError, match="takes no metric"):
        Claim(source=SOURCE, dataset="g", metric="npe", relation="npe(a) < 1")


def test_claim_errors_in_specs_name_their_line(spec_root):
    write(spec_root / "methods" / "claimy.yaml", """extends: icfm
claims:
  - {source: {paper: X}, dataset: moons, metric: w3, value: 1.0, tolerance: {abs: 0.1}}
""")
    with pytest.raises(SpecError) as info:
        Resolver(spec_root).validate_file(spec_root / "methods" / "claimy.yaml")
    assert str(info.value).endswith("methods/claimy.yaml:3: unknown metric 'w3'; did you mean 'w2' or 'w1'?")
    write(spec_root / "suites" / "s.yaml", """name: s
budget: {train: {steps: 1}}
datasets: [moons]
methods: [icfm]
samplers: [euler-1]
metrics: [w2]
claims:
  - {source: {paper: X}, dataset: moons, relation: "w2(icfm) < w2(icmf)"}
""")
    with pytest.raises(SpecError) as info:
        Resolver(spec_root).suite("s")
    assert str(info.value).endswith("suites/s.yaml:8: claims[0]: no method 'icmf' in the suite or in specs/methods; did you mean 'icfm'?")
    write(spec_root / "suites" / "s.yaml", "name: s\nbudget: {train: {steps: 1}}\ndatasets: [moons]\nmethods: [icfm]\n"
          "samplers: [euler-1]\nclaims:\n  - {source: {paper: X}, dataset: moons, relation: \"w2(icfm) <\"}\n")
    with pytest.raises(SpecError) as info:
        Resolver(spec_root).suite("s")
    assert "suites/s.yaml:7: claims[0]: relation: ends without a term" in str(info.value)
