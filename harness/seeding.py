"""Independent, named random streams derived from one run seed.

Each consumer (data, model initialisation, method noise, evaluation noise, the fresh
reference sample) gets its own ``torch.Generator``, so adding a sampler or a metric
never shifts another stream and two runs of one spec draw the same numbers.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def stream_seed(seed: int, stream: str) -> int:
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, stream))
    return gen


def seed_everything(seed: int) -> None:
    """Seed the global generators too, for code that does not take a generator."""
    random.seed(seed)
    np.random.seed(stream_seed(seed, "numpy") % (2**32))
    torch.manual_seed(stream_seed(seed, "torch"))
