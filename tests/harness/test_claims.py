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


def seeds(method, values, dataset="g", sampler="euler-100", status=None):
    status = status or {}
    return [(dataset, method, sampler, i, status.get(i, "ok"), None if i in status else v) for i, v in enumerate(values)]


def test_value_claims_compare_the_interval_of_the_difference_with_the_margin():
    """Equivalence: reproduced when the 95 % t interval of mean − value lies within ±δ, not
    reproduced when it lies wholly outside, inconclusive when it straddles ±δ."""
    tight = frame(seeds("a", [0.030, 0.031, 0.029, 0.030, 0.030]))
    claim = Claim(source=SOURCE, dataset="g", method="a", sampler="euler-100", metric="npe", value=0.03,
                  tolerance={"abs": 0.005})
    result = evaluate(claim, tight)
    assert result.verdict == "reproduced" and result.test == "one-sample t, 95 %"
    # mean 0.03, sem 0.000316, t(4) = 2.776: the interval is ±0.000878
    assert result.interval.low == pytest.approx(-0.000878, abs=1e-6) and result.interval.high == pytest.approx(0.000878, abs=1e-6)
    far = claim.model_copy(update={"value": 0.1})
    assert evaluate(far, tight).verdict == "not reproduced"
    # the same mean with a large spread: the data cannot decide, whatever the margin's side
    noisy = frame(seeds("a", [0.0, 0.06, 0.01, 0.05, 0.03]))
    result = evaluate(claim, noisy)
    assert result.verdict == "inconclusive" and "straddles ±0.005" in result.reason


def test_a_noisier_run_never_makes_reproduced_easier():
    """The old rule (|mean − value| ≤ k·√(s_pub² + s²)) reproduced more easily the noisier
    the run; the interval only widens with noise: a reproduced claim can become
    inconclusive, never the other way round."""
    claim = Claim(source=SOURCE, dataset="g", method="a", sampler="euler-100", metric="npe", value=0.07,
                  std=0.02, seeds=3, tolerance={"sigmas": 2})
    assert claim.describe() == "npe(a@euler-100) = 0.07 ± 0.02, ±2σ"
    quiet = frame(seeds("a", [0.16, 0.161, 0.159]))  # mean 0.16: 0.09 away, margin 2σ = 0.04
    loud = frame(seeds("a", [0.06, 0.26, 0.16]))  # same mean, std 0.1
    assert evaluate(claim, quiet).verdict == "not reproduced"
    result = evaluate(claim, loud)
    assert result.verdict == "inconclusive" and result.test == "Welch t, 95 %"
    # Welch: se = √(0.1²/3 + 0.02²/3) = 0.0589, df = 2.16
    assert result.interval.high - result.interval.estimate == pytest.approx(0.2364, rel=2e-2)
    with pytest.raises(ValueError, match="sigmas needs the published std"):
        Claim(source=SOURCE, dataset="g", method="a", metric="npe", value=0.06, tolerance={"sigmas": 2})
    with pytest.raises(ValueError, match="takes no metric, value, std"):
        Claim(source=SOURCE, dataset="g", std=0.1, relation="npe(a) < 1")


def test_failed_seeds_are_counted_not_dropped():
    rows = seeds("a", [0.03, 0.031, 0.029, 0.03, 0.03], status={1: "failed", 3: "diverged"})
    claim = Claim(source=SOURCE, dataset="g", method="a", sampler="euler-100", metric="npe", value=0.03,
                  tolerance={"abs": 0.005}, min_seeds=4)
    result = evaluate(claim, frame(rows))
    assert result.verdict == "inconclusive"
    assert result.reason == "npe(a@euler-100): 3 finished seed(s) (seed 1 failed, seed 3 diverged); the claim needs 4"
    assert evaluate(claim.model_copy(update={"min_seeds": 3}), frame(rows)).verdict == "reproduced"
    relation = Claim(source=SOURCE, dataset="g", sampler="euler-100", relation="npe(a) < npe(b)")
    result = evaluate(relation, frame(rows + seeds("b", [1.0, 1.1, 1.2, 1.3, 1.4])))
    assert result.verdict == "reproduced"  # 3 finished seeds of a, paired with b's on seeds 0, 2, 4
    assert result.test == "paired t over 3 seeds, 95 %"


def test_not_run_when_records_lack_what_the_claim_needs():
    missing = Claim(source=SOURCE, dataset="other", method="otcfm", metric="npe", value=1, tolerance={"rel": 0.1})
    assert evaluate(missing, RECORDS).verdict == "not run"
    ambiguous = Claim(source=SOURCE, dataset="g", method="icfm", metric="npe", value=1, tolerance={"rel": 0.1})
    result = evaluate(ambiguous, RECORDS)
    assert result.verdict == "not run" and "several samplers" in result.reason
    failed = Claim(source=SOURCE, dataset="g", relation="npe(broken@euler-100) < 1")
    result = evaluate(failed, RECORDS)
    assert result.verdict == "not run" and "seed 0 failed" in result.reason


