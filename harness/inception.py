"""FID and KID: Fréchet and kernel distances in Inception-v3's 2048-d pool features,
extracted through clean-fid or torchmetrics with the weights each library uses, read from
local files only (nothing is downloaded).

Feature spaces (``harness.features``), one per backend, each the library's own code:

``inception-cleanfid`` (clean-fid): images go in as uint8 values, 3 channels. Mode
``clean`` (default) resizes each channel to 299×299 with clean-fid's own resizer
(``cleanfid.resize.build_resizer("clean")``: PIL bicubic on float32 values, which PIL
antialiases when downsampling, clipped to [0, 255]); mode ``legacy_tensorflow`` leaves the
resize to the TorchScript network (TensorFlow 1's bilinear resize, as the original FID
code did). The network is clean-fid's ``InceptionV3W`` wrapper around the TorchScript file
``inception-2015-12-05.pt``; it maps [0, 255] to [−1, 1] by (x − 128) / 128.

``inception-torchmetrics`` (torchmetrics, whose Inception is torch-fidelity's): images go
in as uint8, 3 channels, to ``torchmetrics.image.fid.NoTrainInceptionV3`` (the module
``FrechetInceptionDistance(feature=2048)`` builds) with the weights file
``weights-inception-2015-12-05-6726825d.pth`` that torch-fidelity downloads. Mode
``antialias`` (default, torchmetrics' own default since 1.8) resizes to 299×299 with
``torch.nn.functional.interpolate(bilinear, antialias=True)``; ``legacy_tensorflow`` with
torch-fidelity's TensorFlow-1 bilinear resize (torch-fidelity's own FID). Then (x − 128) / 128.

Both: an image x in [−1, 1] becomes round((x + 1) · 127.5) clipped to [0, 255] (round half
to even), the uint8 image a PNG of it would hold, so both backends see the same pixels;
grey images (C = 1) are repeated to 3 channels. Networks run in eval mode under
``torch.no_grad``, on CUDA when there is one. Features come back as float64.

Weights are looked for, in order: the metric's ``weights`` option (the file, or a folder
holding it under the library's file name; clean-fid loads by file name, so a file given to
it must carry that name), ``$FLOWGAUGE_INCEPTION_WEIGHTS`` (a folder holding either or
both files under their library names), then the library's own download location (clean-fid:
``/tmp``, where ``cleanfid.features.feature_extractor`` looks; torch-fidelity: torch hub's
checkpoints folder, ``$TORCH_HOME/hub/checkpoints``). Missing, the error is one line naming
the file, the places searched and the URL the library itself would download it from.

Importing this module imports neither torch nor clean-fid nor torchmetrics.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module, metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from harness.features import FEATURES, FeatureRequest
from harness.lazy import lazy_import
from harness.metrics import (
    EvalContext,
    KIDParams,
    NoParams,
    frechet_of,
    kernel_inception_distance,
    metric,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

DIM = 2048  # Inception-v3's pool3 features
SIZE = 299  # the resolution Inception-v3 was trained at
BATCH = 100  # images per network call (features do not depend on it)
ENV = "FLOWGAUGE_INCEPTION_WEIGHTS"
# clean-fid's feature_extractor keeps (and downloads) its weights in /tmp ("./" on Windows)
CLEANFID_CACHE = Path("./" if platform.system() == "Windows" else "/tmp")
TO_UINT8 = "uint8: round((x + 1) * 127.5) clipped to [0, 255], round half to even (the pixels a PNG would hold)"
CHANNELS = "3 (RGB) as given; 1 (grey) repeated to 3"


class WeightsNotFound(FileNotFoundError):
    """Inception weights that are not on this machine (one line: the file, the places
    searched, where to get it)."""


@dataclass(frozen=True)
class WeightsFile:
    """One library's Inception weights: the file name it loads and where it gets it."""

    backend: str
    name: str
    url: str  # the library's own download address (stated in messages; never fetched)
    by_name: bool  # the library loads the file by this name from a folder (clean-fid)

    def cache(self) -> tuple[Path, str]:
        """The library's own download folder and how to describe it."""
        if self.backend == "clean-fid":
            return CLEANFID_CACHE, "clean-fid's own download folder"
        return torch_hub_checkpoints(), "torch hub's checkpoints folder, where torch-fidelity downloads it"


