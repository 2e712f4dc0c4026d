"""One training step per method family: the method's ``prepare`` (a coupling's re-pairing,
where it has one), its loss, the backward pass and the optimiser step, on a fixed batch.

The step is what ``harness.training.train`` does per batch, without the batch stream, the
logging and the budget checks; the batch is built once in ``setup``.
"""

from __future__ import annotations

from typing import ClassVar

from .common import FAMILIES, built_family, fixed_batch


class TrainStep:
    params: ClassVar[list[str]] = list(FAMILIES)
    param_names: ClassVar[list[str]] = ["method"]
    timeout = 120

    def setup(self, method: str) -> None:
        from harness.building import build_optimizer

        family, train, _, self.built = built_family(method)
        self.optimizer = build_optimizer(train, self.built.network)
        self.batch = fixed_batch(self.built, family.train_batch)
        self.network = self.built.network.train()
        self.step()  # the first step allocates the optimiser's state: not part of the timing

    def step(self) -> float:
        import torch

        method = self.built.method
        gen = torch.Generator().manual_seed(1)
        batch = method.prepare(self.batch, gen) if hasattr(method, "prepare") else self.batch
        loss = method.loss(self.network, batch, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def time_train_step(self, method: str) -> None:
        self.step()
