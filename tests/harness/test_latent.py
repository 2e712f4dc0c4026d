"""Latent flows: the autoencoder is an artefact trained once and reused, keyed by its own
spec; its reconstruction error and the floors it sets reach the record; samples are
decoded before the metrics; the autoencoder's code is part of the flow's training key."""

from __future__ import annotations

import json

import pytest
import torch

import harness.metrics  # noqa: F401
import implementations  # noqa: F401
from harness.results import read_records
from tests.conftest import run_cli, write

SUITE = """name: latent
seeds: [0]
budget:
  train: {steps: 20}
  eval: {num_samples: 100, warmup: 0, repeats: 1}
datasets: [digits]
methods:
  - name: latent-fm
    extends: icfm
    network: {name: mlp, width: 32}
    latent: {steps: 30, autoencoder: {name: conv, channels: 8}}
  - name: latent-fm-b
    extends: rectified-flow
    network: {name: mlp, width: 32}
    latent: {steps: 30, autoencoder: {name: conv, channels: 8}}
samplers: [euler-1, euler-2]
metrics: [fd_digits, nfe]
leaderboard: {rank_by: fd_digits}
"""


def test_one_autoencoder_serves_every_method_and_sampler_that_names_it(tmp_path):
    suite = write(tmp_path / "latent.yaml", SUITE)
    out = tmp_path / "out"
    result = run_cli("run", str(suite), "--results", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    cards = sorted((out / "autoencoders").glob("*.json"))
    assert len(cards) == 1  # two methods, two samplers: one autoencoder
    card = json.loads(cards[0].read_text())
    assert card["steps"] == 30 and card["spec"]["latent"]["autoencoder"]["channels"] == 8
    records = read_records(out)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    for record in records:
        auto = record["train"]["autoencoder"]
        assert auto["key"] == card["key"] and auto["latent_shape"] == [2, 4, 4]
        assert auto["held_out_mse"] == pytest.approx(card["held_out_mse"]) and auto["held_out_mse"] > 0
        assert auto["scale"] > 0
        floors = record["measurements"]["floors"]["fd_digits"]
        assert floors["num_samples"] == 100 and floors["reconstructions"] > 0 and floors["train_images"] > 0
        assert record["measurements"]["provenance"]["fd_digits"]["generated"] == 100  # decoded images were scored
    reused = [r["train"]["autoencoder"]["reused"] for r in records]
    assert reused.count(False) == 2  # the first method trained it; the second (a new process state) found it


def test_the_autoencoders_spec_and_code_key_the_flow(tmp_path):
    from harness.codeversion import training_modules
    from harness.plan import make_plan
    from harness.resolve import load_suite

    suite = write(tmp_path / "latent.yaml", SUITE)
    plan = make_plan(load_suite(str(suite)))
    other = make_plan(load_suite(str(suite), ["methods.latent-fm.latent.steps=31"]))
    assert plan.trainings[0].key != other.trainings[0].key
    modules = training_modules(plan.trainings[0].spec["dataset"], plan.trainings[0].spec["method"])
    assert "implementations.autoencoders.conv" in modules


def test_a_bad_autoencoder_entry_is_a_spec_error_with_its_line(tmp_path):
    suite = write(tmp_path / "latent.yaml", SUITE.replace("{name: conv, channels: 8}", "{name: konv}"))
    result = run_cli("validate", str(suite))
    assert result.returncode == 2
    assert "latent.yaml:11:" in result.stderr and "unknown autoencoder 'konv'; did you mean 'conv'?" in result.stderr


def test_the_conv_autoencoder_learns_to_reconstruct_and_round_trips_shapes():
    from harness.registry import AUTOENCODERS

    cls = AUTOENCODERS.get("conv")
    torch.manual_seed(0)
    net = cls(cls.Params(channels=8, downsample=2, latent_channels=3), (1, 16, 16))
    x = torch.rand(32, 1, 16, 16) * 2 - 1
    z = net.encode(x)
    assert z.shape == (32, *net.latent_shape()) == (32, 3, 4, 4) and net.decode(z).shape == x.shape
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = net.loss(x).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = net.loss(x)
        loss.backward()
        optimizer.step()
    assert net.loss(x).item() < 0.3 * first
    with pytest.raises(ValueError, match=r"divisible by 2\^downsample = 4; this dataset's samples have shape \(1, 6, 6\)"):
        cls(cls.Params(downsample=2), (1, 6, 6))