CLEANFID_WEIGHTS = WeightsFile(
    "clean-fid", "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt", by_name=True)
TORCHMETRICS_WEIGHTS = WeightsFile(
    "torchmetrics", "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    by_name=False)


def torch_hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints`` as torch computes it (without importing torch):
    $TORCH_HOME/hub, TORCH_HOME defaulting to $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def find_weights(weights: WeightsFile, option: str | None) -> Path:
    """The weights file: the ``weights`` option (a file or its folder), else
    $FLOWGAUGE_INCEPTION_WEIGHTS (a folder, or the file itself), else the library's own
    download folder. Raises :class:`WeightsNotFound` (one line) when none has it."""
    if option is not None:
        given = Path(option).expanduser()
        file = given / weights.name if given.is_dir() else given
        if file.is_file():
            if weights.by_name and file.name != weights.name:
                raise WeightsNotFound(f"{weights.backend} loads its Inception weights by file name: the weights option "
                                      f"names {file}; rename or link it to {file.parent / weights.name}")
            return file
        raise WeightsNotFound(_missing(weights, [f"the metric's weights option ({given})"]))
    places = ["the metric's weights option (not set)"]
    env = os.environ.get(ENV)
    if env:
        given = Path(env).expanduser()
        file = given if given.is_file() and given.name == weights.name else given / weights.name
        if file.is_file():
            return file
        places.append(f"${ENV} ({given})")
    else:
        places.append(f"${ENV} (not set)")
    folder, what = weights.cache()
    if (folder / weights.name).is_file():
        return folder / weights.name
    places.append(f"{folder} ({what})")
    raise WeightsNotFound(_missing(weights, places))


def _missing(weights: WeightsFile, places: list[str]) -> str:
    return (f"{weights.backend} Inception weights: no file {weights.name} in {', then '.join(places)}; nothing is "
            f"downloaded here: get it from {weights.url} on a machine with internet access and put it in one of "
            "these places")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (computed once per file version in a process)."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _library(module: str, package: str) -> Any:
    try:
        return import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"the Inception features need {package}: pip install 'flowgauge[fid]'") from None


def to_uint8_rgb(images: Any) -> torch.Tensor:
    """(n, C, H, W) float images in [−1, 1] -> (n, 3, H, W) uint8: round((x + 1)·127.5)
    clipped to [0, 255]; a grey image (C = 1) repeated to 3 channels."""
    x = torch.as_tensor(images).detach().cpu().double()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"Inception features need images of shape (n, 1 or 3, H, W), got {tuple(x.shape)}")
    x = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _split_options(space: str, options: dict[str, Any], modes: tuple[str, ...]) -> tuple[str, str | None]:
    unknown = sorted(set(options) - {"mode", "weights"})
    if unknown:
        raise ValueError(f"the {space} feature space takes the options mode and weights, got {unknown}")
    mode = options.get("mode") or modes[0]
    if mode not in modes:
        raise ValueError(f"{space}: mode {mode!r} is not one of {', '.join(modes)}")
    return mode, options.get("weights")


def _batches(x: torch.Tensor, call: Any) -> np.ndarray:
    """``call`` on ``x`` in batches of BATCH under no_grad: (n, DIM) float64."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), BATCH):
            out.append(call(x[start:start + BATCH]).reshape(-1, DIM).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, DIM))


# --- clean-fid ------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _cleanfid_network(path: str, sha256: str, resize_inside: bool, device: str) -> Any:
    """clean-fid's InceptionV3W on the TorchScript file at ``path`` (download off), eval mode."""
    inception = _library("cleanfid.inception_torchscript", "clean-fid")
    with warnings.catch_warnings():  # torch >= 2.9 deprecates torch.jit.load, which clean-fid calls
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load", category=FutureWarning)
        net = inception.InceptionV3W(str(Path(path).parent), download=False, resize_inside=resize_inside)
    return net.to(device).eval()


