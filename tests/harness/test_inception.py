"""FID and KID through clean-fid and torchmetrics: the weights are found where they should be
and nowhere else, a missing file stops a run before anything runs with one line that names
it, the features are the libraries' own (their resize, their network call), and every value
carries its provenance.

The Inception weights are not on this machine. The networks below are STAND-INS that tests
make: a tiny TorchScript module with clean-fid's call signature, and torch-fidelity's
Inception-v3 architecture with random weights. Their numbers test our pipeline, not Inception.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness import inception
from harness.artefacts import ArtefactStore
from harness.building import build, configure
from harness.evaluation import evaluate
from harness.inception import (
    CLEANFID_WEIGHTS,
    TORCHMETRICS_WEIGHTS,
    CleanFIDExtractor,
    InceptionKIDParams,
    InceptionParams,
    TorchmetricsExtractor,
    WeightsNotFound,
    find_weights,
    inception_space,
    torch_hub_checkpoints,
)
from harness.plan import make_plan
from harness.registry import DATASETS
from harness.resolve import load_suite
from tests.conftest import PROJECT, SPECS, run_cli, run_cli_process

cleanfid = pytest.importorskip("cleanfid", reason="clean-fid is an optional dependency (fid extra)")


class StandInFeatures(nn.Module):
    """NOT Inception: 4×4 average pooling, a linear map to 2048 and a sine."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(3.0 * self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1)))


class StandInInception(nn.Module):
    """A STAND-IN for clean-fid's TorchScript ``inception-2015-12-05.pt``, with its call
    signature: ``layers`` takes 299×299 images in [−1, 1] (clean mode), the module itself
    images in [0, 255] of any size with ``return_features=True`` (legacy_tensorflow mode,
    where the real network resizes; this one only pools)."""

    def __init__(self):
        super().__init__()
        self.layers = StandInFeatures()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers((x - 128) / 128)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cleanfid_standin(tmp_path_factory) -> Path:
    """A folder holding the stand-in under clean-fid's file name."""
    folder = tmp_path_factory.mktemp("cleanfid-standin")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch >= 2.9
        torch.jit.script(StandInInception()).save(str(folder / CLEANFID_WEIGHTS.name))
    return folder


