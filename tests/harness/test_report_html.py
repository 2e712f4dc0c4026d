"""report.html: the report as one self-contained page (plots inline), every string from a
spec or record escaped, with the claims' verdicts and tests, the environment and the
command that reproduces each run; rendered in a real headless browser where chromium is
installed (``sh tests/install-browser.sh``, which ``make test`` runs once)."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from harness import htmldoc as h
from harness import report
from harness.claims import VERDICTS

SCRIPT = "<script>alert(1)</script>"
INJECTED = "<script>window.__injected = true; document.title = 'injected'</script>"
SUITE_DESCRIPTION = f"Tiny & quick {SCRIPT}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
METHODS, SAMPLERS, SEEDS = ("a", "b"), ("euler-1", "euler-4"), (0, 1, 2)


def tiny_results(folder: Path, name: str = "tiny") -> Path:
    """A results folder as `flowgauge run` leaves it, small enough to report in a second:
    moons, methods a and b under two Euler samplers, three seeds, 2-D samples, loss curves,
    latencies, a claim, and strings with markup in the suite, a method, a claim and the
    environment."""
    rng = np.random.default_rng(0)
    (folder / "records").mkdir(parents=True)
    (folder / "samples").mkdir()
    keys = []
    for method in METHODS:
        for sampler in SAMPLERS:
            nfe = int(sampler.split("-")[1])
            for seed in SEEDS:
                key = f"{method}-{sampler}-{seed}"
                points = f"samples/{key}.npz"
                np.savez(folder / points, source=rng.normal(size=(40, 2)), samples=rng.normal(size=(40, 2)) + 2,
                         reference=rng.normal(size=(40, 2)) + 2)
                w2 = (1.0 if method == "a" else 2.0) / nfe + (0.01 if method == "a" else 0.013) * seed
                record = {
                    "key": key, "train_key": f"{method}-{seed}", "dataset": "moons", "method": method,
                    "sampler": sampler, "seed": seed, "status": "ok", "suite": name,
                    "metrics": {"w2": w2, "nfe": float(nfe), "latency": 0.5 * nfe * (1 if method == "a" else 3)},
                    "measurements": {"nfe": float(nfe), "nfe_convention": "N"},
                    "train": {"steps": 41, "train_s": 2.0, "steps_per_s": 20.0,
                              "loss_curve": [[0, 1.0], [20, 0.5], [40, 0.25 + 0.01 * seed]]},
                    "artefacts": {"points": points},
                    "environment": {"git_commit": COMMIT, "git_dirty": method == "b",
                                    "git_dirty_files": ["harness/x.py"] if method == "b" else [],
                                    "python": "3.11.7", "cpu": "<b>CPU</b> & co", "cpu_count": 2, "device": "cpu"},
                }
                (folder / "records" / f"{key}.json").write_text(json.dumps(record))
                keys.append(key)
    method_specs = [{"name": m, "implementation": "flow_matching", "params": {"sigma": 0.0},
                     "description": INJECTED if m == "a" else "plain & simple", "claims": []} for m in METHODS]
    suite = {
        "name": name, "description": SUITE_DESCRIPTION, "seeds": list(SEEDS),
        "budget": {"train": {"steps": 40}, "eval": {"num_samples": 40}},
        "hardware": {"name": "cpu-1thread", "device": "cpu", "description": "CPU"},
        "metrics": [{"name": "w2", "params": {}}, {"name": "nfe", "params": {}}, {"name": "latency", "params": {}}],
        "leaderboard": {"rank_by": "w2", "columns": None, "precision": 4},
        "datasets": [{"name": "moons", "implementation": "toy2d", "params": {}, "description": "two moons"}],
        "methods": method_specs,
        "samplers": [{"name": s, "solver": "euler", "params": {"steps": int(s.split("-")[1])}, "description": s}
                     for s in SAMPLERS],
        "claims": [{"dataset": "moons", "relation": "w2(a@euler-4) < w2(b@euler-4)", "min_seeds": 3,
                    "source": {"paper": f"Someone {SCRIPT} & al.", "table": "Table 1"}}],
    }
    (folder / "suite.json").write_text(json.dumps({"schema": 1, "suite": suite, "records": keys}))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The report of :func:`tiny_results`: (the report.html path, its text)."""
    results = tiny_results(tmp_path_factory.mktemp("html") / "tiny")
    report.write_report(results)
    page = results / "report" / "report.html"
    return page, page.read_text(encoding="utf-8")


