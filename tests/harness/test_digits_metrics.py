"""fd_digits and kid_digits: the shipped classifier is the one its card describes, the
distances order real < model-free noise, KID equals clean-fid's kernel distance where
both use every point, and every value carries its provenance into the record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness import digits_features
from harness.features import pair_of
from harness.metrics import EvalContext, NoParams, kernel_inception_distance
from harness.registry import DATASETS, METRICS


@pytest.fixture(scope="module")
def digits():
    cls = DATASETS.get("digits")
    return cls(cls.Params())


def flat(images: torch.Tensor) -> np.ndarray:
    return images.reshape(len(images), -1).double().numpy()


def test_the_shipped_classifier_is_the_one_its_card_describes(digits):
    net, card = digits_features.load()
    assert digits_features.sha256(digits_features.WEIGHTS) == card["sha256"]
    with torch.no_grad():
        accuracy = (net(digits.held_out_images).argmax(1) == digits.held_out_labels).float().mean().item()
    assert accuracy == pytest.approx(card["held_out_accuracy"], abs=1e-12) and accuracy > 0.97


@pytest.mark.slow
def test_the_training_script_reproduces_the_card():
    import sys

    from tests.conftest import PROJECT

    sys.path.insert(0, str(PROJECT / "scripts"))
    import train_digits_classifier

    _, _, held_out_accuracy = train_digits_classifier.train()
    assert held_out_accuracy == pytest.approx(digits_features.load()[1]["held_out_accuracy"], abs=0.01)


def _fd(samples: np.ndarray, reference: np.ndarray, shape=(1, 8, 8)) -> float:
    extract = digits_features.DigitsExtractor({})
    as_images = lambda x: torch.as_tensor(x, dtype=torch.float32).reshape(len(x), *shape)  # noqa: E731
    pair = pair_of(extract(as_images(samples)), extract(as_images(reference)))
    return METRICS.get("fd_digits").fn(EvalContext(feature=pair), NoParams())


def test_real_digits_score_far_below_noise_and_identical_sets_score_zero(digits):
    reference = flat(digits.sample_target(300, torch.Generator().manual_seed(1)))
    train = digits.train_split(None)
    real = flat(train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:300]])
    noise = np.random.default_rng(0).normal(size=(300, 64))
    assert _fd(reference, reference) == pytest.approx(0.0, abs=1e-6)
    floor, worst = _fd(real, reference), _fd(noise, reference)
    assert 5 < floor < 60 and worst > 300  # measured: 19.7 and 610
    with pytest.raises(ValueError, match=r"digit images of shape \(1, 8, 8\).*this dataset's are \(2,\)"):
        _fd(noise[:, :2], noise[:, :2], shape=(2,))
    with pytest.raises(ValueError, match="fd_digits, generated: 40 feature vectors for 64 feature dimensions"):
        _fd(reference[:40], reference)


def test_the_feature_network_runs_in_eval_mode():
    extractor = digits_features.DigitsExtractor({})
    assert not extractor.net.training and not any(m.training for m in extractor.net.modules())


def test_kid_equals_clean_fids_kernel_distance_on_whole_samples():
    cleanfid = pytest.importorskip("cleanfid.fid", reason="clean-fid is an optional dependency (fid extra)")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(60, 8)) + 0.3
    # Subsets of every point of the smaller sample: both sides compute the one unbiased MMD².
    ours = kernel_inception_distance(x[:50], y[:50], subsets=3, subset_size=50)
    theirs = cleanfid.kernel_distance(x[:50], y[:50], num_subsets=3, max_subset_size=50)
    assert ours == pytest.approx(theirs, rel=1e-10)
    # Unbiased: a sample against itself scores below 0 (the cross term keeps k(x_i, x_i)).
    assert kernel_inception_distance(x, x, 5, 50) < 0 < ours


def test_a_digits_run_records_each_values_provenance(tmp_path):
    from harness.results import read_records
    from tests.conftest import run_cli

    out = tmp_path / "r"
    result = run_cli("run", "digits-quick", "--results", str(out), "--no-progress", "--set", "budget.train.steps=20",
                     "--set", "budget.eval.num_samples=100", "--set", "budget.eval.repeats=1",
                     "--set", "samplers=[euler-1]", "--set", "metrics=[fd_digits, kid_digits]",
                     "--set", "methods=[{extends: icfm, name: icfm-digits}]")
    assert result.returncode == 0, result.stderr
    (record,) = read_records(out)
    provenance = record["measurements"]["provenance"]
    card = digits_features.load()[1]
    assert provenance["fd_digits"]["weights_sha256"] == card["sha256"]
    assert provenance["fd_digits"]["generated"] == 100
    assert provenance["fd_digits"]["reference"] == len(DATASETS.get("digits")(DATASETS.get("digits").Params()).held_out_images)
    assert provenance["fd_digits"]["reference_split"] == "held_out" and len(provenance["fd_digits"]["reference_sha256"]) == 64
    assert provenance["kid_digits"]["params"] == {"subsets": 100, "subset_size": 1000}
    assert record["metrics"]["fd_digits"] > 0


def test_image_records_keep_a_png_grid_and_the_report_shows_it(tmp_path):
    from PIL import Image

    from harness.evaluation import image_grid
    from harness.results import read_records
    from tests.conftest import run_cli

    grid = image_grid(np.linspace(-1, 1, 5 * 64).reshape(5, 64), (1, 8, 8))
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1) and grid.dtype == np.uint8  # 5 images: 3 columns, 2 rows
    assert grid[1, 1] == 0 and grid[0, 0] == 255  # the first pixel of the first image is −1; the border white
    out = tmp_path / "r"
    run = run_cli("run", "digits-quick", "--results", str(out), "--no-progress", "--set", "budget.train.steps=10",
                  "--set", "budget.eval.num_samples=100", "--set", "budget.eval.repeats=1", "--set", "samplers=[euler-1]",
                  "--set", "metrics=[fd_digits]", "--set", "methods=[{extends: icfm, name: icfm-digits}]")
    assert run.returncode == 0, run.stderr
    (record,) = read_records(out)
    with Image.open(out / record["artefacts"]["grid"]) as png:
        assert png.size == (8 * 9 + 1, 8 * 9 + 1) and png.mode == "L"  # 64 digits of 8x8 in an 8x8 grid
    assert run_cli("report", str(out)).returncode == 0
    report = (out / "report" / "report.md").read_text()
    assert "![generated images](image_samples.png)" in report and (out / "report" / "image_samples.png").is_file()