@pytest.fixture(scope="module")
def torchmetrics_standin(tmp_path_factory) -> Path:
    """A STAND-IN weights file for torchmetrics: torch-fidelity's Inception-v3 architecture
    (whose state dict torchmetrics loads strictly) with random weights, stored in float16."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    class Unloaded(fidelity.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    folder = tmp_path_factory.mktemp("torchmetrics-standin")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    net = Unloaded("stand-in", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth"))
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save(state, folder / TORCHMETRICS_WEIGHTS.name)
    return folder / TORCHMETRICS_WEIGHTS.name


@pytest.fixture(scope="module")
def digits():
    cls = DATASETS.get("digits")
    return cls(cls.Params())


def as_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """The conversion the backends are documented to receive, written out again here."""
    u8 = torch.round((images.double() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1).contiguous()


# --- where the weights are looked for ---------------------------------------------------------


@pytest.mark.parametrize("weights", [CLEANFID_WEIGHTS, TORCHMETRICS_WEIGHTS], ids=lambda w: w.backend)
def test_weights_are_found_in_the_option_then_the_environment_then_the_librarys_folder(weights, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setattr(inception, "CLEANFID_CACHE", tmp_path / "tmp")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(inception.ENV, raising=False)
    cache = weights.cache()[0] / weights.name
    option, env = tmp_path / "option" / weights.name, tmp_path / "env" / weights.name
    for path in (option, env, cache):
        path.parent.mkdir(parents=True)
        path.write_bytes(path.parent.name.encode())
    monkeypatch.setenv(inception.ENV, str(env.parent))
    assert find_weights(weights, str(option.parent)) == option  # a folder holding the file
    assert find_weights(weights, str(option)) == option  # the file itself
    assert find_weights(weights, None) == env
    monkeypatch.setenv(inception.ENV, str(env))  # the variable may name the file too
    assert find_weights(weights, None) == env
    monkeypatch.setenv(inception.ENV, str(tmp_path))  # a folder without the file: on to the library's
    assert find_weights(weights, None) == cache
    monkeypatch.delenv(inception.ENV)
    assert find_weights(weights, None) == cache
    with pytest.raises(WeightsNotFound, match="weights option"):  # a path that is given must be there
        find_weights(weights, str(tmp_path / "elsewhere"))
    cache.unlink()
    with pytest.raises(WeightsNotFound) as missing:
        find_weights(weights, None)
    message = str(missing.value)
    assert "\n" not in message and f"no file {weights.name}" in message and weights.url in message
    assert f"${inception.ENV} (not set)" in message and str(cache.parent) in message
    renamed = tmp_path / "renamed.bin"
    renamed.write_bytes(b"x")
    if weights.by_name:  # clean-fid loads by file name
        with pytest.raises(WeightsNotFound, match=f"rename or link it to .*{weights.name}"):
            find_weights(weights, str(renamed))
    else:
        assert find_weights(weights, str(renamed)) == renamed


def test_the_library_folders_file_names_and_urls_are_the_librarys_own(tmp_path, monkeypatch):
    import inspect

    from cleanfid import downloads_helper, features
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    assert CLEANFID_WEIGHTS.url == downloads_helper.inception_url
    assert CLEANFID_WEIGHTS.url.rsplit("/", 1)[1] == CLEANFID_WEIGHTS.name
    assert '"/tmp"' in inspect.getsource(features.feature_extractor) and inception.CLEANFID_CACHE == Path("/tmp")
    assert TORCHMETRICS_WEIGHTS.url == fidelity.URL_INCEPTION_V3
    assert TORCHMETRICS_WEIGHTS.url.rsplit("/", 1)[1] == TORCHMETRICS_WEIGHTS.name  # torch hub keeps the URL's name
    def torchs_own() -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints"

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert torch_hub_checkpoints() == torchs_own() == tmp_path / "th/hub/checkpoints"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert torch_hub_checkpoints() == torchs_own() == tmp_path / "xdg/torch/hub/checkpoints"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert torch_hub_checkpoints() == torchs_own() == tmp_path / "home/.cache/torch/hub/checkpoints"


def test_missing_weights_stop_a_run_before_anything_runs(tmp_path, monkeypatch):
    """``flowgauge run`` with fid and no weights: exit 2, one line naming the file, nothing written."""
    if (inception.CLEANFID_CACHE / CLEANFID_WEIGHTS.name).is_file():
        pytest.skip(f"this machine has {inception.CLEANFID_CACHE / CLEANFID_WEIGHTS.name}")
    monkeypatch.delenv(inception.ENV, raising=False)
    out = tmp_path / "results"
    result = run_cli_process("run", "digits-quick", "--results", str(out), "--no-progress",
                             "--set", "metrics=[fid]", "--set", "leaderboard.rank_by=fid")
    assert result.returncode == 2, result.stderr
    with pytest.raises(WeightsNotFound) as expected:
        find_weights(CLEANFID_WEIGHTS, None)
    assert result.stderr.strip().splitlines()[-1] == f"error: digits-quick: metric fid: {expected.value}"
    assert "no file inception-2015-12-05.pt in" in result.stderr and CLEANFID_WEIGHTS.url in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    # torchmetrics: the same check, in this process, names its own file and folder
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = run_cli("run", "digits-quick", "--results", str(out), "--set", "leaderboard.rank_by=kid",
                     "--set", "metrics=[{name: kid, params: {backend: torchmetrics}}]")
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert result.returncode == 2 and "no file weights-inception-2015-12-05-6726825d.pth in" in line
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in line and not out.exists()


def test_importing_the_module_imports_no_network_library():
    code = ("import harness.inception\nfrom harness.lazy import is_loaded\n"
            "heavy = [m for m in ('torch', 'cleanfid', 'torchmetrics', 'torch_fidelity') if is_loaded(m)]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr


# --- the features are the libraries' own ------------------------------------------------------


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_clean_fid_features_are_clean_fids_own(mode, cleanfid_standin, digits):
    """Our extractor gives what clean-fid's own in-memory path (get_model_features: its
    resizer, then its network call) gives on the same uint8 pixels, grey repeated to RGB."""
    from cleanfid.fid import get_model_features
    from cleanfid.inception_torchscript import InceptionV3W

    images = digits.held_out_images[:6]  # (6, 1, 8, 8) in [−1, 1]
    ours = CleanFIDExtractor({"mode": mode, "weights": str(cleanfid_standin)})(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = InceptionV3W(str(cleanfid_standin), download=False, resize_inside=mode == "legacy_tensorflow").eval()
    pixels = as_uint8_rgb(images).float()
    theirs = get_model_features(lambda z: pixels, model, mode=mode, z_dim=1, num_gen=6, batch_size=6,
                                device=torch.device("cpu"), verbose=False)
    assert ours.shape == (6, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert np.abs(ours).max() > 0.1 and not np.allclose(ours[0], ours[1])  # not a constant


def test_torchmetrics_features_are_torchmetrics_fids_own(torchmetrics_standin, digits):
    """Our extractor's features are the ones torchmetrics' FrechetInceptionDistance
    accumulates from the same uint8 images (its sums of features and of their products)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    images = digits.held_out_images[:2]
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(torchmetrics_standin))
    assert fid.inception.use_antialias  # torchmetrics' default
    for mode in ("antialias", "legacy_tensorflow"):
        ours = TorchmetricsExtractor({"mode": mode, "weights": str(torchmetrics_standin)})(images)
        fid.reset()
        fid.inception.use_antialias = mode == "antialias"  # what FrechetInceptionDistance(antialias=...) sets
        fid.update(as_uint8_rgb(images), real=True)
        assert ours.shape == (2, 2048) and np.abs(ours).max() > 0
        np.testing.assert_allclose(ours.sum(0), fid.real_features_sum.numpy(), rtol=1e-6, atol=0)
        np.testing.assert_allclose(ours.T @ ours, fid.real_features_cov_sum.numpy(), rtol=1e-6, atol=1e-30)


