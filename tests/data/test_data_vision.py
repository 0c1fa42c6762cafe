"""Image data sets: IDX parsing against the real MNIST files, splits, binarized MNIST, CIFAR-10, digits."""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

import mlcanon.data as D
from mlcanon.data import base, files, vision
from mlcanon.errors import UserError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # SOURCE.md
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 00 00 08 ndim, big-endian int32 sizes, data."""
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, dtype=">i4").tobytes() + a.astype(np.uint8).tobytes()


# ------------------------------------------------------------------------------------------------ IDX
def test_parse_idx_round_trip_and_magic_errors():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(a)
    assert int.from_bytes(data[:4], "big") == 2051  # the MNIST image magic number
    np.testing.assert_array_equal(vision.parse_idx(data, expect_ndim=3), a)
    with pytest.raises(UserError, match="magic"):
        vision.parse_idx(b"\x01\x02" + data[2:])  # first two bytes must be zero
    with pytest.raises(UserError, match="magic"):
        vision.parse_idx(bytes([0, 0, 0x07]) + data[3:])  # unknown dtype code
    with pytest.raises(UserError, match="expected 1-D"):
        vision.parse_idx(data, expect_ndim=1)  # an image file where labels were expected
    with pytest.raises(UserError, match="truncated"):
        vision.parse_idx(data[:-1])


def test_corrupt_mnist_file_is_a_user_error(tmp_path, monkeypatch):
    d = tmp_path / "mnist"
    d.mkdir()
    lab = np.zeros(5, dtype=np.uint8)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x02" + idx_bytes(lab)[4:]))
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="corrupt"):  # md5 check on a found file
        D.load("mnist", "test", data_dir=tmp_path)
    # with the checksums out of the way, the parsers still refuse the files
    monkeypatch.setitem(vision.CHECKSUMS, "mnist", dict.fromkeys(vision.MNIST_FILES))
    with pytest.raises(UserError, match="not a valid gzip"):
        D.load("mnist", "test", data_dir=tmp_path)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28)))))
    with pytest.raises(UserError, match="IDX magic number 2050"):  # labels file claims 2-D
        D.load("mnist", "test", data_dir=tmp_path)


# ----------------------------------------------------------------------------------------- real MNIST
def test_mnist_real_files(real_data):
    for fname, checksum in vision.MNIST_FILES.items():  # the official md5s match the local copies
        assert "md5:" + files.file_hash(real_data / "mnist" / fname, "md5") == checksum
    full = D.load("mnist", "train", data_dir=real_data, val_fraction=0.0)
    test = D.load("mnist", "test", data_dir=real_data)
    assert len(full) == 60000 and len(test) == 10000
    assert full.x.shape == (60000, 1, 28, 28) and full.x.dtype == torch.float32
    assert full.input_shape == (1, 28, 28) and full.num_classes == 10 and full.kind == "image"
    assert full.targets.dtype == torch.long
    assert torch.bincount(full.targets).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.targets).tolist() == MNIST_TEST_COUNTS
    assert float(full.x.min()) == 0.0 and float(full.x.max()) == 1.0
    assert abs(full.x.mean().item() - 0.1307) < 1e-4 and abs(full.x.std().item() - 0.3081) < 1e-4
    x0, y0 = test[0]
    assert x0.shape == (1, 28, 28) and int(y0) == 7  # the famous first test digit


def test_mnist_valid_is_carved_from_train_with_a_fixed_seed(real_data):
    full = D.load("mnist", "train", data_dir=real_data, val_fraction=0.0)
    train = D.load("mnist", "train", data_dir=real_data)
    valid = D.load("mnist", "valid", data_dir=real_data)
    assert (len(train), len(valid)) == (54000, 6000)
    ti, vi = base.carve(60000, "train", 0.1), base.carve(60000, "valid", 0.1)
    assert len(set(ti.tolist()) & set(vi.tolist())) == 0 and len(set(ti.tolist()) | set(vi.tolist())) == 60000
    assert torch.equal(train.x, full.x[ti]) and torch.equal(valid.targets, full.targets[vi])
    assert (torch.bincount(train.targets) + torch.bincount(valid.targets)).tolist() == MNIST_TRAIN_COUNTS
    assert torch.equal(valid.targets, D.load("mnist", "valid", data_dir=real_data).targets)  # fixed seed
    with pytest.raises(UserError, match="val_fraction"):
        D.load("mnist", "valid", data_dir=real_data, val_fraction=0.0)
    with pytest.raises(UserError, match="val_fraction"):
        D.load("mnist", "train", data_dir=real_data, val_fraction=1.5)
    with pytest.raises(UserError, match="does not take"):
        D.load("mnist", "train", data_dir=real_data, batch=3)
    with pytest.raises(UserError, match="unknown split"):
        D.load("mnist", "validation", data_dir=real_data)


def test_dataloader_batches(real_data):
    ds = D.load("mnist", "test", data_dir=real_data)
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=32)))
    assert xb.shape == (32, 1, 28, 28) and yb.shape == (32,)


# ---------------------------------------------------------------------------------- binarized MNIST
def test_binarized_mnist_decoded_sums(real_data):
    means = {"train": 0.13056, "valid": 0.13113, "test": 0.13251}  # SOURCE.md
    for split, n in vision.BINARIZED_SIZES.items():
        ds = D.load("binarized-mnist", split, data_dir=real_data)
        assert len(ds) == n and ds.x.shape == (n, 1, 28, 28) and ds.targets is None
        assert bool(((ds.x == 0) | (ds.x == 1)).all())
        assert abs(ds.x.mean().item() - means[split]) < 5e-6
        flat = ds.x.reshape(n, 784).to(torch.uint8).numpy()
        assert hashlib.sha256(flat.tobytes()).hexdigest() == vision.BINARIZED_SHA256[split]
        assert ds[0].shape == (1, 28, 28)  # unlabeled: an item is x alone


def test_parse_amat():
    a = (np.random.default_rng(0).random((3, 784)) < 0.3).astype(np.uint8)
    text = "\n".join(" ".join(map(str, row)) for row in a) + "\n"
    np.testing.assert_array_equal(vision.parse_amat(text.encode()), a)
    with pytest.raises(UserError, match="784"):
        vision.parse_amat(text.replace(" 0\n", "\n", 1).encode())
    with pytest.raises(UserError, match="unexpected byte"):
        vision.parse_amat(text.replace("1", "2", 1).encode())


# ------------------------------------------------------------------------------------------- CIFAR-10
def make_cifar_archive(path, per_batch=3):
    """A tiny cifar-10-binary.tar.gz: 5 train batches + 1 test batch of ``per_batch`` records each."""
    rng = np.random.default_rng(1)
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        for m in vision.CIFAR10_MEMBERS["train"] + vision.CIFAR10_MEMBERS["test"]:
            labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
            pix = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
            data = np.concatenate([labels[:, None], pix.reshape(per_batch, -1)], 1).tobytes()
            info = tarfile.TarInfo(m)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            truth[m] = (pix, labels)
    return truth


def test_cifar10_binary_parser_on_a_tiny_archive(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    arc = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    truth = make_cifar_archive(arc)
    with pytest.raises(UserError, match="corrupt"):  # the real md5 does not match the tiny archive
        D.load("cifar10", "test", data_dir=tmp_path)
    md5 = files.file_hash(arc, "md5")
    monkeypatch.setitem(vision.CHECKSUMS, "cifar10", {"cifar-10-binary.tar.gz": "md5:" + md5})
    test = D.load("cifar10", "test", data_dir=tmp_path)
    pix, labels = truth["cifar-10-batches-bin/test_batch.bin"]
    assert test.x.shape == (3, 3, 32, 32) and test.input_shape == (3, 32, 32)
    assert torch.equal((test.x * 255).round().to(torch.uint8), torch.from_numpy(pix))  # R, G, B planes
    assert test.targets.tolist() == labels.tolist() and test.classes[0] == "airplane"
    full = D.load("cifar10", "train", data_dir=tmp_path, val_fraction=0.0)
    all_pix = np.concatenate([truth[m][0] for m in vision.CIFAR10_MEMBERS["train"]])
    assert torch.equal((full.x * 255).round().to(torch.uint8), torch.from_numpy(all_pix))
    valid = D.load("cifar10", "valid", data_dir=tmp_path, val_fraction=0.2)
    assert len(valid) == 3 and len(D.load("cifar10", "train", data_dir=tmp_path, val_fraction=0.2)) == 12
    with pytest.raises(UserError, match="multiple"):
        vision.parse_cifar10_bin(b"\x00" * 3074)
    with pytest.raises(UserError, match="out of range"):
        vision.parse_cifar10_bin(b"\x0a" + b"\x00" * 3072)


# --------------------------------------------------------------------------------------------- digits
def test_digits_splits_shapes_ranges():
    from sklearn.datasets import load_digits

    ref = load_digits()
    parts = {s: D.load("digits", s) for s in ("train", "valid", "test")}
    assert sum(len(p) for p in parts.values()) == 1797
    assert (len(parts["test"]), len(parts["valid"])) == (round(0.2 * 1797), round(0.1 * 1797))
    idx = {s: base.carve(1797, s, 0.1, 0.2) for s in parts}
    for a in parts:
        for b in parts:
            if a < b:
                assert not set(idx[a].tolist()) & set(idx[b].tolist())  # disjoint
    for s, ds in parts.items():
        assert ds.x.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
        assert float(ds.x.min()) >= 0 and float(ds.x.max()) <= 1
        np.testing.assert_allclose(ds.x.squeeze(1).numpy() * 16, ref.images[idx[s].numpy()])
        assert ds.targets.tolist() == ref.target[idx[s].numpy()].tolist()
    assert float(parts["train"].x.max()) == 1.0  # 16 / 16


def test_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown data set"):
        D.load("imagenet")


def test_loading_digits_leaves_python_s_random_stream_alone():
    """The first load_digits in a process imports sklearn, whose import can draw from Python's global `random`
    (rich.style does, when rich is installed): the stream must be as before, or a run's RNG state would depend
    on what an earlier run in the same process had imported (the resume contract compares it bitwise)."""
    code = ("import random, sys\n"
            "assert 'sklearn' not in sys.modules\n"
            "from mlcanon.data.vision import load_digits\n"
            "random.seed(1); s = random.getstate()\n"
            "load_digits('train')\n"
            "assert 'sklearn' in sys.modules\n"
            "print(random.getstate() == s)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