class _InceptionExtractor:
    """What both backends share: options ``mode`` and ``weights``, the weights found and
    hashed, the network built once per (file, hash, mode, device) and checked to be in eval
    mode, the plan-time ``check``, and the provenance fields that do not depend on the
    backend. A backend names its ``space``, ``modes``, ``weights_file`` and ``_network``."""

    dim = DIM
    space: str
    modes: tuple[str, ...]
    weights_file: WeightsFile

    def __init__(self, options: dict[str, Any]):
        self.mode, weights = _split_options(self.space, options, self.modes)
        self.path = find_weights(self.weights_file, weights)
        self.sha256 = file_sha256(self.path)
        self.device = _device()
        self.net = self._network()
        if any(module.training for module in self.net.modules()):
            raise RuntimeError(f"{self.weights_file.backend}'s Inception network must be in eval mode")

    def _network(self) -> Any:
        raise NotImplementedError

    @classmethod
    def check(cls, options: dict[str, Any]) -> None:
        """Raise :class:`WeightsNotFound` unless the weights are on this machine."""
        find_weights(cls.weights_file, options.get("weights"))

    def _provenance(self) -> dict[str, Any]:
        return {"backend": self.weights_file.backend, "mode": self.mode, "input": TO_UINT8, "channels": CHANNELS,
                "weights_file": self.path.name, "weights_sha256": self.sha256, "feature_dim": DIM}


class CleanFIDExtractor(_InceptionExtractor):
    """The ``inception-cleanfid`` space: clean-fid's resize and TorchScript Inception-v3.

    Options: ``mode`` ("clean" or "legacy_tensorflow"), ``weights`` (a path or None)."""

    space = "inception-cleanfid"
    modes = ("clean", "legacy_tensorflow")
    weights_file = CLEANFID_WEIGHTS

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self.resize = _library("cleanfid.resize", "clean-fid").build_resizer(self.mode)

    def _network(self) -> Any:
        return _cleanfid_network(str(self.path), self.sha256, self.mode == "legacy_tensorflow", self.device)

    def __call__(self, images: Any) -> np.ndarray:
        return _batches(to_uint8_rgb(images), self._features)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) uint8 -> (b, 2048): clean-fid's resize (clean mode), then its network."""
        if self.mode == "clean":  # per image, (H, W, 3) -> (299, 299, 3) float32 in [0, 255]
            resized = [self.resize(image) for image in x.permute(0, 2, 3, 1).numpy()]
            x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
        return self.net(x.float().to(self.device))

    def provenance(self) -> dict[str, Any]:
        resize = ("clean-fid build_resizer('clean'): PIL bicubic to 299x299 per channel on float32 values "
                  "(antialiased when downsampling), clipped to [0, 255]" if self.mode == "clean" else
                  "inside the TorchScript network: TensorFlow 1 bilinear to 299x299 (clean-fid legacy_tensorflow)")
        return {**self._provenance(), "version": metadata.version("clean-fid"),
                "network": "cleanfid.inception_torchscript.InceptionV3W (TorchScript Inception-v3), pool3",
                "resize": resize, "normalisation": "(x - 128) / 128 inside InceptionV3W"}


# --- torchmetrics (torch-fidelity's Inception) -----------------------------------------------


@lru_cache(maxsize=4)
def _torchmetrics_network(path: str, sha256: str, antialias: bool, device: str) -> Any:
    """torchmetrics' NoTrainInceptionV3 with the weights at ``path`` (download off), eval mode."""
    fid = _library("torchmetrics.image.fid", "torchmetrics and torch-fidelity")
    net = fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(DIM)],
                                 feature_extractor_weights_path=path, antialias=antialias)
    return net.to(device).eval()


