"""Tiny dataset files in the real formats (MNIST IDX, CIFAR-10 python batches, an image
folder), written by tests that read them back through the real loaders."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes (gzipped when the name ends in .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)
    return path


def mnist_files(root: Path, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0) -> dict:
    """MNIST's four files under ``root``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for stem, array in arrays.items():
        write_idx(root / (stem + (".gz" if gz else "")), array)
    return arrays


def cifar10_files(root: Path, per_batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py/`` with five training batches and a test batch of
    ``per_batch`` images each, as CIFAR-10 stores them (rows of 3072 bytes, R then G then
    B planes); returns the images as (N, 32, 32, 3) per batch name."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3)).astype(np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": list(rng.integers(0, 10, per_batch).tolist())}, f)
        written[name] = images
    return written


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 5, seed: int = 0) -> Path:
    """PNG images of assorted sizes (some not square) under ``root/<class>/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(10, 40)), int(rng.integers(10, 40))
            Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / c / f"{i}.png")
        (root / c / "notes.txt").write_text("not an image")
    return root
