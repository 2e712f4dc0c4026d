"""Leaderboard tables: aggregation over seeds, ranking direction, best marking, formats."""

from __future__ import annotations

import pandas as pd

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
    assert "**0.5**" in md and "**200 ± 141**" in md and "2 ± 1.4" in md
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
