"""Table rendering per format against golden files, the JSON document of the table model,
and LaTeX that compiles.

The goldens in ``tests/harness/golden/`` are the expected output, byte for byte, of each
format (markdown, latex, html, csv, json) for three fixed models built here from crafted
records (no training): the ranked leaderboard, the quality-at-NFE view and the claims.
Names in the records carry what each format must escape (``&``, ``%``, ``_``, ``<``,
``|``, ``#``, ``[``, ``~``, ``^``, a backslash, a comma and a double quote), and some
values are not finite, so the goldens show the escaping and the nulls.

After a deliberate change of the output, rewrite the goldens and review their diff::

    FLOWGAUGE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -p no:xdist -q tests/harness/test_table_formats.py
    git diff tests/harness/golden/
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.claims import Claim, evaluate
from harness.claims import render as render_claims
from harness.leaderboard import FORMATS, build_tables, nfe_tables, render, render_nfe
from harness.results import records_frame
from harness.table_json import CLAIMS_FORMAT, TABLE_FORMAT, VERSION

# the infinite value: its spread is NaN (numpy says so), its mean inf, and the tables show neither
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FLOWGAUGE_UPDATE_GOLDEN") == "1"
SUFFIX = {"markdown": "md", "latex": "tex", "html": "html", "csv": "csv", "json": "json"}

DATASET = 'moons_50% #1, "hard"'
SB = 'otcfm & "sb", v2'  # an ampersand, a double quote and a comma
PIPE = "a<b|c_d"  # raw HTML, a markdown cell's end, a subscript
ODD = "[x]~^\\"  # a bracket after LaTeX's \\, a tilde, a caret, a backslash
NOTE = 'w2: a note with & % _ < | # "quotes", commas'


def record(method, sampler, seed, w2, nfe, *, status="ok", convention="N", throughput=None, odd=None,
           train_s=4.0, config=""):
    """A record as the runner writes it, with only what the tables read (``config``: what
    the ranked view's frame gets as the record's configuration)."""
    metrics = {} if status != "ok" else {"w2": w2, "nfe": nfe}
    if status == "ok" and throughput is not None:
        metrics["throughput"] = throughput
    if status == "ok" and odd is not None:
        metrics["odd_metric"] = odd
    return {"key": f"{method}-{sampler}-{seed}-{config}", "train_key": f"{method}-{seed}-{config}",
            "dataset": DATASET, "method": method, "sampler": sampler, "seed": seed, "status": status,
            "metrics": metrics, "measurements": {"nfe": nfe, "nfe_convention": convention},
            "train": {"steps": 101, "train_s": train_s}, "config": config}


RECORDS = [
    *[record(SB, "euler-1", s, w, 1.0, throughput=t, odd=o, train_s=4.0 + s)
      for s, w, t, o in ((0, 1.5, 1000.0, 1.0), (1, 1.7, 1100.0, math.inf), (2, 1.6, 1050.0, 2.0))],
    *[record(SB, "euler-4", s, w, 4.0, throughput=t, train_s=4.0 + s)
      for s, w, t in ((0, 0.52, 300.0), (1, 0.55, 310.0), (2, 0.50, 305.0))],
    *[record(PIPE, "euler-1", s, w, 1.0, throughput=2000.0, train_s=8.0) for s, w in ((0, 1.2), (1, 1.3), (2, 1.25))],
    *[record(PIPE, "euler-4", s, w, 4.0, config="cfgA") for s, w in ((0, 0.61), (1, 0.64), (2, 0.60))],
    *[record(PIPE, "boss-4", s, w, 4.0) for s, w in ((0, 0.31), (1, 0.33), (2, 0.30))],
    record(ODD, "dopri5", 0, 0.21, 80.0, convention="counted"),
    record(ODD, "dopri5", 1, 0.26, 92.0, convention="counted"),
    record(ODD, "euler-4", 0, 0.9, 4.0), record(ODD, "euler-4", 1, None, 4.0, status="diverged"),
    record("broken", "euler-4", 0, None, None, status="failed"),
]
# a second configuration of one method and sampler: a row of its own in the ranked view
VARIANT = [record(PIPE, "euler-4", s, w, 4.0, config="cfgB") for s, w in ((0, 0.7), (1, 0.75))]
VARIANTS = {"cfgA": "lr=0.01 <slow>", "cfgB": "lr=0.1 & more"}


def ranked_tables():
    records = RECORDS + VARIANT
    frame = records_frame(records)
    frame["config"] = [r["config"] for r in records]
    tables = build_tables(frame, ["w2", "throughput", "nfe", "odd_metric"], "w2", VARIANTS)
    for table in tables:
        table.notes.append(NOTE)
    return tables


def nfe_view():
    tables = nfe_tables(RECORDS, "w2")
    for table in tables:
        table.notes.append(NOTE)
    return tables


SOURCE = {"paper": 'Smith & Jones, "Flows" 50%', "table": "Tab. #2_a"}


def claim_results():
    frame = records_frame(RECORDS)
    claims = [
        Claim(source=SOURCE, dataset=DATASET, method=SB, sampler="euler-4", metric="w2", value=0.5,
              tolerance={"abs": 0.1}),
        Claim(source=SOURCE, dataset=DATASET, relation=f"w2({PIPE}@boss-4) < w2({PIPE}@euler-1)"),
        Claim(source=SOURCE, dataset=DATASET, relation=f"w2({PIPE}@boss-4) < w2({ODD}@euler-4)", min_seeds=2),
        Claim(source={"paper": "Ghost <2024>"}, dataset=DATASET, method="ghost", sampler="euler-1", metric="w2",
              value=1.0, tolerance={"rel": 0.1}),
        Claim(source=SOURCE, dataset=DATASET, method=SB, sampler="euler-1", metric="w2", value=1.65,
              tolerance={"abs": 0.2}, differs="uses 50% of the data & a <different> split"),
    ]
    return [evaluate(c, frame) for c in claims]


VIEWS = {
    "ranked": lambda fmt: render(ranked_tables(), fmt),
    "nfe": lambda fmt: render_nfe(nfe_view(), fmt),
    "claims": lambda fmt: render_claims(claim_results(), fmt),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("view", list(VIEWS))
def test_each_format_matches_its_golden_file(view, fmt):
    text = VIEWS[view](fmt) + "\n"
    path = GOLDEN / f"{view}.{SUFFIX[fmt]}"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    assert path.is_file(), f"no golden file {path}: run with FLOWGAUGE_UPDATE_GOLDEN=1 to write it"
    assert text.encode() == path.read_bytes(), (
        f"{view} in {fmt} differs from {path}; if the change is meant, rewrite the goldens with "
        "FLOWGAUGE_UPDATE_GOLDEN=1 and review their diff")


def test_the_goldens_show_each_format_escaping():
    md = VIEWS["ranked"]("markdown")
    assert r"a\<b\|c_d" in md and r"[x]~^\\" in md
    html = VIEWS["ranked"]("html")
    assert "a&lt;b|c_d [lr=0.01 &lt;slow&gt;]" in html and "otcfm &amp; &quot;sb&quot;, v2" in html
    tex = VIEWS["ranked"]("latex") + VIEWS["nfe"]("latex") + VIEWS["claims"]("latex")
    assert tex.isascii()
    assert r"otcfm \& " in tex and r"a$<$b$|$c\_d" in tex and r"moons\_50\% \#1" in tex
    assert "\n{}[x]\\textasciitilde{}\\textasciicircum{}\\textbackslash{}" in tex  # not \\[...]: an argument
    csv_text = VIEWS["ranked"]("csv")
    assert '"moons_50% #1, ""hard"""' in csv_text and '"otcfm & ""sb"", v2"' in csv_text
    claims_csv = VIEWS["claims"]("csv").splitlines()
    assert claims_csv[0].startswith("dataset,claim,") and "\t" not in claims_csv[0]  # comma-separated, not tsv


