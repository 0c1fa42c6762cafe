"""Data sets, tokenizers and image utilities (DESIGN.md section 6).

``load(name, split, data_dir=None, **options)`` returns a ``torch.utils.data.Dataset`` with ``.x`` and,
where labels exist, ``.targets``; plus ``name``, ``split``, ``num_classes``, ``input_shape``, ``kind``.

| name | kind | splits | options |
| --- | --- | --- | --- |
| ``mnist``, ``fashion-mnist`` | image [1, 28, 28] | valid = fixed-seed 10% of train | ``val_fraction`` |
| ``cifar10`` | image [3, 32, 32] | valid = fixed-seed 10% of train | ``val_fraction`` |
| ``binarized-mnist`` | image [1, 28, 28], 0/1, no labels | official 50k / 10k / 10k | |
| ``digits`` | image [1, 8, 8] | fixed-seed 70 / 10 / 20 % | ``val_fraction``, ``test_fraction`` |
| ``toy2d:<set>`` | points [2], no labels | independent draws | ``n``, ``noise``, ``seed`` |
| ``text:tinyshakespeare``, ``text:<PATH>`` | text windows | 90 / 5 / 5 % by characters | ``tokenizer``, ``vocab_size``, ``block_size``, ``val_fraction``, ``test_fraction``, ``standardize`` |

Files are looked for in ``data_dir``, ``$MLCANON_DATA``, ``~/.cache/mlcanon`` (see :mod:`mlcanon.data.files`).
Importing this package is light: scikit-learn and matplotlib are imported only when used.
"""

from __future__ import annotations

from mlcanon.data import files, images, text, tokenizers, toy2d, vision
from mlcanon.data.base import ArrayDataset, reject_options
from mlcanon.data.files import MIRRORS, data_dirs
from mlcanon.errors import UserError

IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10", "binarized-mnist", "digits")
NAMES = IMAGE_SETS + ("toy2d:<moons|8gaussians|checkerboard|swissroll|rings>", "text:<tinyshakespeare|PATH>")


def load(name: str, split: str = "train", data_dir=None, **options):
    """Load data set ``name``'s ``split`` ("train" | "valid" | "test"); see the module table for options."""
    if not isinstance(name, str):
        raise UserError(f"data set name must be a string, got {name!r}")
    if name in IMAGE_SETS:
        return vision.load(name, split, data_dir, **options)
    if name.startswith("toy2d:"):
        return toy2d.load_dataset(name.split(":", 1)[1], split, **options)
    if name.startswith("text:") and len(name) > 5:
        allowed = ("tokenizer", "vocab_size", "block_size", "val_fraction", "test_fraction", "standardize")
        reject_options(name, options, allowed)
        return text.load(name.split(":", 1)[1], split, data_dir, **options)
    raise UserError(f"unknown data set {name!r}: use one of {', '.join(NAMES)}")


__all__ = [
    "MIRRORS",
    "NAMES",
    "ArrayDataset",
    "data_dirs",
    "files",
    "images",
    "load",
    "text",
    "tokenizers",
    "toy2d",
    "vision",
]
