"""The quality-at-NFE view: one row per (method, sampler family), one column per NFE,
adaptive samplers last with their mean NFE, one row for a one-step map, and each method's
training cost."""

from __future__ import annotations

import json

import pytest

from harness.leaderboard import NfeColumn, nfe_tables, render_nfe, training_cost


def record(method, sampler, seed, w2, nfe, convention="N", train=None, status="ok", dataset="moons"):
    """A record as the runner writes it, with only what the view reads."""
    train = train if train is not None else {"steps": 101, "train_s": 4.0, "steps_per_s": 25.0}
    return {"key": f"{dataset}-{method}-{sampler}-{seed}", "train_key": f"{dataset}-{method}-{seed}",
            "dataset": dataset, "method": method, "sampler": sampler, "seed": seed, "status": status,
            "metrics": {} if status != "ok" else {"w2": w2, "nfe": nfe},
            "measurements": {"nfe": nfe, "nfe_convention": convention}, "train": train}


SWEEP = [
    record("a", "euler-1", 0, 1.0, 1.0), record("a", "euler-1", 1, 3.0, 1.0),
    record("a", "euler-4", 0, 0.5, 4.0), record("a", "euler-4", 1, 0.7, 4.0),
    record("a", "dopri5", 0, 0.2, 80.0, "counted"), record("a", "dopri5", 1, 0.4, 90.0, "counted"),
    record("b", "euler-1", 0, 0.8, 1.0), record("b", "euler-1", 1, 1.2, 1.0),
    record("b", "euler-4", 0, 0.9, 4.0), record("b", "euler-4", 1, 1.1, 4.0),
]


def by_label(table):
    """{method: {column: cell}} of the rows of uniform samplers (family "euler"), the adaptive
    column included; other families under "method/family"."""
    out: dict = {}
    for row in table.rows:
        name = row.label if row.family in ("euler", "dopri5") else f"{row.label}/{row.family}"
        out.setdefault(name, {}).update({c.label: cell for c, cell in row.cells.items()})
    return out


def test_cells_are_the_leaderboards_mean_and_std_over_seeds_at_each_nfe():
    (table,) = nfe_tables(SWEEP, "w2")
    assert [c.label for c in table.columns] == ["1", "4", "adaptive (dopri5)"]
    cells = by_label(table)
    a1 = cells["a"]["1"].cells["w2"]
    assert a1.mean == 2.0 and a1.std == pytest.approx(2**0.5) and a1.n == 2
    assert cells["b"]["4"].cells["w2"].mean == pytest.approx(1.0)
    assert "adaptive (dopri5)" not in cells["b"]  # b was not sampled adaptively: a blank cell
    # rows in the order of their best entry in the ranked leaderboard: a's dopri5 (0.3) first
    assert [row.label for row in table.rows] == ["a", "b"]
    md = render_nfe([table], "markdown")
    header = "| method | sampler | seeds | 1 | 4 | adaptive (dopri5) | train_steps_per_s"
    assert header in " ".join(md.split())
    assert "2.0 ± 1.4" in md and "**1.00 ± 0.28**" in md  # b is best at NFE 1, in bold
    assert "**0.60 ± 0.14**" in md  # a is best at NFE 4


def test_the_adaptive_column_comes_last_and_states_its_mean_nfe():
    (table,) = nfe_tables(SWEEP, "w2")
    adaptive = table.columns[-1]
    assert adaptive == NfeColumn("dopri5", None, adaptive=True)
    assert table.columns[0] == NfeColumn(None, 1)
    cell = by_label(table)["a"]["adaptive (dopri5)"]
    assert cell.cells["nfe"].mean == 85.0 and cell.cells["w2"].mean == pytest.approx(0.3)
    assert "**0.30 ± 0.14** (NFE 85)" in render_nfe([table], "markdown")
    # an NFE that varies between seeds (iterations to a tolerance) is adaptive too, whatever its convention
    (table,) = nfe_tables([record("a", "ar-jacobi", 0, 1.0, 40.0), record("a", "ar-jacobi", 1, 1.0, 44.0),
                           record("a", "ar-sequential", 0, 1.0, 60.0), record("a", "ar-sequential", 1, 1.0, 60.0)],
                          "w2")
    assert [c.label for c in table.columns] == ["60", "adaptive (ar-jacobi)"]
    assert [(row.family, [c.label for c in row.cells]) for row in table.rows] == [
        ("ar-sequential", ["60", "adaptive (ar-jacobi)"])]  # the adaptive cell beside the method's first row


def test_two_samplers_at_one_nfe_stay_in_rows_of_their_own():
    records = [*SWEEP, record("a", "boss-4", 0, 0.3, 4.0), record("a", "boss-4", 1, 0.35, 4.0),
               record("a", "boss-2", 0, 0.5, 2.0), record("a", "boss-2", 1, 0.5, 2.0)]
    (table,) = nfe_tables(records, "w2")
    assert [c.label for c in table.columns] == ["1", "2", "4", "adaptive (dopri5)"]
    cells = by_label(table)
    assert cells["a/boss"]["4"].cells["w2"].mean == pytest.approx(0.325)
    assert cells["a/boss"]["2"].cells["w2"].mean == pytest.approx(0.5)
    assert cells["a"]["4"].cells["w2"].mean == pytest.approx(0.6)
    assert [(row.label, row.family) for row in table.rows] == [("a", "euler"), ("a", "boss"), ("b", "euler")]
    md = " ".join(render_nfe([table], "markdown").split())
    assert "| a | boss | 2 | | **0.5** | **0.325 ± 0.035** | |" in md


