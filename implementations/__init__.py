"""Reference implementations of flow-based generative models.

Importing this package registers every method, network, dataset, solver and optimiser in
the harness registries. Each module opens with the paper and algorithm it implements.
"""

from implementations import distillation, flow_matching, networks, optimizers, rectified_flow, tarflow  # noqa: F401
from implementations import autoencoders  # noqa: F401  (latent flows' autoencoders)
from implementations import meanflow, split_meanflow, split_meanflow_teacher  # noqa: F401  (average-velocity methods)
from implementations import boss  # noqa: F401  (BOSS's straightening fine-tune)
from implementations.networks import interval_params  # noqa: F401  (registers interval-mlp, interval-unet)
from implementations.common import solvers, time_grids  # noqa: F401
from implementations.datasets import images, toy2d  # noqa: F401
