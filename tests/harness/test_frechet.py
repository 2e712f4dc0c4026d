"""Fréchet distance and streaming feature statistics: exact on Gaussians with commuting
covariances, equal to the scipy ``sqrtm`` route and to clean-fid's and torchmetrics' own
functions given the same statistics, and shards that merge to one pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.frechet import FeatureStats, Reference, check_sample_size, frechet_distance, psd_sqrt


def random_cov(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or 2 * d))
    return a @ a.T / (rank or 2 * d)


def scipy_route(mu1, s1, mu2, s2) -> float:
    """The textbook computation: sqrtm of the (non-symmetric) product."""
    from scipy.linalg import sqrtm

    covmean = sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_commuting_covariances_give_the_closed_form():
    """Diagonal Σ₁ = diag(a), Σ₂ = diag(b): d² = ‖Δμ‖² + Σ (√a − √b)²."""
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1.0 + 4.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 5 + (1 + 1 + 0 + 0.25)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(7.25)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("d, rank", [(8, None), (64, None), (64, 16)])  # full rank and singular
def test_equals_the_scipy_sqrtm_route(d, rank):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d, rank), random_cov(rng, d, rank)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_route(mu1, s1, mu2, s2), rel=1e-8)
    reference = Reference(mu1, s1)
    assert reference.distance(mu2, s2) == pytest.approx(ours, rel=1e-12)  # the cached root gives the same
    assert reference.distance(mu2, s2) == reference.distance(mu2, s2)
    assert psd_sqrt(s1) @ psd_sqrt(s1) == pytest.approx(s1, abs=1e-10)


def test_equals_clean_fid_and_torchmetrics_given_the_same_statistics():
    cleanfid = pytest.importorskip("cleanfid.fid", reason="clean-fid is an optional dependency (fid extra)")
    tm = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics is an optional dependency (fid extra)")
    import torch

    rng = np.random.default_rng(3)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(float(cleanfid.frechet_distance(mu1, s1, mu2, s2)), rel=1e-8)
    theirs = tm._compute_fid(*(torch.as_tensor(v, dtype=torch.float64) for v in (mu1, s1, mu2, s2)))
    assert ours == pytest.approx(float(theirs), rel=1e-8)


def test_equals_clean_fid_and_torchmetrics_given_the_same_features():
    """From feature vectors to the number, as ``fid`` computes it (streamed statistics, the
    sample-size guard, the cached reference root), against clean-fid's ``fid_from_feats``
    and torchmetrics' FrechetInceptionDistance fed the same vectors (its feature network
    replaced by the identity), both libraries' own statistics included."""
    cleanfid = pytest.importorskip("cleanfid.fid", reason="clean-fid is an optional dependency (fid extra)")
    tm = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics is an optional dependency (fid extra)")
    import torch

    from harness.features import pair_of
    from harness.metrics import frechet_of

    rng = np.random.default_rng(4)
    d = 24
    generated = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) + 0.5
    reference = rng.normal(size=(250, d)) @ rng.normal(size=(d, d))
    ours = frechet_of(pair_of(generated, reference), "fid")

    class Identity(torch.nn.Module):
        num_features = d

        def forward(self, x):
            return x

    theirs = tm.FrechetInceptionDistance(feature=Identity())
    theirs.update(torch.as_tensor(generated), real=False)
    theirs.update(torch.as_tensor(reference), real=True)
    assert ours == pytest.approx(float(cleanfid.fid_from_feats(generated, reference)), rel=1e-9)
    assert ours == pytest.approx(float(theirs.compute()), rel=1e-7)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), shift=st.sampled_from([0.0, 1e4]))
def test_shards_merged_equal_one_pass(sizes, shift):
    """However the features are split into shards (some empty), merging their statistics
    gives those of one pass over all of them, to float64 round-off, also far from 0."""
    rng = np.random.default_rng(len(sizes))
    x = rng.normal(size=(sum(sizes) + 2, 5)) * [1, 2, 3, 0.1, 10] + shift
    whole = FeatureStats(5).update(x)
    merged = FeatureStats(5)
    start = 0
    for size in [*sizes, 2]:
        merged.merge(FeatureStats.from_state(FeatureStats(5).update(x[start:start + size]).state()))
        start += size
    mu, cov = merged.result()
    assert merged.n == len(x)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12, atol=1e-12 * (1 + shift))
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cov, whole.result()[1], rtol=1e-9, atol=1e-9)


def test_bad_features_and_too_few_samples_are_refused():
    stats = FeatureStats(3)
    with pytest.raises(ValueError, match=r"expected features of shape \(batch, 3\), got \(4, 2\)"):
        stats.update(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="1 of 2 feature vectors are not finite"):
        stats.update(np.array([[0.0, 1.0, 2.0], [np.nan, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 0"):
        stats.result()
    with pytest.raises(ValueError, match="generated: 2048 feature vectors for 2048 feature dimensions"):
        check_sample_size(2048, 2048, "generated")
    check_sample_size(2049, 2048, "generated")
    import torch

    assert FeatureStats(3).update(torch.ones(4, 3, dtype=torch.float16)).n == 4  # tensors in, float64 inside
