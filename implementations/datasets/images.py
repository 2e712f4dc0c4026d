"""Image datasets from local files: scikit-learn's 8×8 digits (shipped inside the
package), MNIST (the IDX files, gzipped or not), CIFAR-10 (the python pickle batches) and
any ImageFolder tree (one sub-folder of images per class).

As generative-model targets (the convention of flow-matching image work, e.g. Lipman et
al. 2023 and Tong et al. 2024 on CIFAR-10): pixels scaled from [0, 255] (digits: [0, 16])
to [−1, 1], channels first, shape (C, H, W); the source is N(0, I) of that shape.
``train_split`` is every training image, which the harness takes in epochs;
``sample_target(n)`` draws n distinct images of the held-out split (MNIST's and CIFAR-10's
test files, a seeded fraction of digits or of an image folder): what quality metrics
compare with, never the training images. ``labels`` gives the class of each training
image, for methods that condition on it.

Nothing is downloaded. The data's folder is the spec's ``root``, else
``$FLOWGAUGE_DATA/<dataset>``, else ``~/.cache/flowgauge/<dataset>``; :meth:`check`, which
``flowgauge run`` calls before anything runs, names the exact file that is missing and
where it is normally obtained.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from harness.interfaces import Params
from harness.lazy import lazy_import
from harness.limits import Seed
from harness.registry import DATASETS

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataMissing(FileNotFoundError):
    """A dataset's file is not where it is looked for; the message says what to put where."""


# --- readers: files -> uint8 arrays (N, H, W, C) and int64 labels ---------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format; ``.gz`` read as gzip): a big-endian header of magic
    0x0000 08 ndim, the dimensions as uint32, then unsigned bytes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, the file holds {body.size} bytes of data")
    return body.reshape(dims)


