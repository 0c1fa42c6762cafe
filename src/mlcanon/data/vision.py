"""Image data sets: MNIST, Fashion-MNIST, CIFAR-10 (binary version), binarized MNIST, sklearn digits.

Every parser uses numpy on raw bytes (no unpickling). Images come out float32 in [0, 1], [N, C, H, W].
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import random
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mlcanon.data.base import ArrayDataset, carve, check_fraction, check_split, reject_options
from mlcanon.data.files import fetch, fetch_all, find_file
from mlcanon.errors import UserError

# Official file names and md5 sums (the well-known ones, as torchvision lists them).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
}
CHECKSUMS = {"mnist": MNIST_FILES, "fashion-mnist": FASHION_MNIST_FILES,
             "cifar10": {"cifar-10-binary.tar.gz": "md5:c32a1d4ab5d03f1284b67883e8d87530"}}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

#: sha256 of the decoded (N, 784) uint8 0/1 arrays of binarized MNIST (SOURCE.md), independent of format.
BINARIZED_SHA256 = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}
BINARIZED_SIZES = {"train": 50000, "valid": 10000, "test": 10000}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------------------------------------- IDX
def parse_idx(data: bytes, source: str = "IDX data", expect_ndim: int | None = None) -> np.ndarray:
    """Parse an (uncompressed) IDX file: magic ``00 00 <dtype> <ndim>``, ndim big-endian int32 sizes, data.

    MNIST labels have magic 2049 (0x00000801: uint8, 1-D), images 2051 (0x00000803: uint8, 3-D).
    Raises UserError on a bad magic number, unexpected rank or a size that disagrees with the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise UserError(f"{source} is not an IDX file (magic number {magic!r}; expected 0x0000TTNN, e.g. "
                        f"2049 for labels, 2051 for images). Delete it so it is downloaded again.")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise UserError(f"{source}: IDX magic number {int.from_bytes(data[:4], 'big')} says {ndim}-D, "
                        f"expected {expect_ndim}-D ({2048 + expect_ndim}). Wrong or corrupt file: delete it.")
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(data[4:header], dtype=">i4"))
    n = int(np.prod(shape)) * dtype.itemsize
    if len(data) != header + n:
        raise UserError(f"{source}: IDX header says shape {shape} ({header + n} bytes), file has {len(data)} "
                        f"bytes. The file is truncated or corrupt: delete it so it is downloaded again.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _gunzip(path: Path) -> bytes:
    """Decompress a .gz file; UserError if it is not valid gzip."""
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a valid gzip file ({e}). Delete it so it is downloaded again.") from e


@functools.lru_cache(maxsize=8)
def _read_idx_gz(path: str, expect_ndim: int, _stamp: tuple) -> np.ndarray:
    """Parsed IDX array of a .gz file (cached per path, size and mtime)."""
    return parse_idx(_gunzip(Path(path)), source=path, expect_ndim=expect_ndim)


def read_idx_gz(path: Path, expect_ndim: int) -> np.ndarray:
    """Parse a gzip-compressed IDX file (cached in memory while the file is unchanged)."""
    st = path.stat()
    return _read_idx_gz(str(path), expect_ndim, (st.st_size, st.st_mtime_ns))


def _train_valid(x: torch.Tensor, y: torch.Tensor, split: str, val_fraction: float):
    """The official train set minus (``train``) or only (``valid``) the fixed-seed validation carve-out."""
    if split == "test":
        check_fraction("val_fraction", val_fraction)
        return x, y
    idx = carve(len(x), split, val_fraction)
    return x[idx], y[idx]


def load_mnist_like(name: str, split: str, data_dir=None, val_fraction: float = 0.1) -> ArrayDataset:
    """MNIST / Fashion-MNIST: 60,000 train + 10,000 test 28x28 grey images, 10 classes.

    ``valid`` is the fixed-seed ``val_fraction`` of the official train set, which ``train`` then excludes.
    """
    check_split(split)
    files = CHECKSUMS[name]
    prefix = "t10k" if split == "test" else "train"
    img_file, lab_file = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
    paths = fetch_all(name, {img_file: files[img_file], lab_file: files[lab_file]}, data_dir)
    images = read_idx_gz(paths[img_file], 3)
    labels = read_idx_gz(paths[lab_file], 1)
    if len(images) != len(labels):
        raise UserError(f"{name}: {img_file} has {len(images)} images but {lab_file} {len(labels)} labels")
    if split != "test":                      # carve the split out of the uint8 array: only it is converted
        idx = carve(len(images), split, val_fraction).numpy()
        images, labels = images[idx], labels[idx]
    else:
        check_fraction("val_fraction", val_fraction)
    x = torch.from_numpy(np.divide(images, np.float32(255.0), dtype=np.float32)).unsqueeze(1)   # [N, 1, 28, 28]
    y = torch.from_numpy(labels.astype(np.int64))
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return ArrayDataset(x, y, name=name, split=split, kind="image", num_classes=10, classes=classes)


# ------------------------------------------------------------------------------------------ CIFAR-10
CIFAR10_MEMBERS = {"train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
                   "test": ["cifar-10-batches-bin/test_batch.bin"]}


def parse_cifar10_bin(data: bytes, source: str = "CIFAR-10 batch") -> tuple[np.ndarray, np.ndarray]:
    """Parse a CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B)."""
    rec = 1 + 3 * 32 * 32
    if len(data) == 0 or len(data) % rec:
        raise UserError(f"{source}: {len(data)} bytes is not a multiple of the {rec}-byte CIFAR-10 record")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, rec)
    labels = arr[:, 0]
    if labels.max() > 9:
        raise UserError(f"{source}: label {int(labels.max())} out of range 0..9; the file is corrupt")
    return arr[:, 1:].reshape(-1, 3, 32, 32), labels  # channel-major rows, so [N, 3, 32, 32] directly


