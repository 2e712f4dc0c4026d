"""The report's quality-at-NFE section: the table and the plot of quality against NFE,
only when some method was sampled at more than one NFE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection

from harness import report
from harness.leaderboard import nfe_tables
from tests.harness.test_leaderboard_nfe import SWEEP, record


def test_one_line_per_method_and_family_with_bands_and_adaptive_stars(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path, dpi: figures.append(fig))
    records = [*SWEEP, record("a", "boss-4", 0, 0.3, 4.0), record("a", "boss-4", 1, 0.35, 4.0),
               record("a", "euler-1", 0, 1.5, 1.0, dataset="spirals"),
               record("a", "euler-4", 0, 1.0, 4.0, dataset="spirals")]
    assert report.plot_quality_vs_nfe(nfe_tables(records, "w2"), Path("unused.png"))
    (fig,) = figures
    moons, spirals = fig.axes[:2]
    assert moons.get_title() == "moons" and spirals.get_title() == "spirals"
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in moons.get_lines()
             if not line.get_label().startswith("_")}
    assert lines["a · euler"] == ([1.0, 4.0], [2.0, pytest.approx(0.6)])
    assert lines["b · euler"] == ([1.0, 4.0], [pytest.approx(1.0), pytest.approx(1.0)])
    # boss-4 is a family of its own (one NFE: a point with its spread), dopri5 a star at its mean NFE
    points = {c.get_label(): c for c in moons.containers}
    assert set(points) == {"a · boss", "a · dopri5"}
    star = points["a · dopri5"].lines[0]
    assert star.get_marker() == "*" and list(star.get_xdata()) == [85.0]
    assert list(star.get_ydata()) == [pytest.approx(0.3)]
    assert len([c for c in moons.collections if isinstance(c, PolyCollection)]) == 2  # the two euler lines' bands
    assert moons.get_xscale() == "log" and moons.get_ylabel() == "w2 ↓ (lower is better)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "boss", "euler", "adaptive"]


def test_the_band_is_mean_plus_minus_the_std_over_seeds(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path, dpi: figures.append(fig))
    report.plot_quality_vs_nfe(nfe_tables(SWEEP, "w2"), Path("unused.png"))
    bands = [c for c in figures[0].axes[0].collections if isinstance(c, PolyCollection)]
    band = bands[0]  # a's euler line: 2.0 ± √2 at NFE 1, 0.6 ± √0.02 at NFE 4
    ys = sorted({round(float(y), 6) for y in band.get_paths()[0].vertices[:, 1]})
    assert ys == [round(v, 6) for v in sorted([2 - 2**0.5, 2 + 2**0.5, 0.6 - 0.02**0.5, 0.6 + 0.02**0.5])]


def write_results(folder, records):
    (folder / "records").mkdir(parents=True)
    for r in records:
        (folder / "records" / f"{r['key']}.json").write_text(json.dumps(r))


def test_the_report_shows_the_table_and_links_the_plot(tmp_path):
    write_results(tmp_path, SWEEP)
    path = report.write_report(tmp_path)
    text = path.read_text()
    assert "## Quality at NFE" in text and "### moons: w2 ↓ at each NFE" in text
    assert "| adaptive (dopri5)" in " ".join(text.split())
    assert "![w2 against NFE](quality_vs_nfe.png)" in text and "mean ± one sample standard deviation" in text
    assert (path.parent / "quality_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_section_without_an_nfe_sweep(tmp_path):
    write_results(tmp_path, [record("a", "euler-4", 0, 1.0, 4.0), record("b", "euler-4", 0, 2.0, 4.0)])
    path = report.write_report(tmp_path)
    assert "Quality at NFE" not in path.read_text() and not (path.parent / "quality_vs_nfe.png").exists()
