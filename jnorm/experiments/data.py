"""Data loading: scikit-learn's bundled digits (no download) or a user ``.npz``.

Images are returned NHWC float32, standardised with the mean and standard deviation of the
training split (one scalar each, so images still look like images), with a fixed split.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "load_dataset", "load_digits_dataset", "load_npz"]


class Dataset(NamedTuple):
    """A fixed train/test split of NHWC float32 images with int32 labels."""

    x_train: np.ndarray  # shape=(n_train, H, W, C), dtype=float32
    y_train: np.ndarray  # shape=(n_train,), dtype=int32
    x_test: np.ndarray  # shape=(n_test, H, W, C), dtype=float32
    y_test: np.ndarray  # shape=(n_test,), dtype=int32
    name: str

    @property
    def num_classes(self) -> int:
        """Number of classes (max label + 1 over both splits)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def describe(self) -> str:
        """One line: name, sizes and shapes."""
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test images of "
                f"shape {self.image_shape}, {self.num_classes} classes")


def _split_and_standardize(images: np.ndarray, labels: np.ndarray, name: str,
                           test_fraction: float, seed: int) -> Dataset:
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C); got {images.shape}")
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_test = round(test_fraction * len(images))
    test, train = order[:n_test], order[n_test:]
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / max(float(std), 1e-8)
    return Dataset(images[train], labels[train], images[test], labels[test], name)


def load_digits_dataset(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8×8 handwritten digits as NHWC ``(N, 8, 8, 1)``, fixed split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _split_and_standardize(digits.images, digits.target, "digits", test_fraction, seed)


def load_npz(path: str | Path, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Loads a ``.npz`` holding either ``images``/``labels`` (split here, fixed seed) or
    ``x_train``/``y_train``/``x_test``/``y_test`` (used as given, standardised by train)."""
    with np.load(path) as f:
        keys = set(f.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            xtr, xte = np.asarray(f["x_train"], np.float32), np.asarray(f["x_test"], np.float32)
            if xtr.ndim == 3:
                xtr, xte = xtr[..., None], xte[..., None]
            mean, std = xtr.mean(), max(float(xtr.std()), 1e-8)
            return Dataset((xtr - mean) / std, f["y_train"].astype(np.int32).reshape(-1),
                           (xte - mean) / std, f["y_test"].astype(np.int32).reshape(-1),
                           Path(path).stem)
        if {"images", "labels"} <= keys:
            return _split_and_standardize(f["images"], f["labels"], Path(path).stem,
                                          test_fraction, seed)
    raise ValueError(f"{path}: expected arrays 'images' and 'labels' (or x_train, y_train, "
                     f"x_test, y_test); found {sorted(keys)}")


def load_dataset(path: str | Path | None = None) -> Dataset:
    """The default digits dataset, or the ``.npz`` at ``path``."""
    return load_digits_dataset() if path is None else load_npz(path)