@functools.lru_cache(maxsize=2)
def _read_cifar10(path: str, _stamp: tuple) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits from cifar-10-binary.tar.gz, read member by member in memory (nothing extracted)."""
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for split, members in CIFAR10_MEMBERS.items():
                xs, ys = [], []
                for m in members:
                    f = tar.extractfile(m)
                    if f is None:
                        raise UserError(f"{path}: member {m} is not a regular file")
                    x, y = parse_cifar10_bin(f.read(), f"{path}:{m}")
                    xs.append(x)
                    ys.append(y)
                out[split] = (np.concatenate(xs), np.concatenate(ys))
    except KeyError as e:
        raise UserError(f"{path} lacks {e}: not the CIFAR-10 binary archive; delete it.") from e
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a readable tar.gz ({e}); delete it so it is downloaded again.") from e
    return out


def load_cifar10(split: str, data_dir=None, val_fraction: float = 0.1) -> ArrayDataset:
    """CIFAR-10 from the binary archive: 50,000 train + 10,000 test 3x32x32 colour images, 10 classes."""
    check_split(split)
    path = fetch("cifar10", "cifar-10-binary.tar.gz", data_dir,
                 checksum=CHECKSUMS["cifar10"]["cifar-10-binary.tar.gz"])
    st = path.stat()
    images, labels = _read_cifar10(str(path), (st.st_size, st.st_mtime_ns))["test" if split == "test" else "train"]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    x, y = _train_valid(x, y, split, val_fraction)
    return ArrayDataset(x, y, name="cifar10", split=split, kind="image", num_classes=10, classes=CIFAR10_CLASSES)


# ----------------------------------------------------------------------------------- binarized MNIST
def parse_amat(data: bytes, source: str = "amat file") -> np.ndarray:
    """Parse a binarized-MNIST .amat text file (one image a line, 784 space-separated 0/1) to uint8 (N, 784)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    digit = (arr == ord("0")) | (arr == ord("1"))
    space = np.isin(arr, np.frombuffer(b" \t\r\n", dtype=np.uint8))
    if not np.all(digit | space):
        bad = int(np.flatnonzero(~(digit | space))[0])
        raise UserError(f"{source}: unexpected byte {data[bad:bad + 1]!r} at offset {bad}; expected 0/1 text")
    counts = np.cumsum(digit)[np.flatnonzero(arr == ord("\n"))]  # digits seen up to each newline
    per_line = np.diff(np.concatenate([[0], counts, [int(digit.sum())]]))
    per_line = per_line[per_line > 0]  # blank lines carry no values
    if len(per_line) == 0 or np.any(per_line != 784):
        raise UserError(f"{source}: lines hold {sorted(set(per_line.tolist()))[:5]} values, expected 784 each")
    return (arr[digit] - ord("0")).astype(np.uint8).reshape(len(per_line), 784)