def test_json_is_the_table_model_with_raw_numbers_and_nulls():
    document = json.loads(VIEWS["ranked"]("json"))
    assert (document["format"], document["version"], document["view"]) == (TABLE_FORMAT, VERSION, "ranked")
    (table,) = document["tables"]
    assert table["dataset"] == DATASET and table["rank_by"] == "w2"
    assert [c["metric"] for c in table["columns"]] == ["w2", "throughput", "nfe", "odd_metric"]
    assert table["columns"][1]["higher_is_better"] is True and table["notes"] == [NOTE]
    rows = {(r["label"], r["sampler"]): r for r in table["rows"]}
    sb = rows[(SB, "euler-4")]["cells"]["w2"]
    assert sb["mean"] == pytest.approx(0.5233333333) and sb["n"] == 3
    assert [v["seed"] for v in sb["values"]] == [0, 1, 2] and sb["values"][0]["value"] == 0.52
    odd = rows[(SB, "euler-1")]["cells"]["odd_metric"]
    assert odd["mean"] is None and odd["std"] is None and odd["values"][1] == {"seed": 1, "value": None}  # inf
    assert rows[("broken", "euler-4")]["rank"] is None and rows[("broken", "euler-4")]["status"] == "failed"
    assert rows[(f"{PIPE} [lr=0.1 & more]", "euler-4")]["variant"] == "lr=0.1 & more"
    assert rows[(PIPE, "boss-4")]["cells"]["w2"]["best"] is False  # ODD's dopri5 is the best w2
    assert rows[(ODD, "dopri5")]["cells"]["w2"]["best"] is True and rows[(ODD, "dopri5")]["rank"] == 1

    nfe = json.loads(VIEWS["nfe"]("json"))
    assert nfe["view"] == "nfe" and nfe["legend"]
    (table,) = nfe["tables"]
    assert [c["key"] for c in table["columns"]] == ["1", "4", "adaptive (dopri5)"]
    assert table["columns"][2] == {"key": "adaptive (dopri5)", "label": "adaptive (dopri5)", "nfe": None,
                                   "adaptive": True, "sampler": "dopri5"}
    odd_row = next(r for r in table["rows"] if r["method"] == ODD)
    adaptive = odd_row["cells"]["adaptive (dopri5)"]
    assert adaptive["nfe"]["mean"] == 86.0 and adaptive["value"]["best"] is True
    assert odd_row["train"]["train_time"]["values"] == [{"seed": None, "value": 4.0}] * 2  # a model per seed

    claims = json.loads(VIEWS["claims"]("json"))
    assert (claims["format"], claims["version"]) == (CLAIMS_FORMAT, VERSION)
    verdicts = [c["verdict"] for c in claims["claims"]]
    assert verdicts == ["reproduced", "reproduced", "inconclusive", "not run", "not comparable"]
    value = claims["claims"][0]
    assert value["claim"].startswith(f"w2({SB}@euler-4) = 0.5") and value["spec"]["tolerance"]["abs"] == 0.1
    assert value["interval"]["low"] < value["interval"]["estimate"] < value["interval"]["high"]
    assert value["test"] and value["interval"]["test"] == value["test"]
    assert claims["claims"][3]["interval"] is None and "ghost" in claims["claims"][3]["reason"]


