"""The optimisation extras of a method spec (TorchCFM's CIFAR-10 recipe): a moving average
of the weights, gradient-norm clipping and a linear learning-rate warmup. Each is checked
on the numbers it produces; their defaults must leave keys and trained weights as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from harness.building import build, build_optimizer, configure, to_device
from harness.plan import make_plan
from harness.resolve import load_suite
from harness.seeding import generator
from harness.training import (
    BatchStream,
    GradientClipping,
    PreparedBatches,
    Validation,
    WeightAverage,
    train,
    warmup_schedule,
)
from tests.conftest import SPECS, run_cli, write

SUITE = """name: protocol
seeds: [0]
hardware: HARDWARE
budget:
  train: {steps: STEPS, log_every: 10}
  eval: {num_samples: 128, warmup: 0, repeats: 1}
datasets: [moons]
methods:
  - {extends: icfm, name: icfm-protocol, optimizer: {name: adam, lr: 1.0e-2}EXTRA}
samplers: [euler-8]
metrics: [w2]
"""
CPU = torch.device("cpu")


def _job(tmp_path, extra: str = "", steps: int = 30, hardware: str = "cpu", budget: str = ""):
    text = (SUITE.replace("EXTRA", extra).replace("STEPS", str(steps)).replace("HARDWARE", hardware)
            .replace("log_every: 10}", f"log_every: 10{budget}}}"))
    suite = load_suite(str(write(tmp_path / "suite.yaml", text)), root=SPECS)
    return make_plan(suite).trainings[0]


def _built(job):
    configure(job.hardware)
    return build(job, CPU)


class _Steps:
    """Global optimiser hooks: the learning rate and the gradient norm each step applies,
    and the parameters after it."""

    def __init__(self):
        self.lrs, self.grad_norms, self.params = [], [], []

    def __enter__(self):
        def pre(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                                               for g in grads]))))
            self.lrs.append(optimizer.param_groups[0]["lr"])

        def post(optimizer, args, kwargs):
            self.params.append([p.detach().clone() for g in optimizer.param_groups for p in g["params"]])

        self.handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# --- the moving average ---------------------------------------------------------------


def test_moving_average_equals_its_closed_form_on_a_known_sequence():
    """θ_k = k² (k = 0 … n): θ̄_n = d^n θ_0 + (1 − d) Σ_{k=1}^n d^(n−k) θ_k."""
    net = nn.Linear(1, 1, bias=False).double()
    frozen = nn.Parameter(torch.ones(1, dtype=torch.float64), requires_grad=False)
    net.register_parameter("frozen", frozen)
    with torch.no_grad():
        net.weight.fill_(0.0)
    decay, n = 0.9, 25
    ema = WeightAverage(net, decay)
    assert len(ema.params) == 1  # the frozen parameter is left alone
    for k in range(1, n + 1):
        with torch.no_grad():
            net.weight.fill_(float(k * k))
        ema.update()
    expected = decay ** n * 0.0 + (1 - decay) * sum(decay ** (n - k) * k * k for k in range(1, n + 1))
    assert ema.average[0].item() == pytest.approx(expected, rel=1e-12)
    assert ema.updates == n
    with ema.swapped_in():
        assert net.weight.item() == pytest.approx(expected, rel=1e-12)
    assert net.weight.item() == n * n  # the raw weight is back
    ema.copy_to_network()
    assert net.weight.item() == pytest.approx(expected, rel=1e-12)


def test_training_with_ema_ends_holding_the_average_of_its_steps(tmp_path):
    """Float64, so the closed form over the recorded raw weights matches to 1e-12."""
    job = _job(tmp_path, ", ema: 0.8", steps=20, hardware="{name: f64, dtype: float64}")
    built = _built(job)
    initial = [p.detach().clone() for p in built.network.parameters()]
    with _Steps() as seen:
        result = train(job, built, progress=False)
    assert result.status == "ok" and len(seen.params) == 20
    d, n = 0.8, len(seen.params)
    for i, p in enumerate(built.network.parameters()):
        expected = d ** n * initial[i] + (1 - d) * sum(d ** (n - k) * seen.params[k - 1][i] for k in range(1, n + 1))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
    # the raw weights are returned beside it, and differ from it
    raw = result.raw_state
    for (name, value), last in zip(built.network.named_parameters(), seen.params[-1]):
        assert torch.equal(raw[name], last)
    assert any(not torch.equal(raw[name], value) for name, value in built.network.named_parameters())
    assert result.stats["ema"]["decay"] == 0.8 and result.stats["ema"]["updates"] == 20


def test_validation_scores_the_moving_average(tmp_path):
    """Without restore_best the network ends with the last average; the last check's
    loss must be that network's loss, not the raw weights'."""
    job = _job(tmp_path, ", ema: 0.9", steps=12,
               budget=", early_stopping: {every_steps: 4, patience: 100, restore_best: false, val_size: 256}")
    built = _built(job)
    result = train(job, built, progress=False)
    curve = result.stats["early_stopping"]["val_curve"]
    assert [s for s, _ in curve] == [4, 8, 12]
    again = Validation(job, built)
    again.check(built.network, 12)
    assert again.curve[0][1] == curve[-1][1]
    raw = Validation(job, built)
    built.network.load_state_dict(result.raw_state)
    raw.check(built.network, 12)
    assert raw.curve[0][1] != curve[-1][1]  # the raw weights score otherwise


# --- gradient clipping ----------------------------------------------------------------


def test_clipping_records_the_norm_before_and_bounds_it_after():
    net = nn.Linear(3, 2)
    for p in net.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()])))
    clip = GradientClipping(net, 1.0)
    clip()
    after = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()])))
    assert clip.norms().tolist() == pytest.approx([before])
    assert after == pytest.approx(1.0, rel=1e-5)
    for p in net.parameters():  # a gradient already within the bound is left exactly as it is
        p.grad = torch.full_like(p, 0.01)
    kept = [p.grad.clone() for p in net.parameters()]
    clip()
    assert all(torch.equal(p.grad, k) for p, k in zip(net.parameters(), kept))
    stats = clip.stats()
    assert stats["clipped_steps"] == 1 and stats["clipped_fraction"] == 0.5


def test_clipping_bounds_the_gradient_norm_every_step_applies(tmp_path):
    max_norm = 0.05
    job = _job(tmp_path, f", grad_clip: {max_norm}", steps=30)
    with _Steps() as seen:
        result = train(job, _built(job), progress=False)
    assert len(seen.grad_norms) == 30
    assert max(seen.grad_norms) <= max_norm * (1 + 1e-5)
    stats = result.stats["grad_clip"]
    assert stats["max_norm"] == max_norm and stats["clipped_steps"] == 30  # the loss's gradient is far larger
    assert stats["median_norm"] > max_norm and stats["non_finite_norms"] == 0


# --- learning-rate warmup -------------------------------------------------------------


def test_warmup_schedule_values_at_given_steps():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=2e-4)
    schedule = warmup_schedule(optimizer, 5000)
    lrs = {}
    for k in range(6001):
        lrs[k] = optimizer.param_groups[0]["lr"]  # what optimiser step k runs at
        optimizer.step()
        schedule.step()
    for k, expected in {0: 0.0, 1: 2e-4 / 5000, 2500: 1e-4, 4999: 2e-4 * 4999 / 5000, 5000: 2e-4,
                        6000: 2e-4}.items():
        assert lrs[k] == pytest.approx(expected, rel=1e-12, abs=0), k
    assert warmup_schedule(optimizer, 0) is None


def test_training_steps_run_at_the_warmup_rates(tmp_path):
    job = _job(tmp_path, ", warmup_steps: 8", steps=12)
    with _Steps() as seen:
        result = train(job, _built(job), progress=False)
    assert seen.lrs == pytest.approx([1e-2 * min(k, 8) / 8 for k in range(12)], rel=1e-12, abs=0)
    assert result.stats["warmup"] == {"steps": 8, "lr_reached": pytest.approx(1e-2), "completed": True}


# --- defaults: keys and weights as before ---------------------------------------------


def test_defaults_leave_the_key_and_the_dump_unchanged(tmp_path):
    plain = _job(tmp_path)
    explicit = _job(tmp_path, ", ema: null, grad_clip: null, warmup_steps: 0")
    assert explicit.key == plain.key
    assert not {"ema", "grad_clip", "warmup_steps"} & set(plain.spec["method"])
    for extra in (", ema: 0.9999", ", grad_clip: 1.0", ", warmup_steps: 5000"):
        assert _job(tmp_path, extra).key != plain.key, extra


def test_defaults_train_bit_identical_weights_to_the_plain_loop(tmp_path):
    """The loop as it was before the extras: zero_grad, backward, step, nothing else."""
    job = _job(tmp_path, steps=25)
    built = _built(job)
    result = train(job, built, progress=False)
    assert result.raw_state is None and not {"ema", "grad_clip", "warmup"} & set(result.stats)
    reference = _built(job)
    optimizer = build_optimizer(job, reference.network)
    method_gen = generator(job.seed, "method", CPU)
    batches = PreparedBatches(BatchStream(reference.space, job.method.batch_size, generator(job.seed, "data")),
                              reference.method, job.seed, job.hardware.prefetch_workers)
    reference.network.train()
    for _ in range(25):
        loss = reference.method.loss(reference.network, to_device(batches.next(), reference), method_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    batches.close()
    for (name, value), (_, expected) in zip(built.network.state_dict().items(),
                                            reference.network.state_dict().items()):
        assert torch.equal(value, expected), name


# --- spec errors ----------------------------------------------------------------------

METHOD = """implementation: cfm
params: {coupling: independent}
optimizer: {name: adam, lr: 2.0e-4}
batch_size: 128
LINE
"""


@pytest.mark.parametrize("line, message", [
    ("ema: 1.0", "ema: must be < 1, got 1.0"),
    ("ema: -0.1", "ema: must be >= 0, got -0.1"),
    ("ema: true", "ema: expected a number, got True"),
    ("ema: .nan", "ema: must be a finite number"),
    ("grad_clip: 0", "grad_clip: must be > 0, got 0"),
    ("grad_clip: abc", "grad_clip: expected a number, got 'abc'"),
    ("warmup_steps: -1", "warmup_steps: must be >= 0, got -1"),
    ("warmup_steps: 2.5", "warmup_steps: expected an integer, got 2.5"),
    ("warmup_steps: 2000000000", "warmup_steps: must be <= 1000000000"),
    ("emma: 0.9999", "unknown key 'emma'; did you mean 'ema'?"),
])
def test_bad_values_are_reported_with_their_line(spec_root, line, message):
    path = write(spec_root / "methods" / "broken.yaml", METHOD.replace("LINE", line))
    result = run_cli("--specs", str(spec_root), "validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].split(": ", 1)[0].endswith("methods/broken.yaml:5"), lines[0]
    assert message in lines[0], lines[0]