class Page(HTMLParser):
    """What a page holds: every element's attributes, and each table's body rows (cells as
    text) by the table's class."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs).get("class") or ""
            self.tables.setdefault(self._table, [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_every_string_from_a_spec_or_record_is_escaped(built):
    _, text = built
    assert "<script" not in text.lower()  # the page has no script at all: the spec's show as text
    assert html.escape(SUITE_DESCRIPTION) in text  # "Tiny &amp; quick &lt;script&gt;alert(1)&lt;/script&gt;"
    assert html.escape(INJECTED) in text and html.escape("<b>CPU</b> & co") in text
    assert html.escape(f"Someone {SCRIPT} & al.") in text
    assert "<b>" not in text


def test_the_page_is_self_contained(built):
    page, text = built
    elements = Page(text).elements
    sources = [attrs["src"] for _, attrs in elements if "src" in attrs]
    figures = sorted(p.name for p in page.parent.glob("*.png"))
    assert len(sources) == len(figures) >= 5  # by method, against NFE, latency, NFE sweep, samples, loss
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not [(tag, attrs) for tag, attrs in elements if tag in ("link", "script", "iframe", "object", "embed")
                or {"href", "srcset", "action", "style"} & set(attrs)]
    csp = [attrs["content"] for tag, attrs in elements if attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [h.CSP]


def test_the_leaderboard_claims_setup_and_reproduce_tables(built):
    _, text = built
    tables = Page(text).tables
    board = tables["leaderboard"]
    assert sorted((row[1], row[2]) for row in board) == [(m, s) for m in METHODS for s in SAMPLERS]
    assert board[0][:4] == ["1", "a", "euler-4", "3"]  # best w2 first
    (claim,) = tables["claims"]
    assert claim[1] == "w2(a@euler-4) < w2(b@euler-4)"
    assert claim[3].startswith("reproduced") and claim[3].split(" (")[0] in VERDICTS
    assert "t" in claim[4] and claim[4] != "—"  # the test behind the verdict
    assert claim[5] == f"Someone {SCRIPT} & al., Table 1"
    methods = tables["setup-methods"]
    assert [row[0] for row in methods] == list(METHODS) and methods[0][2] == INJECTED
    assert len(tables["nfe"]) == 2  # one row per method: both were sampled at NFE 1 and 4
    runs = {row[0]: row for row in tables["reproduce"]}
    assert sorted(runs) == [f"moons/{m}/seed{s}" for m in METHODS for s in SEEDS]
    command = runs["moons/a/seed1"][3]
    assert command == f"git checkout {COMMIT} && flowgauge run tiny --only moons/a/seed1 --rerun --results {command.split()[-1]}"
    assert command.split()[-1].endswith("tiny")
    assert runs["moons/a/seed1"][1:3] == ["2", COMMIT[:12]] and "dirty tree: harness/x.py" in runs["moons/b/seed0"][2]
    environment = {row[0]: row[1] for row in tables["environment"]}
    assert environment["git_commit"] == COMMIT and environment["git_dirty"] == "False (6 records); True (6 records)"


def test_report_md_gains_the_latency_pareto_plot(built):
    page, _ = built
    text = (page.parent / "report.md").read_text()
    assert "![w2 against latency, with the Pareto front](quality_vs_latency.png)" in text
    assert "![w2 against nfe](quality_vs_cost.png)" in text and "## Set-up" in text


def test_the_reproduce_command_keeps_the_suite_file_and_the_overrides(tmp_path):
    results = tiny_results(tmp_path / "tiny")
    document = json.loads((results / "suite.json").read_text())
    document["origin"] = {"suite": "/tmp/worktree/specs/suites/tiny.yaml", "specs": None,
                          "overrides": ["budget.train.steps=100", "methods.a.params.sigma=0.1 "]}
    (results / "suite.json").write_text(json.dumps(document))
    records = [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))]
    runs = report.reproductions(results, records, document["suite"])
    assert runs[0].run == "moons/a/seed0" and runs[0].records == 2
    assert runs[0].command == (f"git checkout {COMMIT} && flowgauge run specs/suites/tiny.yaml --set "
                               "budget.train.steps=100 --set 'methods.a.params.sigma=0.1 ' --only moons/a/seed0 "
                               f"--rerun --results {results}")
    document["origin"] = {"suite": "tiny", "specs": "/elsewhere/my-specs", "overrides": []}
    (results / "suite.json").write_text(json.dumps(document))
    command = report.reproductions(results, records, document["suite"])[0].command
    assert command.startswith(f"git checkout {COMMIT} && flowgauge --specs /elsewhere/my-specs run tiny --only")


def test_two_result_sets_side_by_side(tmp_path):
    left, right = tiny_results(tmp_path / "left", "left"), tiny_results(tmp_path / "right", "right")
    out = report.write_html_comparison(left, right, tmp_path / "compare.html", [h.Paragraph("1 regression <b>")])
    text = out.read_text()
    assert text.count('<div class="column">') == 2 and "<title>left vs right</title>" in text
    assert text.index("<p>1 regression &lt;b&gt;</p>") < text.index('<div class="columns"')
    assert "<script" not in text.lower()
    assert len(Page(text).tables["leaderboard"]) == 2 * len(METHODS) * len(SAMPLERS)


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1.0, 5.0), (2.0, 3.0), (2.5, 3.5), (4.0, 1.0), (4.0, 2.0), (8.0, 1.0)]
    assert report.pareto_front(points, "w2") == [0, 1, 3]  # lower w2 is better
    assert report.pareto_front([(1.0, 0.2), (2.0, 0.9), (3.0, 0.5)], "throughput") == [0, 1]  # higher is better


def test_blocks_escape_by_construction_and_check_their_input():
    page = h.document("<m1>", [h.Heading(["x ", h.Code("<m2>")]), h.Paragraph(h.Strong("a & b")),
                               h.Table(["<m3>"], [["<m4>"]], caption="<m5>", align="r"),
                               h.Details("<m6>", [h.Preformatted("<m7>")]), h.BulletList(["<m8>"])])
    for i in range(1, 9):
        assert f"<m{i}>" not in page and f"&lt;m{i}&gt;" in page
    assert "<strong>a &amp; b</strong>" in page and '<td class="right">&lt;m4&gt;</td>' in page
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        h.Table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="align needs one of l, r, c per column"):
        h.Table(["a"], [["1"]], align="x")
    with pytest.raises(ValueError, match="image type must be one of"):
        h.Image(b"<svg onload=alert(1)>", "svg", mime="image/svg+xml")
    with pytest.raises(ValueError, match="image data is not image/png"):
        h.Image(b"<html>", "fake")
    with pytest.raises(ValueError, match="a CSS class name"):
        h.Table(["a"], [], cls='x" onclick="y')


# The browser ---------------------------------------------------------------------------

# Run first: an alert() from an injected script would block the headless browser; here it
# only marks the injection.
PRELUDE = """<script>window.alert = function () { window.__injected = true; };</script>"""

# Run once the page and its images have loaded (synchronously: the browser dumps the page
# right after its load event): what a reader would see, as JSON in a <pre>. Each image is
# drawn on a canvas to count its opaque pixels: matplotlib's figures have an opaque
# background, so a PNG that did not decode to its end has transparent rows.
PROBE = """<script>
window.addEventListener("load", function () {
  var report = {
    title: document.title,
    injected: window.__injected === true,
    scripts: document.scripts.length,
    images: Array.from(document.images).map(function (image) {
      var canvas = document.createElement("canvas");
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      var opaque = 0, pixels = 0;
      if (canvas.width > 0 && canvas.height > 0) {
        var context = canvas.getContext("2d");
        context.drawImage(image, 0, 0);
        var data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        pixels = data.length / 4;
        for (var p = 3; p < data.length; p += 4) { if (data[p] === 255) { opaque += 1; } }
      }
      return {complete: image.complete, width: image.naturalWidth, height: image.naturalHeight,
              opaque: pixels ? opaque / pixels : 0, shown: image.getBoundingClientRect().width};
    }),
    tables: Array.from(document.querySelectorAll("table")).map(function (t) {
      return [t.className, t.tBodies[0].rows.length, t.offsetWidth > 0]; }),
    text: document.body.innerText
  };
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium not found: install Debian's chromium (sudo apt-get install chromium, or "
                    "sh tests/install-browser.sh, which make test runs once) to render report.html in a browser")
    return found


def test_the_page_renders_in_a_headless_browser(built, tmp_path):
    """Chromium loads a copy of the page with a probe script added (and the page's
    script-forbidding policy removed, so that only the escaping stands between the spec's
    script and its running): the images decoded, the tables have their rows, and the
    spec's <script> is text on the page, not run."""
    browser = chromium()
    page, text = built
    policy = f'<meta http-equiv="Content-Security-Policy" content="{h.CSP}">\n'
    assert policy in text
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace(policy, PRELUDE + "\n").replace("</body>", PROBE + "\n</body>"),
                      encoding="utf-8")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
               probed.as_uri()]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    start = done.stdout.find('<pre id="probe">')
    assert start >= 0, f"the probe did not run; chromium printed:\n{done.stdout[:2000]}\n{done.stderr[-2000:]}"
    probe = json.loads(html.unescape(done.stdout[start + len('<pre id="probe">'):done.stdout.index("</pre>", start)]))
    assert probe["title"] == "tiny" and not probe["injected"] and probe["scripts"] == 2  # the test's own
    figures = sorted(page.parent.glob("*.png"))
    assert len(probe["images"]) == len(figures)
    for image in probe["images"]:  # decoded, to the last row, and laid out
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert image["opaque"] == 1 and image["shown"] > 0, image
    rows = {name: (n, visible) for name, n, visible in probe["tables"]}
    assert rows["leaderboard"] == (len(METHODS) * len(SAMPLERS), True)
    assert rows["claims"] == (1, True) and rows["nfe"] == (2, True)
    assert rows["reproduce"] == (len(METHODS) * len(SEEDS), True)
    assert rows["setup-methods"][0] == len(METHODS)
    assert SCRIPT in probe["text"] and INJECTED in probe["text"]  # shown as the characters they are


def test_a_large_png_is_inlined_with_a_palette(tmp_path):
    """A plot PNG over 1 MiB (a grid of many sample scatters) is inlined as a 256-colour
    palette PNG of the same size in pixels, and smaller."""
    import io

    import numpy as np
    from PIL import Image as PILImage

    from harness import htmldoc

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)  # few colours, as a plot has
    pixels = colours[rng.integers(0, 40, size=(900, 900))]
    path = tmp_path / "big.png"
    PILImage.fromarray(pixels, "RGB").save(path, format="PNG", compress_level=0)
    assert path.stat().st_size > htmldoc.PALETTE_ABOVE
    image = htmldoc.Image.from_file(path, "big")
    assert len(image.data) < path.stat().st_size
    with PILImage.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (900, 900) and decoded.mode == "P"
        assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)  # 40 colours: lossless
