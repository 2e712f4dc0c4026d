"""Flows in an autoencoder's latent space (a method spec's ``latent:`` block).

Latent Flow Matching (Dao et al. 2023) trains the flow on z = s·E(x) for a frozen
autoencoder (E, D) and scale s, and generates x = D(z / s). Here the autoencoder is an
artefact like a trained model: trained once on the dataset's training split (its own
generator streams from the run seed), kept in the artefact store under the hash of the
``latent:`` block, the dataset's spec, the seed and the autoencoder's code fingerprint, and
reused by every method and sampler that names the same block. ``weights:`` loads a state
dict instead (the card then records the file's SHA-256).

Its card records the reconstruction error on the held-out split (mean squared error and
PSNR on the [−1, 1] scale), so that a poor autoencoder, which bounds every latent flow's
quality, is visible next to the flow's numbers.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import registry as reg
from harness.artefacts import ArtefactStore
from harness.codeversion import fingerprint, modules_of
from harness.plan import TrainJob, canonical
from harness.seeding import generator, stream_seed

ENCODE_BATCH = 512


class LatentSpace:
    """The dataset seen through a frozen autoencoder, scaled: what the flow trains on and
    samples in (``sample_source``, ``train_split``, ``sample_target``, ``shape``), and
    ``decode`` back to images."""

    def __init__(self, dataset: Any, autoencoder: torch.nn.Module, scale: float, device: torch.device):
        self.autoencoder, self.scale, self.device = autoencoder.eval(), scale, device
        self._train = self.encode(dataset.train_split(None))
        self._held_out = self.encode(dataset.held_out_images)
        self.shape = tuple(self._train.shape[1:])
        self._labels = getattr(dataset, "labels", None)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        parts = [self.autoencoder.encode(images[i:i + ENCODE_BATCH].to(self.device)).cpu() * self.scale
                 for i in range(0, len(images), ENCODE_BATCH)]
        return torch.cat(parts).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """D(E(x)) of data images, on the CPU: what a perfect latent flow would generate."""
        parts = [self.decode(self.encode(images[i:i + ENCODE_BATCH]).to(self.device)).cpu()
                 for i in range(0, len(images), ENCODE_BATCH)]
        return torch.cat(parts).float()

    @property
    def labels(self) -> torch.Tensor | None:
        """The class of each training latent (the dataset's training labels, same order)."""
        return self._labels

    def sample_source(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *self.shape), generator=gen)

    def train_split(self, gen: torch.Generator | None) -> torch.Tensor:
        return self._train

    def sample_target(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Held-out latents (validation), without replacement."""
        held = len(self._held_out)
        if n > held:
            raise ValueError(f"{n} held-out latents asked of {held}")
        return self._held_out[torch.randperm(held, generator=gen)[:n]]


def autoencoder_spec(job: TrainJob) -> dict:
    """What identifies a trained autoencoder: the latent block (without ``scale``, which is
    applied after), the dataset's training part, the seed, and the code fingerprint."""
    latent = {k: v for k, v in canonical(job.method.latent).items() if k != "scale"}
    dataset = {k: v for k, v in canonical(job.dataset).items() if k in ("implementation", "params")}
    modules = {**modules_of(reg.AUTOENCODERS.module_of(latent["autoencoder"]["name"])),
               **modules_of(reg.OPTIMIZERS.module_of(latent["optimizer"]["name"]))}
    return {"latent": latent, "dataset": dataset, "seed": job.seed, "code": fingerprint(modules)}


def _build(job: TrainJob, shape: tuple[int, ...], device: torch.device) -> torch.nn.Module:
    spec = dict(job.method.latent.autoencoder)
    cls = reg.AUTOENCODERS.get(spec.pop("name"))
    torch.manual_seed(stream_seed(job.seed, "autoencoder-init"))
    return cls(cls.Params.model_validate(spec), shape).to(device)


@torch.no_grad()
def reconstruction(autoencoder: torch.nn.Module, images: torch.Tensor, device: torch.device) -> dict:
    """Held-out reconstruction error: MSE per pixel and PSNR on the [−1, 1] range (peak 2)."""
    autoencoder.eval()
    total, count = 0.0, 0
    for i in range(0, len(images), ENCODE_BATCH):
        x = images[i:i + ENCODE_BATCH].to(device)
        total += float(((autoencoder.decode(autoencoder.encode(x)) - x) ** 2).sum())
        count += x.numel()
    mse = total / count
    return {"held_out_mse": mse, "held_out_psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf}


def train_autoencoder(job: TrainJob, dataset: Any, device: torch.device, progress: bool) -> tuple[Any, dict]:
    """Train the autoencoder of ``job.method.latent`` on the training split; (network, facts)."""
    spec = job.method.latent
    autoencoder = _build(job, tuple(dataset.shape), device)
    if spec.weights is not None:
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"latent.weights: no file {path}")
        autoencoder.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return autoencoder, {"weights": str(path), "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                             **reconstruction(autoencoder, dataset.held_out_images, device)}
    opt_spec = dict(spec.optimizer)
    opt_cls = reg.OPTIMIZERS.get(opt_spec.pop("name"))
    optimizer = opt_cls.build(opt_cls.Params.model_validate(opt_spec), autoencoder.parameters())
    data = dataset.train_split(None)
    gen = generator(job.seed, "autoencoder-data")
    order = torch.empty(0, dtype=torch.long)
    bar = tqdm(range(spec.steps), desc=f"autoencoder {job.dataset.name}/s{job.seed}", leave=False, unit="step",
               disable=not (progress and sys.stderr.isatty()))
    curve, start = [], time.perf_counter()
    autoencoder.train()
    for step in bar:
        while len(order) < spec.batch_size:
            order = torch.cat([order, torch.randperm(len(data), generator=gen)])
        idx, order = order[:spec.batch_size], order[spec.batch_size:]
        loss = autoencoder.loss(data[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, spec.steps // 20) == 0 or step + 1 == spec.steps:
            curve.append([step + 1, loss.item()])
            if not math.isfinite(curve[-1][1]):
                raise RuntimeError(f"the autoencoder's training diverged at step {step + 1} (loss {curve[-1][1]})")
    bar.close()
    return autoencoder, {"steps": spec.steps, "train_s": time.perf_counter() - start, "loss_curve": curve,
                         "num_params": sum(p.numel() for p in autoencoder.parameters()),
                         **reconstruction(autoencoder, dataset.held_out_images, device)}


def latent_space(job: TrainJob, dataset: Any, device: torch.device, store: ArtefactStore | None,
                 progress: bool = False) -> tuple[LatentSpace, dict]:
    """The run's latent space, its autoencoder from the store (trained first when missing),
    and the autoencoder's card (key, reconstruction error, scale)."""
    shape = tuple(dataset.shape)

    def make() -> tuple[Any, dict]:
        return train_autoencoder(job, dataset, device, progress)

    def save(net: Any, f: Any) -> None:
        torch.save(net.state_dict(), f)

    def load(path: Path) -> Any:
        net = _build(job, shape, device)
        net.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return net

    spec = autoencoder_spec(job)
    if store is None:
        autoencoder, facts = make()
        card = {"key": None, **facts, "reused": False}
    else:
        autoencoder, card = store.cached("autoencoders", spec, "pt", make, save, load)
    for p in autoencoder.parameters():
        p.requires_grad_(False)
    scale = job.method.latent.scale
    if scale == "std":
        space = LatentSpace(dataset, autoencoder, 1.0, device)
        scale = 1.0 / float(space._train.std())
        space = LatentSpace(dataset, autoencoder, scale, device)
    else:
        space = LatentSpace(dataset, autoencoder, float(scale), device)
    summary = {k: card.get(k) for k in ("key", "held_out_mse", "held_out_psnr_db", "steps", "num_params", "weights",
                                         "weights_sha256", "reused")}
    return space, {**summary, "scale": scale, "latent_shape": list(space.shape)}
