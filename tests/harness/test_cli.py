"""The CLI start-up path stays light, and list/validate work on the shipped specs."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT, SPECS, run_cli


def test_help_does_not_import_torch():
    code = ("import sys\nfrom harness.cli import _parser\n"
            "try:\n    _parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import on --help'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "leaderboard" in result.stdout


def test_validate_every_shipped_spec():
    paths = sorted(str(p) for p in SPECS.glob("*/*.yaml"))
    result = run_cli("validate", *paths)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(paths)


def test_validate_and_spec_errors_do_not_execute_torch():
    """Reading specs needs only the pydantic models: torch (and the other heavy libraries)
    load when a run trains or samples, not for ``validate`` or ``list`` of spec folders."""
    code = ("import sys, glob\nfrom harness.cli import main\nfrom harness.lazy import is_loaded\n"
            "assert main(['validate', *sorted(glob.glob('specs/*/*.yaml'))]) == 0\n"
            "assert main(['validate', 'specs/suites/quickstart.yaml', '--set', 'methods.icfm.network.width=0']) == 2\n"
            "assert main(['list', 'methods']) == 0\n"
            "heavy = [m for m in ('torch', 'torchdiffeq', 'ot', 'scipy', 'pandas', 'matplotlib') if is_loaded(m)]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert "specs/suites/quickstart.yaml: ok (suite 'quickstart')" in result.stdout
    assert "network.width: " in result.stderr


def test_list_methods_and_metrics():
    methods = run_cli("list", "methods")
    assert methods.returncode == 0
    assert "icfm" in methods.stdout and "[cfm]" in methods.stdout
    metrics = run_cli("list", "metrics")
    assert "w2" in metrics.stdout and "latency (ms) ↓" in metrics.stdout


def test_leaderboard_of_a_missing_directory_is_a_user_error(tmp_path):
    result = run_cli("leaderboard", str(tmp_path / "none"))
    assert result.returncode == 2 and "no records folder" in result.stderr and "Traceback" not in result.stderr


def test_report_writes_markdown_and_plots(tmp_path):
    out = tmp_path / "r"
    run = run_cli("run", "quickstart", "--results", str(out), "--no-progress", "--set", "datasets=[moons]",
                  "--set", "methods=[icfm]", "--set", "samplers=[euler-1, heun-8]", "--set", "budget.train.steps=20",
                  "--set", "budget.eval.num_samples=200", "--set", "budget.eval.repeats=1")
    assert run.returncode == 0, run.stderr
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    report = (out / "report" / "report.md").read_text()
    assert "### moons" in report and "![w2 against nfe](quality_vs_cost.png)" in report
    setup = report.split("## Set-up")[1]  # what produced the tables, after them
    assert "**Suite** `quickstart`" in setup and "steps=20;" in setup and "**Hardware spec** `cpu`" in setup
    assert "torch " in setup and "commit " in setup and "(clean)" in setup or "(tree differed" in setup
    assert "| icfm " in setup and "path.sigma=0.1" in setup and "optimizer.lr=0.001" in setup and "batch_size=256" in setup
    assert "| euler-1 " in setup and "steps=1" in setup
    assert "Grey segments join 64 source points" in report  # the samples figure explained
    assert "![w2 by method and seed](w2_by_method.png)" in report and "(samples.png)" in report
    for png in ("quality_vs_cost.png", "loss_curves.png", "w2_by_method.png", "samples.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A fresh clone has the records but not samples/ (not committed): the rest of the report stands.
    import shutil

    shutil.rmtree(out / "samples")
    (out / "report" / "samples.png").unlink()
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    assert "(samples.png)" not in (out / "report" / "report.md").read_text()
    assert (out / "report" / "w2_by_method.png").is_file()


def test_validate_goes_on_through_every_file(tmp_path):
    bad_1 = tmp_path / "specs" / "methods" / "bad1.yaml"
    bad_1.parent.mkdir(parents=True)
    bad_1.write_text("implementation: cfm\nbatch_size: 0\n")
    bad_2 = bad_1.with_name("bad2.yaml")
    bad_2.write_text("implementation: cfn\n")
    good = SPECS / "methods" / "icfm.yaml"
    result = run_cli("validate", str(bad_1), str(good), str(bad_2))
    assert result.returncode == 2
    assert result.stdout.strip().endswith("icfm.yaml: ok (method 'icfm')")
    err = result.stderr.strip().splitlines()
    assert len(err) == 3 and err[-1] == "2 of 3 files have errors"
    assert err[0].endswith("bad1.yaml:2: batch_size: must be >= 1, got 0") and "unknown method 'cfn'" in err[1]


def test_validate_prints_every_error_of_a_file_one_per_line_in_line_order(tmp_path):
    bad = tmp_path / "specs" / "suites" / "s.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("name: s\nmethods: [icfm]\nbudget: {train: {stepz: 1}}\nseeds: [a]\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert [line.split(": ", 1)[1] for line in result.stderr.strip().splitlines()] == [
        "datasets: required key is missing", "samplers: required key is missing",
        "budget.train.stepz: unknown key 'stepz'; did you mean 'steps'?", "seeds[0]: expected an integer, got 'a'"]
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in result.stderr.strip().splitlines()] == [
        "1", "1", "3", "4"]
    run = run_cli("--specs", str(tmp_path / "specs"), "run", str(bad), "--results", str(tmp_path / "out"))
    assert run.returncode == 2 and run.stderr.strip().endswith("(and 3 more errors)")  # run: one line


def test_a_specs_kind_comes_from_its_folder_else_from_its_keys(tmp_path):
    """A method spec kept outside specs/methods/ is checked as a method, not as a suite."""
    (tmp_path / "mine.yaml").write_text("implementation: cfm\nbatch_size: 64\nnetwork: {name: mlp, width: 32}\n")
    (tmp_path / "euler-3.yaml").write_text("solver: euler\nparams: {steps: 3}\n")
    (tmp_path / "two.yaml").write_text("extends: moons\nparams: {train_size: 100}\n")
    (tmp_path / "odd.yaml").write_text("foo: 1\n")
    result = run_cli("validate", *(str(tmp_path / f) for f in ("mine.yaml", "euler-3.yaml", "two.yaml", "odd.yaml")))
    assert result.stdout.splitlines() == [f"{tmp_path / 'mine.yaml'}: ok (method 'mine')",
                                          f"{tmp_path / 'euler-3.yaml'}: ok (sampler 'euler-3')",
                                          f"{tmp_path / 'two.yaml'}: ok (dataset 'two')"]
    assert "odd.yaml:1: cannot tell which kind of spec this is" in result.stderr and result.returncode == 2
    forced = run_cli("validate", "--kind", "methods", str(tmp_path / "odd.yaml"))
    assert "odd.yaml:1: implementation: required key is missing" in forced.stderr


def test_list_params_reads_the_pydantic_models():
    cfm = run_cli("list", "params", "cfm")
    assert cfm.returncode == 0, cfm.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in cfm.stdout.splitlines() if line.startswith("| ")}
    assert rows["coupling"] == ["one of independent, exact_ot, sinkhorn, gibbs", "independent", ""]
    assert rows["coupling[sinkhorn].reg"] == ["number > 0 or null", "null", "None: 2σ² of the method's path (SB-CFM)"]
    assert rows["path[linear].sigma"][:2] == ["number ≥ 0", "0.0"]
    assert "batch_size: 256" in cfm.stdout and "network: {name: mlp}" in cfm.stdout
    mlp = run_cli("list", "params", "mlp").stdout
    assert "| depth" in mlp and "integer ≥ 1, ≤ 1024" in mlp and "hidden layers" in mlp
    assert "(no parameters)" in run_cli("list", "params", "w2").stdout
    typo = run_cli("list", "params", "cfn")
    assert typo.returncode == 2 and "nothing is registered as 'cfn'; did you mean 'cfm'?" in typo.stderr
    assert run_cli("list", "methods", "cfm").returncode == 2


def test_show_prints_a_spec_resolved_with_its_defaults(tmp_path):
    import yaml

    shown = run_cli("show", "icfm", "--set", "optimizer.lr=0.02")
    assert shown.returncode == 0, shown.stderr
    spec = yaml.safe_load(shown.stdout)
    assert spec["params"]["path"] == {"name": "linear", "sigma": 0.1}  # from the file
    assert spec["params"]["loss"] == {"name": "mse", "reduce": "mean"}  # a default the file does not state
    assert spec["network"]["depth"] == 3 and spec["optimizer"]["lr"] == 0.02 and spec["batch_size"] == 256
    suite = yaml.safe_load(run_cli("show", "quickstart").stdout)
    assert suite["methods"][0]["name"] == "icfm" and suite["budget"]["train"]["steps"] == 3000
    missing = run_cli("show", "icmf")
    assert missing.returncode == 2 and "no spec named 'icmf'" in missing.stderr and "did you mean 'icfm'" in missing.stderr


def test_samples_figure_draws_the_target_once_per_dataset(tmp_path, monkeypatch):
    """One row per (dataset, sampler); the first column holds the target and the source in
    the first row of each dataset only, and the figure carries its explanation."""
    import numpy as np

    from harness import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path, dpi: figures.append(fig))
    rng = np.random.default_rng(0)
    records = []
    for dataset in ("a", "b"):
        for sampler in ("euler-1", "euler-8", "dopri5"):
            name = f"samples/{dataset}-{sampler}.npz"
            (tmp_path / "samples").mkdir(exist_ok=True)
            np.savez(tmp_path / name, **{k: rng.normal(size=(50, 2)) for k in ("source", "samples", "reference")})
            records.append({"dataset": dataset, "sampler": sampler, "method": "m", "seed": 0, "status": "ok",
                            "artefacts": {"points": name}})
    assert report.plot_samples(records, tmp_path, tmp_path / "s.png", sampler_order=["euler-1", "euler-8", "dopri5"])
    (fig,) = figures
    first_column = [ax for ax in fig.axes if ax.get_subplotspec().colspan.start == 0]
    drawn = [ax.get_title() for ax in first_column if ax.axison]
    assert drawn == ["a\ntarget and source", "b\ntarget and source"]
    rows = [ax.get_title().split("\n")[1].split(",")[0] for ax in fig.axes if ax.get_subplotspec().colspan.start == 1]
    assert rows == ["euler-1", "euler-8", "dopri5"] * 2  # the suite's sampler order
    assert any("Grey segments join 64 source points" in " ".join(t.get_text().split()) for t in fig.texts)