def test_a_one_step_map_has_one_row_whatever_its_samplers():
    records = [record("d", sampler, seed, 0.4 + seed, 1.0) for sampler in ("euler-1", "euler-4", "boss-4")
               for seed in (0, 1)]
    (table,) = nfe_tables([*SWEEP, *records], "w2")
    (row,) = [r for r in table.rows if r.label == "d"]
    assert row.family == "any (one-step map)" and [c.label for c in row.cells] == ["1"]
    assert row.cells[NfeColumn(None, 1)].sampler == "euler-1" and row.cells[NfeColumn(None, 1)].cells["w2"].mean == pytest.approx(0.9)


def test_training_steps_per_second_and_time_per_trained_model():
    # harness.training: the first step is left out, so a record without the rate gives (steps - 1) / train_s
    assert training_cost({"steps": 101, "train_s": 4.0}) == {"train_steps_per_s": 25.0, "train_time": 4.0}
    assert training_cost({"steps": 101, "train_s": 4.0, "steps_per_s": 24.0})["train_steps_per_s"] == 24.0
    assert training_cost({"steps": 1, "train_s": None}) == {"train_steps_per_s": None, "train_time": None}
    seed_0, seed_1 = {"steps": 101, "train_s": 4.0}, {"steps": 101, "train_s": 5.0}  # 25 and 20 steps/s
    records = [record("a", sampler, seed, 1.0, nfe, train=train)
               for sampler, nfe in (("euler-1", 1.0), ("euler-4", 4.0)) for seed, train in ((0, seed_0), (1, seed_1))]
    (table,) = nfe_tables(records, "w2")
    (row,) = table.rows
    rate, seconds = row.train["train_steps_per_s"], row.train["train_time"]
    assert rate.n == 2 and seconds.n == 2  # one model per seed, shared by both samplers: counted once
    assert rate.mean == pytest.approx(22.5) and rate.std == pytest.approx(2.5 * 2**0.5)
    assert seconds.mean == pytest.approx(4.5) and seconds.std == pytest.approx(0.5**0.5)
    md = render_nfe([table], "markdown")
    assert "train_steps_per_s (steps/s) ↑" in md and "22.5 ± 3.5" in md and "4.50 ± 0.71" in md


def test_a_failed_sampler_and_a_seed_that_did_not_finish():
    records = [*SWEEP[:4], record("a", "euler-8", 0, None, None, status="failed"),
               record("a", "euler-8", 1, None, None, status="failed"),
               record("b", "euler-8", 0, 0.6, 8.0), record("b", "euler-8", 1, None, None, status="diverged"),
               *SWEEP[6:8]]
    (table,) = nfe_tables(records, "w2")
    cells = by_label(table)
    assert "8" in cells["a"]  # its NFE taken from the methods that measured euler-8
    md = render_nfe([table], "markdown")
    assert " failed |" in md and "**0.6** (1/2)" in md


def test_a_tie_marks_nothing_and_no_sweep_is_no_sweep():
    records = [record("a", "euler-1", 0, 1.0, 1.0), record("b", "euler-1", 0, 1.0, 1.0)]
    (table,) = nfe_tables(records, "w2")
    assert not any(cell.cells["w2"].best for row in table.rows for cell in row.cells.values())
    assert not table.is_sweep
    assert nfe_tables(SWEEP, "w2")[0].is_sweep


def test_every_format():
    tables = nfe_tables(SWEEP, "w2")
    latex = render_nfe(tables, "latex")
    assert latex.isascii() and r"\toprule" in latex and r"\label{tab:nfe-moons}" in latex
    assert r"\textbf{0.30 $\pm$ 0.14} (NFE 85)" in latex and r"\begin{tabular}{llrrrrrr}" in latex
    html = render_nfe(tables, "html")
    assert "<b>0.30 ± 0.14</b> (NFE 85)" in html and "<th>adaptive (dopri5)" in html
    lines = render_nfe(tables, "csv").splitlines()
    assert lines[0] == ("dataset,method,column,sampler,adaptive,nfe_mean,seeds,status,w2_mean,w2_std,"
                        "train_steps_per_s_mean,train_steps_per_s_std,train_time_mean,train_time_std")
    assert lines[1] == "moons,a,1,euler-1,False,1.0,2,ok,2.0,1.4142135623730951,25.0,0.0,4.0,0.0"
    assert lines[3].startswith("moons,a,adaptive (dopri5),dopri5,True,85.0,2,ok,")
    with pytest.raises(ValueError, match="unknown format"):
        render_nfe(tables, "pdf")


def test_cli_view_nfe(tmp_path):
    from tests.conftest import run_cli

    (tmp_path / "records").mkdir()
    for r in SWEEP:
        (tmp_path / "records" / f"{r['key']}.json").write_text(json.dumps(r))
    result = run_cli("leaderboard", str(tmp_path), "--view", "nfe")
    assert result.returncode == 0, result.stderr
    assert "### moons: w2 ↓ at each NFE" in result.stdout and "adaptive (dopri5)" in result.stdout
    csv = run_cli("leaderboard", str(tmp_path), "--view", "nfe", "--format", "csv").stdout
    assert csv.startswith("dataset,method,column,")
    ranked = run_cli("leaderboard", str(tmp_path)).stdout
    assert "adaptive (dopri5)" not in ranked and "| dopri5 " in ranked  # the default view is unchanged
