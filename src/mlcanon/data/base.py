"""The dataset container shared by image and point data sets, and the fixed-seed train/valid carving."""

from __future__ import annotations

import torch

from mlcanon.errors import UserError

#: Seed of the permutation that carves ``valid`` out of ``train`` where a set has no official split.
SPLIT_SEED = 0

SPLITS = ("train", "valid", "test")


class ArrayDataset(torch.utils.data.Dataset):
    """In-memory dataset: ``.x`` [N, ...] and optional ``.targets`` [N] (LongTensor), with metadata.

    ``ds[i]`` is ``(x[i], targets[i])``, or ``x[i]`` alone when the set is unlabeled (``targets is None``).
    Attributes: ``name``, ``split``, ``num_classes`` (int or None), ``input_shape`` (tuple),
    ``kind`` ("image" | "points"), ``classes`` (class names or None).
    """

    def __init__(self, x: torch.Tensor, targets: torch.Tensor | None, *, name: str, split: str,
                 kind: str, num_classes: int | None = None, classes: list[str] | None = None):
        if targets is not None and len(targets) != len(x):
            raise ValueError(f"x has {len(x)} rows but targets {len(targets)}")  # internal bug, not user input
        self.x = x
        self.targets = targets
        self.name = name
        self.split = split
        self.kind = kind
        self.num_classes = num_classes
        self.classes = classes
        self.input_shape = tuple(x.shape[1:])

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.x)

    def __getitem__(self, i):
        """``(x[i], y[i])``, or ``x[i]`` for unlabeled data."""
        if self.targets is None:
            return self.x[i]
        return self.x[i], self.targets[i]

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}, kind={self.kind!r})")


def check_split(split: str) -> None:
    """UserError unless ``split`` is one of train / valid / test."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def check_fraction(name: str, value: float, *, allow_zero: bool = True) -> float:
    """UserError unless ``0 <= value < 1`` (or ``0 < value < 1``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number in [0, 1), got {value!r}")
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value < 1):
        raise UserError(f"{name} must be in {'[' if allow_zero else '('}0, 1), got {value}")
    return float(value)


def carve(n: int, split: str, val_fraction: float, test_fraction: float = 0.0) -> torch.Tensor:
    """Sorted indices of ``split`` among ``n`` examples, from a permutation with the fixed :data:`SPLIT_SEED`.

    The permutation's first ``round(test_fraction*n)`` indices are test, the next ``round(val_fraction*n)``
    are valid, the rest train; so the three are disjoint and the same on every call and machine.
    """
    val_fraction = check_fraction("val_fraction", val_fraction)
    test_fraction = check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise UserError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    parts = {"test": perm[:n_test], "valid": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    idx = parts[split]
    if len(idx) == 0:
        raise UserError(f"split {split!r} is empty with val_fraction={val_fraction}: set val_fraction > 0")
    return idx.sort().values


def reject_options(name: str, options: dict, allowed: tuple[str, ...]) -> None:
    """UserError naming any option ``load`` got that data set ``name`` does not take."""
    bad = sorted(set(options) - set(allowed))
    if bad:
        ok = ", ".join(allowed) if allowed else "none"
        raise UserError(f"data set {name!r} does not take option(s) {', '.join(bad)}; it takes: {ok}")