# --- metrics, end to end ----------------------------------------------------------------------


def test_fid_and_kid_read_one_feature_space_per_backend_mode_weights_and_split():
    fid, kid = InceptionParams(), InceptionKIDParams(subsets=3)
    assert inception_space(fid).key == inception_space(kid).key and inception_space(kid).keep
    assert inception_space(fid).space == "inception-cleanfid" and dict(inception_space(fid).options)["mode"] == "clean"
    assert InceptionParams(mode="clean") == fid and InceptionParams(backend="torchmetrics").mode == "antialias"
    assert InceptionParams.model_validate({"mode": None}) == fid  # the default, written out
    others = [InceptionParams(backend="torchmetrics"), InceptionParams(mode="legacy_tensorflow"),
              InceptionParams(reference_split="train"), InceptionParams(weights="/w")]
    assert len({inception_space(p).key for p in [fid, *others]}) == 5
    assert dict(inception_space(others[0]).options)["mode"] == "antialias"
    result = run_cli("validate", str(SPECS / "suites" / "digits-quick.yaml"),
                     "--set", "metrics=[{name: fid, params: {backend: torchmetrics, mode: clean}}]")
    assert result.returncode == 2 and "mode 'clean' is not a torchmetrics mode" in result.stderr


def test_kid_on_digits_runs_clean_fids_pipeline_and_records_its_provenance(tmp_path, cleanfid_standin):
    """``flowgauge run`` with kid on a stand-in network (given by the weights option): the
    plan-time check passes, digits are resized by clean-fid, and the record says how."""
    from harness.results import read_records

    out = tmp_path / "r"
    metric = f"{{name: kid, params: {{weights: {cleanfid_standin}, subsets: 10, subset_size: 50}}}}"
    result = run_cli("run", "digits-quick", "--results", str(out), "--no-progress", "--set", "budget.train.steps=5",
                     "--set", "budget.eval.num_samples=100", "--set", "budget.eval.repeats=1",
                     "--set", "samplers=[euler-1]", "--set", f"metrics=[{metric}]", "--set", "leaderboard.rank_by=kid",
                     "--set", "methods=[{extends: icfm, name: icfm-digits, network: {name: mlp, width: 32}}]")
    assert result.returncode == 0, result.stderr
    (record,) = read_records(out)
    assert np.isfinite(record["metrics"]["kid"])
    provenance = record["measurements"]["provenance"]["kid"]
    weights = cleanfid_standin / CLEANFID_WEIGHTS.name
    assert provenance["weights_sha256"] == sha256(weights) and provenance["weights_file"] == weights.name
    assert {k: provenance[k] for k in ("backend", "version", "mode", "feature_dim", "generated", "reference",
                                       "reference_split")} == {
        "backend": "clean-fid", "version": metadata.version("clean-fid"), "mode": "clean", "feature_dim": 2048,
        "generated": 100,
        "reference": len(DATASETS.get("digits")(DATASETS.get("digits").Params()).held_out_images),
        "reference_split": "held_out"}
    assert "PIL bicubic" in provenance["resize"] and "round((x + 1) * 127.5)" in provenance["input"]
    assert provenance["channels"] == "3 (RGB) as given; 1 (grey) repeated to 3"
    assert provenance["params"] == {"backend": "clean-fid", "mode": "clean", "weights": str(cleanfid_standin),
                                    "reference_split": "held_out", "subsets": 10, "subset_size": 50}
    assert len(provenance["reference_sha256"]) == 64
    (card,) = (out / "references").glob("*.json")
    assert json.loads(card.read_text())["extractor"]["weights_sha256"] == sha256(weights)


