"""Leaderboard tables: aggregation over seeds, ranking direction, best marking, formats."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from harness.leaderboard import build_tables, format_number, render


def _frame(rows):
    return pd.DataFrame([
        {"key": str(i), "suite": "s", "dataset": d, "method": m, "sampler": s, "seed": seed, "status": st, **metrics}
        for i, (d, m, s, seed, st, metrics) in enumerate(rows)
    ])


ROWS = [
    ("moons", "a", "euler-1", 0, "ok", {"w2": 1.0, "throughput": 100.0}),
    ("moons", "a", "euler-1", 1, "ok", {"w2": 3.0, "throughput": 300.0}),
    ("moons", "b", "euler-1", 0, "ok", {"w2": 0.5, "throughput": 50.0}),
    ("moons", "c", "euler-1", 0, "diverged", {}),
    ("spirals", "a", "euler-1", 0, "ok", {"w2": 0.1, "throughput": 10.0}),
]


def test_mean_and_std_over_seeds_and_rank_in_metric_direction():
    (moons, spirals) = build_tables(_frame(ROWS), ["w2", "throughput"], "w2")
    assert moons.dataset == "moons" and spirals.dataset == "spirals"
    assert [r.method for r in moons.rows] == ["b", "a", "c"]  # lower w2 first, diverged last
    a = moons.rows[1]
    assert a.cells["w2"].mean == 2.0 and abs(a.cells["w2"].std - 2**0.5) < 1e-12 and a.seeds == 2
    assert moons.rows[2].status == "diverged"
    (by_throughput, _) = build_tables(_frame(ROWS), ["w2", "throughput"], "throughput")
    assert [r.method for r in by_throughput.rows] == ["a", "b", "c"]  # higher is better


def test_best_value_is_marked_in_each_column():
    (moons, _) = build_tables(_frame(ROWS), ["w2", "throughput"], "w2")
    assert moons.rows[0].cells["w2"].best and not moons.rows[1].cells["w2"].best
    assert moons.rows[1].cells["throughput"].best  # a: mean 200 > 50
    md = render([moons], "markdown")
    assert "**0.5**" in md and "**200 ± 141**" in md and "2.0 ± 1.4" in md  # mean to the spread's digits
    assert "w2 ↓" in md and "throughput (samples/s) ↑" in md


def test_formats():
    tables = build_tables(_frame(ROWS), ["w2", "throughput"], "w2")
    latex = render(tables, "latex")
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\textbf{0.5}" in latex and r"$\pm$" in latex
    html = render(tables, "html")
    assert "<b>0.5</b>" in html and "<h3>moons</h3>" in html
    csv = render(tables, "csv").splitlines()
    assert csv[0] == "dataset,rank,method,sampler,seeds,status,w2_mean,w2_std,throughput_mean,throughput_std"
    assert csv[1].startswith("moons,1,b,euler-1,1,ok,0.5,")


def test_number_formatting():
    assert format_number(None) == "—"
    assert format_number(16.0) == "16"
    assert format_number(123456.7) == "123,457"
    assert format_number(0.0123456) == "0.01235"


def test_npe_tables_state_the_noise_floor_of_the_normaliser():
    """W2²(q0, q1) = PE / (1 + rpe) is shared by every method of a seed; its relative spread
    over seeds is the npe difference that the table cannot resolve."""
    import pandas as pd

    from harness.leaderboard import build_tables, render

    rows = []
    for seed, w2_sq in [(0, 1.0), (1, 1.2), (2, 1.1)]:
        for method, rpe in [("a", 0.5), ("b", -0.2)]:
            rows.append({"dataset": "g", "method": method, "sampler": "euler-100", "seed": seed, "status": "ok",
                         "npe": abs(rpe), "rpe": rpe, "path_energy": w2_sq * (1 + rpe)})
    (table,) = build_tables(pd.DataFrame(rows), ["npe", "rpe"], "npe")
    assert table.notes == ["npe noise floor: the normaliser W2²(q0, q1) varies by 0.091 (relative std over 3 "
                           "seeds' evaluation samples), so npe differences below about 0.091 are not resolved."]
    assert [r.method for r in table.rows] == ["b", "a"]  # npe 0.2 before 0.5
    assert table.rows[0].cells["rpe"].best  # |−0.2| is nearer 0 than 0.5
    assert "npe noise floor" in render([table], "markdown") and r"$\to$0" in render([table], "latex")


def test_a_seed_that_did_not_finish_shows_in_the_seeds_column():
    rows = [("moons", "a", "euler-1", 0, "ok", {"w2": 1.0}), ("moons", "a", "euler-1", 1, "ok", {"w2": 3.0}),
            ("moons", "a", "euler-1", 2, "failed", {})]
    (table,) = build_tables(_frame(rows), ["w2"], "w2")
    (row,) = table.rows
    assert row.seeds_text == "2/3" and row.cells["w2"].mean == 2.0 and row.cells["w2"].n == 2
    assert re.search(r"\|\s+2/3 \|", render([table], "markdown"))


def test_unreadable_records_are_skipped_with_their_file_named(tmp_path, capsys):
    """Garbage, a truncated file, the wrong shape or missing fields: the file is named in
    a warning, the tables of the other records stand, and a resume redoes it."""
    import json

    from harness.leaderboard import leaderboard
    from harness.results import final_keys

    records = tmp_path / "records"
    records.mkdir()
    good = {"key": "k1", "train_key": "t1", "dataset": "moons", "method": "a", "sampler": "euler-1", "seed": 0,
            "status": "ok", "metrics": {"w2": 0.5}}
    (records / "good.json").write_text(json.dumps(good))
    (records / "garbage.json").write_bytes(b"\x00\xffnot json")
    (records / "truncated.json").write_text(json.dumps(good)[:40])
    (records / "list.json").write_text("[1, 2]")
    (records / "missing.json").write_text(json.dumps({k: v for k, v in good.items() if k != "status"}))
    (tmp_path / "suite.json").write_text("{broken")
    text = leaderboard(tmp_path)
    err = capsys.readouterr().err
    assert "| a " in text and "0.5" in text
    for name, why in [("garbage", "not a readable JSON file"), ("truncated", "not a readable JSON file"),
                      ("list", "expected a JSON object, got list"), ("missing", "field 'status' is missing")]:
        assert f"warning: skipped unreadable record {records / name}.json: {why}" in err
    assert f"warning: ignored unreadable {tmp_path / 'suite.json'}" in err
    assert final_keys(tmp_path) == {"k1"}


def test_a_second_run_on_the_same_results_is_refused(tmp_path, capsys):
    """Two runs on one directory would both redo the work and clear each other's temporary
    files: the second is refused with exit 2 while the first holds the lock."""
    from harness.cli import main
    from harness.results import lock_results
    from tests.conftest import SPECS, TINY

    out = tmp_path / "r"
    sets = [x for o in [*TINY, "datasets=[moons]", "methods=[icfm]", "samplers=[euler-1]"] for x in ("--set", o)]
    with lock_results(out):
        assert main(["--specs", str(SPECS), "run", "quickstart", "--results", str(out), "--no-progress", *sets]) == 2
        err = capsys.readouterr().err
        assert f"--results {out}: another flowgauge run (pid {__import__('os').getpid()}) is using it" in err
        assert not (out / "records").exists()
    assert main(["--specs", str(SPECS), "run", "quickstart", "--results", str(out), "--no-progress", *sets]) == 0


def test_columns_the_set_up_decides_and_ties_mark_nothing():
    rows = [("moons", "a", "euler-1", 0, "ok", {"w2": 1.0, "nfe": 1.0, "steps": 1.0, "mmd": 0.2}),
            ("moons", "b", "euler-8", 0, "ok", {"w2": 0.5, "nfe": 8.0, "steps": 8.0, "mmd": 0.2}),
            ("moons", "c", "euler-8", 0, "ok", {"w2": 0.7, "nfe": 8.0, "steps": 8.0, "mmd": 0.3})]
    (moons,) = build_tables(_frame(rows), ["w2", "nfe", "steps", "mmd"], "w2")
    assert [r.method for r in moons.rows if r.cells["w2"].best] == ["b"]
    for column in ("nfe", "steps", "mmd"):  # NFE is the sampler's choice; mmd: a and b tie at 0.2
        assert not any(r.cells[column].best for r in moons.rows), column
    # one method's model under two samplers shares its flow metrics: that is no tie
    rows = [("moons", "a", "euler-1", 0, "ok", {"w2": 1.0, "straightness": 0.1}),
            ("moons", "a", "euler-8", 0, "ok", {"w2": 0.5, "straightness": 0.1}),
            ("moons", "b", "euler-8", 0, "ok", {"w2": 0.7, "straightness": 0.3})]
    (moons,) = build_tables(_frame(rows), ["w2", "straightness"], "w2")
    assert [(r.method, r.sampler) for r in moons.rows if r.cells["straightness"].best] == [("a", "euler-8"),
                                                                                           ("a", "euler-1")]


def test_mean_rounded_to_the_spread_and_no_exponent_or_zero_spread():
    from harness.leaderboard import format_mean_std

    assert format_mean_std(3.031, 0.7412) == "3.03 ± 0.74"
    assert format_mean_std(282.49, 47.2) == "282 ± 47"
    assert format_mean_std(0.17114, 0.0551) == "0.171 ± 0.055"
    assert format_mean_std(1234.5, 56.0) == "1,234 ± 56" or format_mean_std(1234.5, 56.0) == "1,235 ± 56"
    assert format_mean_std(100.0, 0.0) == "100"  # NFE: the set-up fixes it, no "± 0"
    assert format_mean_std(0.25, None) == "0.25"  # one seed
    assert format_number(0.0000123456) == "0.00001235" and format_number(123.456) == "123.5"


def test_latex_is_ascii_with_the_dataset_in_the_caption_and_numbers_right_aligned():
    from harness import latex

    assert latex.escape("a_b & 5% ± σ ≥ 2 → é {x}") == (r"a\_b \& 5\% $\pm$ $\sigma$ $\ge$ 2 $\to$ e \{x\}")
    (table,) = build_tables(_frame(ROWS), ["w2", "throughput"], "w2")[:1]
    text = render([table], "latex")
    assert text.isascii()
    assert r"\caption{moons: mean $\pm$ std over " in text and r"\label{tab:moons}" in text
    assert r"\begin{tabular}{rllrrr}" in text and r"\toprule" in text and r"\bottomrule" in text


def test_latex_tables_and_claims_compile_under_pdflatex(tmp_path):
    """The committed reproduction's leaderboard and claims, in a bare article with booktabs."""
    import shutil
    import subprocess

    from tests.conftest import PROJECT, run_cli

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    results = PROJECT / "results" / "rectified-flow-toy"
    board = run_cli("leaderboard", str(results), "--format", "latex").stdout
    claims = run_cli("claims", str(results), "--format", "latex").stdout
    assert board.isascii() and claims.isascii() and r"\caption{rf-gmm:" in board
    (tmp_path / "t.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                    + board + "\n" + claims + "\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_a_column_of_mixed_provenance_is_neither_marked_nor_ranked():
    """Values made with different feature networks (say) are not comparable: the table says
    so, marks no best value in that column, and does not rank by it."""
    import json

    import pandas as pd

    def row(method, value, sha):
        return {"dataset": "digits", "method": method, "sampler": "euler-8", "seed": 0, "status": "ok", "config": method,
                "fd_digits": value, "nfe": 8.0,
                "fd_digits@provenance": json.dumps({"weights_sha256": sha, "generated": 300})}

    same = build_tables(pd.DataFrame([row("a", 50.0, "aaa"), row("b", 40.0, "aaa")]), ["fd_digits", "nfe"], "fd_digits")
    assert [r.method for r in same[0].rows] == ["b", "a"] and same[0].rows[0].cells["fd_digits"].best
    assert same[0].notes == []
    (table,) = build_tables(pd.DataFrame([row("a", 50.0, "aaa"), row("b", 40.0, "bbb")]), ["fd_digits", "nfe"],
                            "fd_digits")
    assert [r.method for r in table.rows] == ["a", "b"]  # by name: not ranked
    assert not any(r.cells["fd_digits"].best for r in table.rows)
    (note,) = table.notes
    assert note.startswith("fd_digits: this column mixes values of different provenance (weights_sha256: aaa, bbb)")
    assert "the rows are not ranked" in note


def test_a_likelihood_column_is_mixed_by_what_it_is_given_not_by_its_standard_error():
    """bpd of a class-conditional flow is log p(x | y), not log p(x): the two are not ranked
    together; two flows differ in their values' standard errors, which is no provenance."""
    import json

    import pandas as pd

    def row(method, value, given, std_error):
        return {"dataset": "digits", "method": method, "sampler": "ar-sequential", "seed": 0, "status": "ok",
                "config": method, "bpd": value,
                "bpd@provenance": json.dumps({"split": "held_out", "n": 359, "given": given,
                                              "std_error_nats": std_error})}

    (table,) = build_tables(pd.DataFrame([row("a", 2.5, "nothing", 0.45), row("b", 2.4, "nothing", 0.52)]),
                            ["bpd"], "bpd")
    assert [r.method for r in table.rows] == ["b", "a"] and table.rows[0].cells["bpd"].best and table.notes == []
    latent = {**row("c", None, None, None), "bpd@provenance": json.dumps({"split": None, "n": None, "given": None})}
    (table,) = build_tables(pd.DataFrame([row("a", 2.5, "nothing", 0.45), row("b", 2.4, "nothing", 0.52), latent]),
                            ["bpd"], "bpd")
    assert table.notes == []  # a value that is not applicable (—) has no provenance to mix
    (table,) = build_tables(pd.DataFrame([row("a", 2.5, "nothing", 0.45), row("b", 2.4, "the class", 0.45)]),
                            ["bpd"], "bpd")
    assert table.notes[0].startswith("bpd: this column mixes values of different provenance (given: nothing, the "
                                     "class)")


def test_the_floor_note_says_what_a_perfect_model_scores():
    import pandas as pd

    from harness.leaderboard import floor_note

    rows = pd.DataFrame([
        {"method": "icfm", "seed": 0, "fd_digits@floor:train_images": 20.0, "fd_digits@floor:num_samples": 500},
        {"method": "icfm", "seed": 1, "fd_digits@floor:train_images": 22.0, "fd_digits@floor:num_samples": 500},
        {"method": "latent-fm", "seed": 0, "fd_digits@floor:train_images": 20.0,
         "fd_digits@floor:reconstructions": 30.0, "fd_digits@floor:num_samples": 500},
        {"method": "latent-fm", "seed": 1, "fd_digits@floor:train_images": 22.0,
         "fd_digits@floor:reconstructions": 34.0, "fd_digits@floor:num_samples": 500},
    ])
    assert floor_note(rows, "fd_digits") == (
        "fd_digits floor, what a perfect model scores: 21.0 ± 1.4 for 500 real training images; the same images "
        "through the autoencoder of latent-fm: 32 (no latent flow can do better).")
    assert floor_note(rows, "kid_digits") is None
