"""The bad-input corpus (tests/bad_inputs/): every input is refused with one clean line and
exit 2, or, for a damaged results folder, read with a warning that names the file."""

from __future__ import annotations

from tests.bad_inputs.corpus import cases, make_results, run_case


def test_every_bad_input_of_the_corpus_is_refused_cleanly(tmp_path):
    all_cases = cases(tmp_path)
    make_results(tmp_path)
    unclean = []
    for case in all_cases:
        outcome = run_case(case, tmp_path)
        if not outcome.clean:
            unclean.append(f"{case.name}: {'; '.join(outcome.problems)}")
    assert len(all_cases) >= 400  # the corpus did not shrink to nothing
    assert not (tmp_path / "never").exists()  # no refused run created its results folder
    assert unclean == [], "\n".join(unclean)


def test_the_corpus_judge_catches_what_it_must():
    """The judge itself: a traceback, a wrong status, a second error line or the wrong
    message are each not clean."""
    from tests.bad_inputs.corpus import Case, Outcome, _judge

    case = Case("c", [], "budget.train.steps")
    for outcome, problem in [
        (Outcome(1, "x.yaml:3: budget.train.steps: bad\n", ""), "exit status 1"),
        (Outcome(2, "Traceback (most recent call last):\nx.yaml:3: budget.train.steps: bad\n", ""), "traceback"),
        (Outcome(2, "first\nx.yaml:3: budget.train.steps: bad\n", ""), "more than one error line"),
        (Outcome(2, "x.yaml:3: seeds: bad\n", ""), "expected 'budget.train.steps'"),
        (Outcome(None, "", "", escaped="Traceback\nValueError: boom"), "exception escaped"),
    ]:
        _judge(case, outcome)
        assert any(problem in p for p in outcome.problems), (problem, outcome.problems)
    good = Outcome(2, "suite tiny: 1 trainings\nx.yaml:3: budget.train.steps: bad\n", "")
    _judge(case, good)
    assert good.clean