@pytest.mark.slow
def test_fid_end_to_end_on_a_stand_in_network(tmp_path, monkeypatch, cleanfid_standin):
    """FID needs more feature vectors than 2048 on each side, more than digits has: 2100
    synthetic MNIST images per split (the training split too: the evaluation's floor scores
    as many training images) and 2100 samples, legacy_tensorflow mode (no resize outside the
    network), weights from $FLOWGAUGE_INCEPTION_WEIGHTS. The reference statistics cached
    are those of the stand-in's features of the test images. Slow: each 2048-d
    eigendecomposition takes seconds on this project's machine (three here)."""
    from tests.datafiles import mnist_files

    arrays = mnist_files(tmp_path / "mnist", n_train=2050, n_test=2100)
    monkeypatch.setenv(inception.ENV, str(cleanfid_standin))
    metrics = "[{name: fid, params: {mode: legacy_tensorflow}}]"
    dataset = f"{{name: m, implementation: mnist, params: {{root: {tmp_path / 'mnist'}}}}}"
    suite = load_suite("digits-quick", [f"datasets=[{dataset}]", f"metrics={metrics}", "leaderboard.rank_by=fid",
                                        "methods=[{extends: icfm, name: icfm-m, network: {name: mlp, width: 16}}]",
                                        "samplers=[euler-1]", "budget.eval.num_samples=2100",
                                        "budget.eval.warmup=0", "budget.eval.repeats=1"], root=SPECS)
    plan = make_plan(suite)
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    store = ArtefactStore(tmp_path / "store")
    status, values, measurements, _ = evaluate(plan.evals[job.key][0], built, built.network, {}, store)
    assert status == "ok" and values["fid"] > 0
    provenance = measurements["provenance"]["fid"]
    weights = cleanfid_standin / CLEANFID_WEIGHTS.name
    assert provenance["weights_sha256"] == sha256(weights) and provenance["mode"] == "legacy_tensorflow"
    assert provenance["generated"] == provenance["reference"] == 2100
    assert "TensorFlow 1 bilinear" in provenance["resize"] and provenance["weights_file"] == weights.name
    (card,) = (tmp_path / "store" / "references").glob("*.json")
    assert json.loads(card.read_text())["extractor"]["weights_sha256"] == sha256(weights)
    with np.load(card.with_suffix(".npz")) as saved:
        mean = saved["mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(weights))
    pixels = torch.as_tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        direct = net(pixels, return_features=True).double().numpy()
    np.testing.assert_allclose(mean, direct.mean(0), rtol=0, atol=1e-6)