class TorchmetricsExtractor(_InceptionExtractor):
    """The ``inception-torchmetrics`` space: torchmetrics' FID feature module.

    Options: ``mode`` ("antialias" or "legacy_tensorflow"), ``weights`` (a path or None)."""

    space = "inception-torchmetrics"
    modes = ("antialias", "legacy_tensorflow")
    weights_file = TORCHMETRICS_WEIGHTS

    def _network(self) -> Any:
        return _torchmetrics_network(str(self.path), self.sha256, self.mode == "antialias", self.device)

    def __call__(self, images: Any) -> np.ndarray:
        return _batches(to_uint8_rgb(images), lambda batch: self.net(batch.to(self.device)))

    def provenance(self) -> dict[str, Any]:
        resize = ("torch.nn.functional.interpolate to 299x299, bilinear, antialias=True, align_corners=False"
                  if self.mode == "antialias" else
                  "torch-fidelity interpolate_bilinear_2d_like_tensorflow1x to 299x299 (antialias=False)")
        return {**self._provenance(), "version": metadata.version("torchmetrics"),
                "torch_fidelity": metadata.version("torch-fidelity"),
                "network": "torchmetrics.image.fid.NoTrainInceptionV3 (torch-fidelity's Inception-v3), features '2048'",
                "resize": resize, "normalisation": "(x - 128) / 128 inside the network"}


SPACES = {"clean-fid": CleanFIDExtractor, "torchmetrics": TorchmetricsExtractor}
SPACE_NAMES = {backend: cls.space for backend, cls in SPACES.items()}
for _cls in SPACES.values():
    FEATURES.add(_cls.space, _cls)


# --- metrics --------------------------------------------------------------------------------


class InceptionParams(NoParams):
    backend: Literal["clean-fid", "torchmetrics"] = Field(
        "clean-fid", description="the library that resizes and runs Inception-v3 (values differ between them)")
    mode: Literal["clean", "antialias", "legacy_tensorflow"] | None = Field(
        None, description="resize: clean-fid 'clean' (default) or 'legacy_tensorflow'; torchmetrics 'antialias' "
                          "(default) or 'legacy_tensorflow'; filled in when left out")
    weights: str | None = Field(None, description=f"the weights file or its folder (default: ${ENV}, then the "
                                                  "library's own download folder); never downloaded")
    reference_split: Literal["held_out", "train"] = Field("held_out", description="the dataset split compared with")

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        """The backend's default mode, written out: a spec that leaves it out and one that
        names it are the same configuration, with the same provenance."""
        backend = data.get("backend", "clean-fid") if isinstance(data, dict) else None
        if isinstance(backend, str) and backend in SPACES and data.get("mode") is None:
            data = {**data, "mode": SPACES[backend].modes[0]}
        return data

    @model_validator(mode="after")
    def _mode_of_backend(self) -> InceptionParams:
        modes = SPACES[self.backend].modes
        if self.mode not in modes:
            raise ValueError(f"mode {self.mode!r} is not a {self.backend} mode; use one of {', '.join(modes)}")
        return self


class InceptionKIDParams(KIDParams, InceptionParams):
    pass


def inception_space(params: InceptionParams) -> FeatureRequest:
    """The Inception feature space of ``params``' backend, mode and weights; KID keeps the vectors."""
    return FeatureRequest.of(SPACE_NAMES[params.backend], {"mode": params.mode, "weights": params.weights},
                             keep=isinstance(params, InceptionKIDParams), split=params.reference_split)


@metric("fid", unit="", higher_is_better=False, needs={"features"}, params=InceptionParams, features=inception_space)
def _fid(ctx: EvalContext, params: InceptionParams) -> float:
    """Fréchet Inception distance (Heusel et al. 2017) to the reference split, Inception-v3
    pool features through clean-fid or torchmetrics (provenance says which, the resize and
    the weights' SHA-256); needs more samples than 2048 on both sides, and is biased in N.

    The Fréchet distance itself is ours (harness.frechet, float64), equal to both libraries'."""
    return frechet_of(ctx.feature, "fid")


@metric("kid", unit="", higher_is_better=False, needs={"features"}, params=InceptionKIDParams,
        features=inception_space)
def _kid(ctx: EvalContext, params: InceptionKIDParams) -> float:
    """Kernel Inception distance (Bińkowski et al. 2018): unbiased cubic-kernel MMD² in the
    same Inception features as ``fid``, averaged over random subsets (clean-fid's defaults)."""
    return kernel_inception_distance(ctx.feature.generated.points(), ctx.feature.reference.features.points(),
                                     params.subsets, params.subset_size)