def read_cifar10_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's python batches (pickled dicts of b"data": 10000×3072 uint8, rows in
    channel-major order, and b"labels"): images (N, 32, 32, 3) and labels."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the dataset's own format, from a local path
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_image_folder(root: Path, resolution: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under ``root/<class>/`` (sorted), centre-cropped to a square and resized
    to ``resolution`` with antialiasing, as ``channels`` (1: grey, 3: RGB)."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                image = image.crop((left, top, left + side, top + side))
                image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
                pixels = np.asarray(image, dtype=np.uint8)
            images.append(pixels.reshape(resolution, resolution, channels))
            labels.append(index)
    if not images:
        raise DataMissing(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders {root}/<class>/")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


# --- datasets --------------------------------------------------------------------------


def data_root(name: str, root: str | None) -> Path:
    """The spec's ``root``, else ``$FLOWGAUGE_DATA/<name>``, else ``~/.cache/flowgauge/<name>``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("FLOWGAUGE_DATA"):
        return Path(os.environ["FLOWGAUGE_DATA"]).expanduser() / name
    return Path.home() / ".cache" / "flowgauge" / name


class ImageParams(Params):
    root: str | None = Field(None, description="folder of the files; null: $FLOWGAUGE_DATA/<dataset>, else "
                                               "~/.cache/flowgauge/<dataset>")
    held_out: float = Field(0.2, gt=0, lt=1, description="fraction held out for metrics where the data has no "
                                                       "test split of its own (digits, image folders)")
    split_seed: Seed = Field(0, description="seed of that split: fixed, whatever the run's seed")


class ImageDataset:
    """Common behaviour: a training and a held-out split of uint8 images, read once."""

    Params: ClassVar[type[Params]] = ImageParams
    name: ClassVar[str] = ""
    shape: tuple[int, ...]

    def __init__(self, params: Any):
        self.params = params
        train, train_labels, held_out, held_labels = self.load()
        self._train = _to_unit(train)
        self._labels = torch.as_tensor(train_labels)
        self._held_out = _to_unit(held_out)
        self._held_labels = torch.as_tensor(held_labels)
        self.shape = tuple(self._train.shape[1:])

    # A subclass reads its files: train images, their labels, held-out images, their labels;
    # images uint8 (N, H, W, C).
    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def required_files(cls, params: Any) -> list[Path]:
        """The files the dataset reads (checked before a run starts)."""
        return []

    where_to_get: ClassVar[str] = ""

    @classmethod
    def check(cls, params: Any) -> None:
        """Raise :class:`DataMissing` naming the first missing file and where to get it."""
        for path in cls.required_files(params):
            if not path.is_file():
                raise DataMissing(f"dataset {cls.name}: no file {path}; {cls.where_to_get} {cls.searched()}")

    @classmethod
    def searched(cls) -> str:
        return f"(folder: the spec's root, else $FLOWGAUGE_DATA/{cls.name}, else ~/.cache/flowgauge/{cls.name})"

    def sample_source(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn((n, *self.shape), generator=generator)

    def sample_target(self, n: int, generator: torch.Generator) -> Tensor:
        held = len(self._held_out)
        if n > held:
            raise ValueError(f"{n} reference images asked of the {held} held-out images of {self.name}; lower "
                             "budget.eval.num_samples")
        return self._held_out[torch.randperm(held, generator=generator)[:n]]

    def train_split(self, generator: torch.Generator) -> Tensor:
        return self._train

    @property
    def labels(self) -> Tensor:
        """The class of each training image (aligned with ``train_split``)."""
        return self._labels

    @property
    def held_out_images(self) -> Tensor:
        return self._held_out

    @property
    def held_out_labels(self) -> Tensor:
        return self._held_labels


def _to_unit(images: np.ndarray, top: float = 255.0) -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [−1, 1]."""
    x = torch.as_tensor(np.array(images.transpose(0, 3, 1, 2), order="C"), dtype=torch.float32)  # a writable copy
    return x / (top / 2) - 1.0


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, round(fraction * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


class DigitsParams(ImageParams):
    resolution: Literal[8, 16, 32] = Field(8, description="8: the 8×8 originals; 16 or 32: upsampled bilinearly")


@DATASETS.register("digits")
class Digits(ImageDataset):
    """scikit-learn's 1797 8×8 handwritten digits (values 0–16), one grey channel."""

    Params: ClassVar[type[Params]] = DigitsParams
    name = "digits"

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
        if self.params.resolution != 8:
            t = torch.as_tensor(images.transpose(0, 3, 1, 2), dtype=torch.float32)
            t = torch.nn.functional.interpolate(t, size=self.params.resolution, mode="bilinear", align_corners=False)
            images = t.round().clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1)
        train, held = _split(len(images), self.params.held_out, self.params.split_seed)
        return images[train], np.asarray(data.target)[train], images[held], np.asarray(data.target)[held]


class MNISTParams(ImageParams):
    pass


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@DATASETS.register("mnist")
class MNIST(ImageDataset):
    """MNIST's 60 000 training and 10 000 test images, 28×28 grey, from the IDX files."""

    Params: ClassVar[type[Params]] = MNISTParams
    name = "mnist"
    where_to_get = "put MNIST's four IDX files there (train-images-idx3-ubyte[.gz], ... from the MNIST page)"

    @classmethod
    def _file(cls, params: Any, stem: str) -> Path:
        folder = data_root(cls.name, params.root)
        plain = folder / stem
        return plain if plain.is_file() else folder / f"{stem}.gz"

    @classmethod
    def check(cls, params: Any) -> None:
        for stem in (stem for pair in MNIST_FILES.values() for stem in pair):
            path = cls._file(params, stem)
            if not path.is_file():
                raise DataMissing(f"dataset {cls.name}: no file {path.with_suffix('')} (or {path}); "
                                  f"{cls.where_to_get} {cls.searched()}")

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.check(self.params)
        train = read_idx(self._file(self.params, MNIST_FILES["train"][0]))[..., None]
        labels = read_idx(self._file(self.params, MNIST_FILES["train"][1])).astype(np.int64)
        test = read_idx(self._file(self.params, MNIST_FILES["test"][0]))[..., None]
        test_labels = read_idx(self._file(self.params, MNIST_FILES["test"][1])).astype(np.int64)
        return train, labels, test, test_labels


CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@DATASETS.register("cifar10")
class CIFAR10(ImageDataset):
    """CIFAR-10's 50 000 training and 10 000 test images, 32×32 RGB, from the python batches."""

    Params: ClassVar[type[Params]] = ImageParams
    name = "cifar10"
    where_to_get = ("extract CIFAR-10's python version (cifar-10-python.tar.gz, from the CIFAR-10 page) so that "
                    f"{CIFAR_FOLDER}/ is in that folder")

    @classmethod
    def required_files(cls, params: Any) -> list[Path]:
        folder = data_root(cls.name, params.root) / CIFAR_FOLDER
        return [folder / name for name in (*CIFAR_TRAIN, "test_batch")]

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.check(self.params)
        folder = data_root(self.name, self.params.root) / CIFAR_FOLDER
        train, labels = read_cifar10_batches(folder, CIFAR_TRAIN)
        test, test_labels = read_cifar10_batches(folder, ["test_batch"])
        return train, labels, test, test_labels


class FolderParams(ImageParams):
    resolution: int = Field(32, ge=4, le=1024, description="side of the square the images are cropped and resized to")
    channels: Literal[1, 3] = 3


@DATASETS.register("image_folder")
class ImageFolder(ImageDataset):
    """Any tree ``root/<class>/<image>``: centre-cropped, resized with antialiasing."""

    Params: ClassVar[type[Params]] = FolderParams
    name = "image_folder"
    where_to_get = "give root: a folder with one sub-folder of images per class"

    @classmethod
    def check(cls, params: Any) -> None:
        root = data_root(cls.name, params.root)
        if not root.is_dir():
            raise DataMissing(f"dataset {cls.name}: no folder {root}; {cls.where_to_get}")

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.check(self.params)
        images, labels, _ = read_image_folder(data_root(self.name, self.params.root), self.params.resolution,
                                              self.params.channels)
        train, held = _split(len(images), self.params.held_out, self.params.split_seed)
        return images[train], labels[train], images[held], labels[held]