def test_relation_claims_paired_by_seed():
    separated = frame(seeds("icfm", [0.30, 0.50, 0.40]) + seeds("otcfm", [0.02, 0.04, 0.03]))
    holds = Claim(source=SOURCE, dataset="g", sampler="euler-100", relation="npe(icfm) / npe(otcfm) >= 10")
    result = evaluate(holds, separated)
    assert result.verdict == "reproduced" and result.test == "paired t over 3 seeds, 95 %"
    # per seed: 15, 12.5, 13.33 against 10; their mean 3.61 above it, t(2) interval ±3.1
    assert result.measured.startswith("13.33 vs 10; lhs − rhs 3.61 [")
    assert result.interval.low > 0
    overlapping = frame(seeds("icfm", [0.30, 0.50, 0.40]) + seeds("otcfm", [0.02, 0.06, 0.05]))
    result = evaluate(holds, overlapping)  # per seed 15, 8.3, 8: the interval contains 10
    assert result.verdict == "inconclusive" and result.reason == "the interval contains 0"
    reversed_ = Claim(source=SOURCE, dataset="g", sampler="euler-100", relation="npe(icfm) < npe(otcfm)")
    assert evaluate(reversed_, separated).verdict == "not reproduced"


def test_relation_claims_without_shared_seeds_use_a_bootstrap():
    rows = seeds("a", [1.0, 1.1, 0.9]) + [("g", "b", "euler-100", s, "ok", v) for s, v in [(7, 2.0), (8, 2.2), (9, 2.1)]]
    claim = Claim(source=SOURCE, dataset="g", sampler="euler-100", relation="npe(a) < npe(b)")
    result = evaluate(claim, frame(rows))
    assert result.verdict == "reproduced" and result.test.startswith("bootstrap over seeds (10000 resamples)")
    assert evaluate(claim, frame(rows)).interval == result.interval  # a fixed generator: reproducible


def test_claims_marked_as_differing_are_not_comparable():
    claim = Claim(source=SOURCE, dataset="g", method="otcfm", sampler="euler-100", metric="npe", value=0.5,
                  tolerance={"abs": 0.01}, differs="their target geometry differs (W2 below our floor)", min_seeds=2)
    result = evaluate(claim, RECORDS)
    assert result.verdict == "not comparable" and result.reason.startswith("their target geometry")
    assert result.measured.startswith("0.03 ± 0.014 (n=2)")


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


def test_claims_follow_the_specs_as_they_stand_and_say_what_changed(spec_root, tmp_path):
    """Claims are descriptive: editing one after the run changes the verdicts at once (with
    a note); editing what the records depend on says the records are of the suite as run;
    a suite that cannot be read any more falls back to the claims stored at run time."""
    from tests.conftest import TINY, run_cli

    suite = spec_root / "suites" / "c.yaml"
    text = ("name: c\nhardware: cpu\nseeds: [0]\nbudget: {train: {steps: 40}, eval: {num_samples: 256, warmup: 0}}\n"
            "datasets: [moons]\nmethods: [icfm]\nsamplers: [euler-1]\nmetrics: [w2]\nclaims:\n"
            "  - {source: {paper: X}, dataset: moons, method: icfm, metric: w2, value: %s, tolerance: {abs: 0.01},"
            " min_seeds: 1}\n")
    write(suite, text % "100.0")
    out = tmp_path / "out"
    assert run_cli("--specs", str(spec_root), "run", "c", "--results", str(out), "--no-progress",
                   *sum((["--set", t] for t in TINY[2:]), [])).returncode == 0
    before = run_cli("claims", str(out))
    assert "= 100, " in before.stdout and "Note:" not in before.stdout
    write(suite, text % "200.0")  # the claim edited, nothing else
    edited = run_cli("claims", str(out))
    assert "= 200, " in edited.stdout and "= 100, " not in edited.stdout
    assert "Note: the claims changed since the run" in edited.stdout and "more than its claims" not in edited.stdout
    write(suite, (text % "200.0").replace("steps: 40", "steps: 41"))  # the records no longer describe the suite
    assert "changed since the run in more than its claims" in run_cli("claims", str(out)).stdout
    suite.unlink()
    gone = run_cli("claims", str(out))
    assert gone.returncode == 0 and "= 100, " in gone.stdout and "cannot be read now" in gone.stdout


def test_one_seed_allowed_by_min_seeds_is_inconclusive_not_a_crash():
    """min_seeds: 1 lets one seed through, but one seed has no spread: no t interval, so no
    verdict either way (it once raised AttributeError on the missing interval)."""
    claim = Claim(source=SOURCE, dataset="g", method="a", sampler="euler-100", metric="npe", value=0.03,
                  tolerance={"abs": 0.5}, min_seeds=1)
    result = evaluate(claim, frame(seeds("a", [0.03])))
    assert result.verdict == "inconclusive" and "one seed" in result.reason and result.interval is None