def test_json_never_writes_nan_or_infinity():
    from harness.table_json import dumps

    text = dumps({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {1: (2, None)}})
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": {"1": [2, None]}}
    for render_view in VIEWS.values():
        text = render_view("json")
        assert "NaN" not in text and "Infinity" not in text
        assert json.loads(text) == json.loads(json.dumps(json.loads(text)))  # round-trips


def test_latex_of_every_view_compiles_in_a_bare_article_with_booktabs(tmp_path):
    """Ranked, NFE view and claims, with the crafted names, in one document that loads only
    booktabs (what the output's first comment asks for)."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    parts = [VIEWS[view]("latex") for view in VIEWS]
    assert all(p.startswith("% needs \\usepackage{booktabs}\n") for p in parts)
    compile_latex(tmp_path, "\n\n".join(parts))


def test_cli_json_and_latex_of_committed_results(tmp_path):
    """``--format json`` of leaderboard (both views) and claims parses; the NFE view of a
    committed few-step suite compiles."""
    from tests.conftest import PROJECT, run_cli

    toy, few_step = PROJECT / "results" / "rectified-flow-toy", PROJECT / "results" / "few-step-2d"
    board = json.loads(run_cli("leaderboard", str(toy), "--format", "json").stdout)
    assert board["view"] == "ranked" and board["tables"] and board["claims"]["format"] == CLAIMS_FORMAT
    nfe = json.loads(run_cli("leaderboard", str(few_step), "--view", "nfe", "--format", "json").stdout)
    assert nfe["view"] == "nfe" and nfe["tables"][0]["columns"]
    claims = json.loads(run_cli("claims", str(toy), "--format", "json").stdout)
    assert claims["claims"] and all(c["verdict"] for c in claims["claims"])
    (tmp_path / "empty" / "records").mkdir(parents=True)
    empty = json.loads(run_cli("leaderboard", str(tmp_path / "empty"), "--format", "json").stdout)
    assert empty["tables"] == [] and "no records" in empty["notes"][0]
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    compile_latex(tmp_path, run_cli("leaderboard", str(few_step), "--view", "nfe", "--format", "latex").stdout)


def compile_latex(folder: Path, body: str) -> None:
    (folder / "t.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                  + body + "\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=folder,
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (folder / "t.pdf").stat().st_size > 1000
