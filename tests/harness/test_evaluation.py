"""Streaming evaluation: samples that do not depend on the batch size, accumulators whose
shards merge into what one pass gives, an interrupted evaluation that resumes from its
last finished shard, and reference statistics computed once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness.accumulators import Features, Points, Shard, Tally
from harness.artefacts import ArtefactStore
from harness.building import build, configure
from harness.evaluation import draw_blocks, evaluate
from harness.plan import make_plan
from harness.resolve import load_suite
from tests.conftest import SPECS


def _job(suite: str, overrides: list[str]):
    plan = make_plan(load_suite(suite, overrides, root=SPECS))
    job = plan.trainings[0]
    built = build(job, configure(job.hardware))
    return plan.evals[job.key][0], built


def _moons(*extra: str):
    return _job("quickstart", ["datasets=[moons]", "methods=[icfm]", "samplers=[euler-8]", "metrics=[w2, nfe]",
                               "budget.eval.num_samples=300", "budget.eval.warmup=0", "budget.eval.repeats=1", *extra])


def _points(files) -> dict[str, np.ndarray]:
    import io

    buffer = io.BytesIO()
    files["points"][1](buffer)
    buffer.seek(0)
    with np.load(buffer) as data:
        return {k: data[k] for k in data.files}


def test_samples_do_not_depend_on_the_batch_size():
    results = {}
    for batch in (None, 7, 64, 300):
        job, built = _moons(*([] if batch is None else [f"budget.eval.batch_size={batch}"]))
        status, metrics, measurements, files = evaluate(job, built, built.network, {})
        assert status == "ok"
        results[batch] = (metrics, measurements, _points(files))
    base_metrics, base_measurements, base_points = results[None]
    assert base_measurements["batch_size"] == 300 and results[7][1]["batch_size"] == 7
    assert results[7][1]["batches"]["count"] == 43 and results[7][1]["network_calls"] == 43 * 8
    for batch, (metrics, measurements, points) in results.items():
        np.testing.assert_array_equal(points["source"], base_points["source"])  # the noise: identical
        np.testing.assert_allclose(points["samples"], base_points["samples"], rtol=0, atol=1e-5)  # float32 maths
        assert metrics["w2"] == pytest.approx(base_metrics["w2"], rel=1e-5)
        assert metrics["nfe"] == 8.0


def test_noise_comes_in_blocks_of_the_shard_size_and_block_0_is_the_old_stream():
    from harness.seeding import generator

    def draw(n, gen):
        return torch.randn(n, 2, generator=gen)

    whole = draw_blocks(draw, 250, 100, seed=3, stream="eval-source")
    assert whole.shape == (250, 2)
    torch.testing.assert_close(whole[:100], draw(100, generator(3, "eval-source")), rtol=0, atol=0)
    torch.testing.assert_close(whole[200:], draw(50, generator(3, "eval-source/2")), rtol=0, atol=0)
    # an evaluation of at most one block draws exactly what the one-call evaluation drew
    torch.testing.assert_close(draw_blocks(draw, 80, 10_000, 3, "eval-source"), draw(80, generator(3, "eval-source")))


def test_shards_merge_into_what_one_pass_gives():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)) * 3 + 50  # a large mean: the scatter must not cancel
    one = Features(16, keep=True)
    one.update(x)
    parts = [Features(16, keep=True) for _ in range(4)]
    for part, rows in zip(parts, np.array_split(x, [100, 333, 900])):
        part.update(rows)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert merged.n == one.n == 1000
    np.testing.assert_allclose(merged.stats.mean, one.stats.mean, rtol=1e-13)
    np.testing.assert_allclose(merged.stats.scatter, one.stats.scatter, rtol=1e-11)
    np.testing.assert_array_equal(merged.points(), x)


def test_a_shard_saves_and_loads_exactly(tmp_path):
    rng = np.random.default_rng(1)
    feats = Features(4, keep=True)
    feats.update(rng.normal(size=(20, 4)))
    points = Points(("samples", "source"))
    points.update(samples=rng.normal(size=(20, 2)), source=rng.normal(size=(20, 2)))
    tally = Tally(samples=20, non_finite=1, evaluations=160, calls=8, batches=2, steps=16, batch_s=[0.5, 0.25])
    shard = Shard(tally, points, {"digits-abc": feats}, rng.normal(size=(5, 64)))
    shard.save(tmp_path / "s.npz")
    back = Shard.load(tmp_path / "s.npz", ("samples", "source"))
    assert back.tally == tally
    np.testing.assert_array_equal(back.points.result("samples"), points.result("samples"))
    np.testing.assert_array_equal(back.features["digits-abc"].stats.scatter, feats.stats.scatter)
    np.testing.assert_array_equal(back.features["digits-abc"].points(), feats.points())
    np.testing.assert_array_equal(back.grid, shard.grid)
    assert back.merge(Shard.load(tmp_path / "s.npz", ("samples", "source"))).tally.samples == 40


def _digits(*extra: str):
    return _job("digits-quick", ["methods=[{extends: icfm, name: icfm-digits, network: {name: mlp, width: 32}}]",
                                 "samplers=[euler-1]", "metrics=[fd_digits, kid_digits, nfe]",
                                 "budget.eval.num_samples=300", "budget.eval.warmup=0", "budget.eval.repeats=1",
                                 "budget.eval.shard_size=100", "budget.eval.batch_size=40", *extra])


def test_an_interrupted_evaluation_resumes_from_its_last_finished_shard(tmp_path, monkeypatch):
    job, built = _digits()
    status, whole, measurements, _ = evaluate(job, built, built.network, {}, ArtefactStore(tmp_path / "a"))
    assert status == "ok" and measurements["shards"] == {"count": 3, "size": 100, "resumed": 0}
    assert measurements["batches"]["count"] == 9  # 40 + 40 + 20 per shard: batches never straddle a shard

    store = ArtefactStore(tmp_path / "b")
    real_save, saved = Shard.save, []

    def crash_after_two(self, path):
        if len(saved) == 2:
            raise KeyboardInterrupt  # the machine goes away during the third shard
        real_save(self, path)
        saved.append(path)

    monkeypatch.setattr(Shard, "save", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluate(job, built, built.network, {}, store)
    monkeypatch.setattr(Shard, "save", real_save)
    assert sorted(p.name for p in saved) == ["00000.npz", "00001.npz"]
    status, resumed, measurements, _ = evaluate(job, built, built.network, {}, store)
    assert measurements["shards"]["resumed"] == 2 and measurements["batches"] == {**measurements["batches"], "count": 9, "timed": 3}
    assert resumed["fd_digits"] == pytest.approx(whole["fd_digits"], rel=1e-9)
    assert resumed["kid_digits"] == pytest.approx(whole["kid_digits"], rel=1e-9)
    assert resumed["nfe"] == whole["nfe"] == 1.0


def test_reference_statistics_are_computed_once_and_keyed_by_what_made_them(tmp_path):
    store = ArtefactStore(tmp_path)
    job, built = _digits("budget.eval.shard_size=10000")
    _, first, m1, _ = evaluate(job, built, built.network, {}, store)
    cards = sorted((tmp_path / "references").glob("*.json"))
    assert len(cards) == 1  # fd_digits and kid_digits share the digits space; KID keeps the vectors
    _, second, m2, _ = evaluate(job, built, built.network, {}, store)
    assert len(sorted((tmp_path / "references").glob("*.json"))) == 1
    assert second == first
    provenance = m2["provenance"]["fd_digits"]
    assert provenance["reference_sha256"] == m1["provenance"]["fd_digits"]["reference_sha256"]
    assert provenance["reference"] == len(built.dataset.held_out_images) and provenance["generated"] == 300
    # another resolution is another reference
    job16, built16 = _digits("budget.eval.shard_size=10000", "datasets=[{extends: digits, name: digits16, "
                             "params: {resolution: 16}}]")
    evaluate(job16, built16, built16.network, {}, store)
    assert len(sorted((tmp_path / "references").glob("*.json"))) == 2


def test_non_finite_and_out_of_range_samples_are_counted_apart():
    job, built = _moons("budget.eval.batch_size=100")

    class Broken(torch.nn.Module):
        def forward(self, x, t):
            out = torch.zeros_like(x)
            out[:3] = float("nan")  # three non-finite samples in every batch
            out[3:5] = 1e9  # two exploded ones
            return out

    status, metrics, measurements, _ = evaluate(job, built, Broken(), {})
    assert status == "diverged" and metrics["w2"] is None
    assert measurements["samples_non_finite"] == 9 and measurements["samples_out_of_range"] == 15
    assert measurements["samples_finite"] is False


def test_channels_last_changes_the_layout_not_the_numbers():
    job, built = _digits("methods=[{extends: icfm, name: icfm-digits, network: {name: unet, channels: 8}}]",
                         "budget.eval.shard_size=10000")
    _, plain, _, _ = evaluate(job, built, built.network, {})
    job_cl, built_cl = _digits("methods=[{extends: icfm, name: icfm-digits, network: {name: unet, channels: 8}}]",
                               "budget.eval.shard_size=10000", "hardware={extends: cpu, name: cpu-cl, "
                               "channels_last: true}")
    conv = next(m for m in built_cl.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1
    _, channels_last, _, _ = evaluate(job_cl, built_cl, built_cl.network, {})
    assert channels_last["fd_digits"] == pytest.approx(plain["fd_digits"], rel=1e-4)


def test_records_carry_the_precision_and_determinism_flags():
    from harness.environment import environment

    env = environment("cpu")
    assert {"tf32_matmul", "tf32_cudnn", "cudnn_benchmark", "cudnn_deterministic", "float32_matmul_precision",
            "deterministic_algorithms"} <= set(env)


def test_a_bad_image_batch_publishes_no_feature_metric():
    job, built = _digits("budget.eval.shard_size=10000", "budget.eval.batch_size=100")

    class HalfBroken(torch.nn.Module):
        def forward(self, x, t):
            out = torch.zeros_like(x)
            out[:1] = float("inf")  # one sample of each batch leaves the data's range
            return out

    status, metrics, measurements, files = evaluate(job, built, HalfBroken(), {})
    assert status == "diverged" and metrics["fd_digits"] is None and metrics["kid_digits"] is None
    assert measurements["samples_non_finite"] == 3 and "floors" not in measurements and "grid" not in files


def test_class_labels_reach_a_conditional_method_in_training_and_sampling():
    from harness.interfaces import Solution
    from harness.training import BatchStream

    class Coded:  # image i has every pixel = i and class i % 10
        shape = (1, 2, 2)
        labels = torch.arange(50) % 10

        def train_split(self, gen):
            return torch.arange(50, dtype=torch.float32)[:, None, None, None].expand(50, 1, 2, 2).clone()

        def sample_source(self, n, gen):
            return torch.randn((n, *self.shape), generator=gen)

    stream = BatchStream(Coded(), 16, torch.Generator().manual_seed(0))
    for _ in range(5):
        batch = stream.next()
        assert batch.labels.dtype == torch.int64
        torch.testing.assert_close(batch.labels, batch.x_1[:, 0, 0, 0].long() % 10)

    seen: dict[int | None, list] = {}

    class Conditional:
        conditional = True

        def sample(self, model, x_0, solver, generator, record=False, labels=None):
            seen.setdefault(batch_size, []).append(labels.clone())
            return Solution(x=x_0 * 0 + labels[:, None, None, None].float() / 10, steps=1)

    results = {}
    for batch_size in (None, 32):
        job, built = _digits("budget.eval.shard_size=10000",
                             *([] if batch_size is None else [f"budget.eval.batch_size={batch_size}"]))
        built.method = Conditional()
        status, metrics, _, _ = evaluate(job, built, built.network, {})
        assert status == "ok"
        results[batch_size] = metrics

    def the_pass(calls: list) -> torch.Tensor:  # the last calls, which cover the 300 samples once
        out: list = []
        while sum(len(c) for c in out) < 300:
            out.insert(0, calls[-1 - len(out)])
        return torch.cat(out)

    passes = {b: the_pass(v) for b, v in seen.items()}  # batch 40 (the helper's default), then 32
    assert len(seen[None][-1]) == 20 and len(seen[32][-1]) == 12
    torch.testing.assert_close(passes[None], passes[32])  # the same classes whatever the batch size
    assert passes[None].min() >= 0 and passes[None].max() <= 9 and len(set(passes[None].tolist())) == 10
    assert results[None]["fd_digits"] == pytest.approx(results[32]["fd_digits"], rel=1e-6)


def test_model_metrics_read_the_held_out_data_through_the_methods_likelihood():
    import math

    from harness.seeding import generator

    job, built = _moons("metrics=[w2, nfe, nll, bpd]")  # icfm: no likelihood, so the columns are not applicable
    _, metrics, measurements, _ = evaluate(job, built, built.network, {})
    assert metrics["nll"] is None and metrics["bpd"] is None

    class StandardNormal:  # an exact likelihood: log N(x; 0, I)
        likelihood_convention = "continuous density, no dequantisation (test)"

        def __init__(self, method):
            self.sample = method.sample

        def log_likelihood(self, model, x, gen):
            return (-0.5 * x.double() ** 2 - 0.5 * math.log(2 * math.pi)).sum(dim=1)

    built.method = StandardNormal(built.method)
    _, metrics, measurements, _ = evaluate(job, built, built.network, {})
    data = built.dataset.sample_target(300, generator(job.train.seed, "eval-likelihood")).double()
    expected = float((0.5 * data**2 + 0.5 * math.log(2 * math.pi)).mean())  # per dimension
    assert metrics["nll"] == pytest.approx(expected, rel=1e-12)
    assert metrics["bpd"] == pytest.approx(expected / math.log(2), rel=1e-12)
    assert measurements["provenance"]["bpd"] == {"split": "fresh target samples", "n": 300, "dims": 2,
                                                  "given": "nothing (unconditional)",
                                                  "convention": StandardNormal.likelihood_convention,
                                                  "std_error_nats": pytest.approx(
                                                      float((-0.5 * data**2 - 0.5 * math.log(2 * math.pi))
                                                            .sum(1).std() / math.sqrt(300)), rel=1e-9)}
