"""Sampling a fixed batch per method family with a fixed-step sampler: Euler-8 for the flows
and the average-velocity methods, the sequential inverse (``ar-sequential``) for TARFlow.

The network is freshly initialised (the cost of a fixed-step sampler does not depend on the
weights); the source batch is drawn once in ``setup``. The call is the evaluation's: the
method's ``sample`` with the solver ``harness.evaluation.make_solver`` builds, under
``torch.no_grad``. ``peakmem_`` is asv's: the process's peak resident memory after the call,
so it includes the interpreter, torch and the setup (a regression shows as a step up).
"""

from __future__ import annotations

from typing import ClassVar

from .common import FAMILIES, built_family


class Sample:
    params: ClassVar[list[str]] = list(FAMILIES)
    param_names: ClassVar[list[str]] = ["method"]
    timeout = 120

    def setup(self, method: str) -> None:
        import torch

        from harness.evaluation import make_solver

        family, _, evaluation, self.built = built_family(method)
        self.network = self.built.network.eval()
        self.solver, _ = make_solver(evaluation, self.built, self.network, {}, None,
                                     evaluation.sampler.solver, evaluation.sampler.params)
        self.x_0 = self.built.space.sample_source(family.sample_batch, torch.Generator().manual_seed(0))

    def sample(self):
        import torch

        with torch.no_grad():
            gen = torch.Generator().manual_seed(2)
            return self.built.method.sample(self.network, self.x_0, self.solver, gen)

    def time_sample(self, method: str) -> None:
        self.sample()

    def peakmem_sample(self, method: str) -> None:
        self.sample()
