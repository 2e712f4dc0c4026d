"""Spec parts to live objects on a device: the process-wide hardware settings, the
dataset, method and network of a training job, its optimiser, and batches moved to the
device."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from harness import registry as reg
from harness.interfaces import Batch
from harness.plan import TrainJob, canonical
from harness.seeding import stream_seed
from harness.spec import HardwareSpec


@dataclass
class Built:
    """The objects a training job's spec resolves to."""

    dataset: Any
    method: Any
    network: nn.Module
    device: torch.device
    dtype: torch.dtype
    # The space the flow lives in when it is not the data's: a latent space, with
    # ``sample_source``, ``train_split``, ``sample_target`` and ``shape`` of its own, and
    # ``decode`` back to data (see harness.latent). None: the data space itself.
    latent: Any = None
    decode: Any = None
    latent_card: dict | None = None  # the autoencoder's key, reconstruction error and scale
    # What evaluation computes once per trained model, whatever the sampler (the floors, the
    # likelihood of held-out data, a method's diagnostics), by name and arguments.
    per_model: dict = field(default_factory=dict)
    method_spec: Any = None  # the method spec ``method`` was made from

    @property
    def space(self) -> Any:
        """What the flow trains on and samples in: the latent space, or the dataset."""
        return self.dataset if self.latent is None else self.latent



def set_deterministic(mode: bool, compiled: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)``. That function also sets
    the flag in inductor's config, and importing inductor for it costs 1.5 s of every
    process's start here (a third of the quickstart's per-training overhead); a run that
    compiles nothing needs only the eager flag, which is set directly."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiled or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        setter(mode, warn_only=True)


def configure(hardware: HardwareSpec) -> torch.device:
    """Apply every hardware field that acts process-wide; returns the device."""
    if hardware.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device is 'cuda' but torch.cuda.is_available() is False")
    if hardware.threads is not None:
        torch.set_num_threads(hardware.threads)
    if hardware.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(hardware.deterministic, compiled=hardware.compile)
    torch.backends.cudnn.deterministic = hardware.deterministic
    torch.backends.cudnn.benchmark = not hardware.deterministic
    if hardware.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = hardware.tf32
        torch.backends.cudnn.allow_tf32 = hardware.tf32
    return torch.device(hardware.device)


def autocast(hardware: HardwareSpec, device: torch.device) -> contextlib.AbstractContextManager:
    if hardware.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, hardware.autocast))


def build(job: TrainJob, device: torch.device, store: Any = None, progress: bool = False) -> Built:
    """The dataset, method and initialised network of ``job`` on ``device``. With a
    ``latent:`` block, the autoencoder comes first (from the artefact ``store``, trained
    when missing) and the network is built for the latent shape."""
    dtype = getattr(torch, job.hardware.dtype)
    dataset_cls = reg.DATASETS.get(job.dataset.implementation)
    dataset = dataset_cls(dataset_cls.Params.model_validate(job.dataset.params))
    method = build_method(job.method)
    latent = card = None
    if job.method.latent is not None:
        from harness.latent import latent_space

        latent, card = latent_space(job, dataset, device, store, progress)
    shape = dataset.shape if latent is None else latent.shape
    bind_data(method, dataset if latent is None else latent)
    net_spec = dict(job.method.network)
    net_cls = reg.NETWORKS.get(net_spec.pop("name"))
    torch.manual_seed(stream_seed(job.seed, "init"))
    network = net_cls(net_cls.Params.model_validate(net_spec), shape).to(device=device, dtype=dtype)
    if job.hardware.channels_last and len(shape) == 3:
        network = network.to(memory_format=torch.channels_last)
    return Built(dataset, method, network, device, dtype, latent, None if latent is None else latent.decode, card,
                 method_spec=job.method)


def bind_data(method: Any, space: Any) -> None:
    """Let a method read facts of the space it trains on (``bind_data(space)``, e.g. the
    data's grey levels for a discrete likelihood), where it wants them."""
    if hasattr(method, "bind_data"):
        method.bind_data(space)


def build_method(spec: Any) -> Any:
    """The method object of a method spec (its class, with its validated params)."""
    method_cls = reg.METHODS.get(spec.implementation)
    return method_cls(method_cls.Params.model_validate(spec.params))


def for_evaluation(built: Built, method_spec: Any) -> Built:
    """``built`` with the method object of ``method_spec``: an evaluation whose method spec
    differs from its training's only in sampling params (plan.sampling_params) shares the
    trained model but samples with its own settings."""
    if canonical(method_spec) == canonical(built.method_spec):
        return built
    method = build_method(method_spec)
    bind_data(method, built.space)
    return replace(built, method=method, method_spec=method_spec)


def build_optimizer(job: TrainJob, network: nn.Module) -> torch.optim.Optimizer:
    spec = dict(job.method.optimizer)
    opt_cls = reg.OPTIMIZERS.get(spec.pop("name"))
    return opt_cls.build(opt_cls.Params.model_validate(spec), network.parameters())



def to_device(batch: Batch, built: Built) -> Batch:
    def move(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(built.device, built.dtype, non_blocking=True)

    labels = None if batch.labels is None else batch.labels.to(built.device, non_blocking=True)
    return Batch(x_0=move(batch.x_0), x_1=move(batch.x_1), weights=move(batch.weights), labels=labels,
                 path=move(batch.path), times=move(batch.times))