def _sha256(a: np.ndarray) -> str:
    """sha256 of a C-contiguous array's bytes."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _check_binarized(a: np.ndarray, split: str, source: str) -> None:
    """UserError unless the decoded array's sha256 is the one SOURCE.md gives for ``split``."""
    got = _sha256(a)
    if got != BINARIZED_SHA256[split]:
        raise UserError(f"{source}: decoded {split} array has sha256 {got}, expected {BINARIZED_SHA256[split]}; "
                        f"the file is corrupt or not the Larochelle binarization. Delete it.")


@functools.lru_cache(maxsize=3)
def _read_binarized(path: str, split: str, _stamp: tuple) -> np.ndarray:
    """Decoded (N, 784) 0/1 uint8 array of one split, from the npz (packed bits) or the official .amat."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            if split not in z.files:
                raise UserError(f"{path} has no array {split!r} (keys: {z.files})")
            a = np.unpackbits(z[split], axis=1)[:, :784]  # rows were np.packbits'ed to 98 bytes
    else:
        a = parse_amat(Path(path).read_bytes(), path)
    _check_binarized(a, split, path)
    return a


def load_binarized_mnist(split: str, data_dir=None) -> ArrayDataset:
    """Binarized MNIST (Larochelle & Murray 2011): 50,000 / 10,000 / 10,000, [N, 1, 28, 28] of 0/1, no labels.

    Uses ``binarized-mnist/binarized_mnist.npz`` (packed bits, as in the shared data folder) when present in
    any searched folder; otherwise the official ``binarized_mnist_<split>.amat`` text file, downloaded and
    verified by the sha256 of the decoded array.
    """
    check_split(split)
    npz = find_file("binarized-mnist", "binarized_mnist.npz", data_dir)
    if npz is not None:
        path = npz
    else:
        fname = f"binarized_mnist_{split}.amat"

        def check(p: Path) -> None:
            _check_binarized(parse_amat(p.read_bytes(), fname), split, fname)

        path = fetch("binarized-mnist", fname, data_dir, check=check)
    st = path.stat()
    a = _read_binarized(str(path), split, (st.st_size, st.st_mtime_ns))
    x = torch.from_numpy(a.astype(np.float32)).reshape(-1, 1, 28, 28)
    return ArrayDataset(x, None, name="binarized-mnist", split=split, kind="image")


# -------------------------------------------------------------------------------------------- digits
def load_digits(split: str, val_fraction: float = 0.1, test_fraction: float = 0.2) -> ArrayDataset:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16 scaled to [0, 1]), 10 classes.

    Split by a fixed-seed permutation (plain, not stratified): ``test_fraction`` (20%) test, ``val_fraction``
    (10%) valid, the rest (70%) train; the three are disjoint.
    """
    check_split(split)
    # lazy: sklearn is slow to import. Its import can draw from Python's global `random` (with `rich` installed,
    # rich.style takes getrandbits(24) when imported): the stream is put back, so a run's random state does not
    # depend on whether an earlier run in this process had imported sklearn (resume compares it bitwise)
    state = random.getstate()
    from sklearn.datasets import load_digits as _sk_load_digits
    random.setstate(state)

    d = _sk_load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = carve(len(x), split, val_fraction, test_fraction)
    return ArrayDataset(x[idx], y[idx], name="digits", split=split, kind="image", num_classes=10,
                        classes=[str(i) for i in range(10)])


def load(name: str, split: str, data_dir=None, **options) -> ArrayDataset:
    """Dispatch for the image data sets (see :func:`mlcanon.data.load`)."""
    if name in ("mnist", "fashion-mnist"):
        reject_options(name, options, ("val_fraction",))
        return load_mnist_like(name, split, data_dir, **options)
    if name == "cifar10":
        reject_options(name, options, ("val_fraction",))
        return load_cifar10(split, data_dir, **options)
    if name == "binarized-mnist":
        reject_options(name, options, ())
        return load_binarized_mnist(split, data_dir)
    if name == "digits":
        reject_options(name, options, ("val_fraction", "test_fraction"))
        return load_digits(split, **options)
    raise KeyError(name)


__all__ = ["load", "parse_amat", "parse_cifar10_bin", "parse_idx", "read_idx_gz"]
