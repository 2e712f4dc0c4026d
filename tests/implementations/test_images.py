"""Image datasets read from tiny files in the real formats: pixels, shapes, channel order,
splits and labels exactly as written; a missing file is one line naming it, before any
run starts."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import implementations  # noqa: F401
from harness.registry import DATASETS
from implementations.datasets.images import DataMissing, read_idx
from tests.conftest import run_cli
from tests.datafiles import cifar10_files, image_folder, mnist_files, write_idx


def build(name: str, **params):
    cls = DATASETS.get(name)
    return cls(cls.Params(**params))


def unit(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


def test_digits_are_sklearns_scaled_to_minus_one_one_with_a_fixed_split():
    from sklearn.datasets import load_digits

    data = load_digits()
    digits = build("digits")
    train = digits.train_split(torch.Generator().manual_seed(5))
    assert digits.shape == (1, 8, 8) and train.shape == (1438, 1, 8, 8)  # 1797 - round(0.2 * 1797)
    assert len(digits._held_out) == 359 and train.min() == -1.0 and train.max() == 1.0
    # The split does not depend on the run's generator: the same images in the same order.
    assert torch.equal(build("digits").train_split(torch.Generator().manual_seed(9)), train)
    order = np.random.default_rng(0).permutation(1797)
    first = np.sort(order[:1438])[0]
    expected = unit(np.round(data.images[first] * 255 / 16))
    np.testing.assert_allclose(train[0, 0].numpy(), expected, atol=1e-6)
    assert int(digits.labels[0]) == int(data.target[first])
    assert build("digits", split_seed=1).train_split(None).shape == train.shape
    assert not torch.equal(build("digits", split_seed=1).train_split(None), train)
    assert build("digits", resolution=32).shape == (1, 32, 32)


def test_reference_images_are_distinct_held_out_images():
    digits = build("digits")
    g = torch.Generator().manual_seed(0)
    ref = digits.sample_target(359, g)
    assert len({tuple(x.flatten().tolist()) for x in ref}) == len({tuple(x.flatten().tolist()) for x in digits._held_out})
    with pytest.raises(ValueError, match="400 reference images asked of the 359 held-out images of digits"):
        digits.sample_target(400, g)
    x_0 = digits.sample_source(4, torch.Generator().manual_seed(0))
    assert x_0.shape == (4, 1, 8, 8) and x_0.dtype == torch.float32


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, gz):
    arrays = mnist_files(tmp_path, gz=gz)
    mnist = build("mnist", root=str(tmp_path))
    assert mnist.shape == (1, 28, 28)
    np.testing.assert_allclose(mnist.train_split(None)[:, 0].numpy(), unit(arrays["train-images-idx3-ubyte"]), atol=1e-6)
    np.testing.assert_array_equal(mnist.labels.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(mnist._held_out[:, 0].numpy(), unit(arrays["t10k-images-idx3-ubyte"]), atol=1e-6)


def test_idx_reader_refuses_what_is_not_idx(tmp_path):
    array = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", array)), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match=r"header says \(9,\), the file holds 2 bytes"):
        read_idx(tmp_path / "short.gz")


def test_cifar10_channel_order_and_splits(tmp_path):
    written = cifar10_files(tmp_path)
    cifar = build("cifar10", root=str(tmp_path))
    assert cifar.shape == (3, 32, 32)
    train = cifar.train_split(None)
    assert train.shape == (10, 3, 32, 32)
    first = written["data_batch_1"][0]  # (32, 32, 3): channel c of pixel (i, j)
    np.testing.assert_allclose(train[0].numpy(), unit(first.transpose(2, 0, 1)), atol=1e-6)
    np.testing.assert_allclose(cifar._held_out.numpy(), unit(written["test_batch"].transpose(0, 3, 1, 2)), atol=1e-6)


def test_image_folder_crops_resizes_and_labels_by_sorted_class(tmp_path):
    image_folder(tmp_path / "pics")
    folder = build("image_folder", root=str(tmp_path / "pics"), resolution=8, held_out=0.2)
    assert folder.shape == (3, 8, 8) and len(folder.train_split(None)) == 8 and len(folder._held_out) == 2
    assert set(folder.labels.tolist()) == {0, 1}  # cat, dog
    grey = build("image_folder", root=str(tmp_path / "pics"), resolution=4, channels=1)
    assert grey.shape == (1, 4, 4) and float(grey.train_split(None).abs().max()) <= 1.0


def test_missing_data_is_one_line_naming_the_file_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    for implementation, expected in (("mnist", f"no file {tmp_path}/train-images-idx3-ubyte"),
                                     ("cifar10", f"no file {tmp_path}/cifar-10-batches-py/data_batch_1"),
                                     ("image_folder", f"no folder {tmp_path}/nothing")):
        root = tmp_path / "nothing" if implementation == "image_folder" else tmp_path
        result = run_cli("run", "quickstart", "--results", str(out), "--set", "methods=[icfm]",
                         "--set", f"datasets=[{{name: d, implementation: {implementation}, params: {{root: {root}}}}}]")
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()[-1:]
        assert expected in line and "Traceback" not in result.stderr, line
        assert not out.exists()
    with pytest.raises(DataMissing, match="put MNIST's four IDX files there"):
        build("mnist", root=str(tmp_path))
