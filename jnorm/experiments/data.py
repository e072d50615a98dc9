"""Data loading: scikit-learn's bundled digits (no download) or a user ``.npz``.

Images are returned NHWC float32, standardised with the mean and standard deviation of the
training split (one scalar each, so images still look like images), with a fixed split. Labels
may be any integers: they are mapped to ``0 … K−1`` in sorted order, ``K`` being the number of
distinct labels (the models' head size). Every problem with a file raises :class:`DataError`
with a one-line message, before any training.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["MIN_TRAIN", "DataError", "Dataset", "load_dataset", "load_digits_dataset",
           "load_npz"]

#: The suite trains with batches of up to 128 examples, so it needs at least this many.
MIN_TRAIN = 128


class DataError(ValueError):
    """A data file the suite cannot use; the message says why and what to do."""


class Dataset(NamedTuple):
    """A fixed train/test split of NHWC float32 images with int32 labels ``0 … K−1``."""

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
    def chance(self) -> float:
        """Test accuracy of always predicting the most frequent test class."""
        return float(np.bincount(self.y_test).max() / len(self.y_test))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def describe(self) -> str:
        """One line: name, sizes and shapes."""
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test images of "
                f"shape {self.image_shape}, {self.num_classes} classes")


def _images(a: np.ndarray, what: str, where: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} must be numeric; got dtype {a.dtype}")
    a = np.asarray(a, np.float32)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise DataError(f"{where}: {what} must have shape (N, H, W) or (N, H, W, C); "
                        f"got {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{where}: {what} has {int((~np.isfinite(a)).sum())} NaN or infinite "
                        "values; remove or replace them")
    return a


def _labels(a: np.ndarray, what: str, where: str) -> np.ndarray:
    a = np.asarray(a).reshape(-1) if np.ndim(a) else np.asarray(a).reshape(1)
    if a.dtype.kind == "f":
        if not (np.isfinite(a).all() and np.all(a == np.round(a))):
            raise DataError(f"{where}: {what} must be whole numbers (class indices); got "
                            "non-integer floats")
    elif a.dtype.kind not in "biu":
        raise DataError(f"{where}: {what} must be integer class indices; got dtype {a.dtype} "
                        "(map strings to 0 … K−1 first)")
    return a.astype(np.int64)


def _finish(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, name: str,
            where: str) -> Dataset:
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "test")):
        if len(x) != len(y):
            raise DataError(f"{where}: {len(x)} {split} images but {len(y)} labels")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{where}: train images {xtr.shape[1:]} and test images "
                        f"{xte.shape[1:]} differ in shape")
    if len(xtr) < MIN_TRAIN or len(xte) < 1:
        raise DataError(f"{where}: need at least {MIN_TRAIN} training images and 1 test image; "
                        f"got {len(xtr)} and {len(xte)}")
    classes = np.unique(np.concatenate([ytr, yte]))
    if len(classes) < 2:
        raise DataError(f"{where}: the labels hold a single class ({classes.tolist()}); need "
                        "at least 2")
    ytr, yte = (np.searchsorted(classes, y).astype(np.int32) for y in (ytr, yte))
    mean, std = float(xtr.mean()), float(xtr.std())
    std = std if std > 1e-8 else 1.0
    return Dataset((xtr - mean) / std, ytr, (xte - mean) / std, yte, name)


def _split(images: np.ndarray, labels: np.ndarray, name: str, test_fraction: float,
           seed: int, where: str) -> Dataset:
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = round(test_fraction * len(images))
    test, train = order[:n_test], order[n_test:]
    return _finish(images[train], labels[train], images[test], labels[test], name, where)


def load_digits_dataset(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8×8 handwritten digits as NHWC ``(N, 8, 8, 1)``, fixed split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _split(_images(digits.images, "images", "digits"),
                  _labels(digits.target, "labels", "digits"), "digits", test_fraction, seed,
                  "digits")


def load_npz(path: str | Path, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Loads a ``.npz`` holding either ``images``/``labels`` (split here, fixed seed) or
    ``x_train``/``y_train``/``x_test``/``y_test`` (used as given, standardised by train).

    Raises:
      DataError: missing or unreadable file, wrong keys, non-numeric or non-finite images,
        non-integer labels, mismatched sizes, fewer than :data:`MIN_TRAIN` training images or
        fewer than two classes.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError(f"{where}: no such file")
    if not path.is_file():
        raise DataError(f"{where}: not a file (a directory?); pass a .npz file")
    save = "save one with numpy.savez(path, images=..., labels=...)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
        if head.startswith(b"\x93NUMPY"):
            raise DataError(f"{where}: holds a single array (.npy), not an .npz archive; {save}")
        if not head.startswith(b"PK"):  # every zip archive, hence every .npz, starts so
            raise DataError(f"{where}: not an .npz archive (no zip header: is it the right "
                            f"file?); {save}")
        f = np.load(path, allow_pickle=False)
        with f:
            arrays = {k: f[k] for k in f.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{where}: not a readable .npz archive ({first}); {save}") from None
    keys = set(arrays)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        return _finish(_images(arrays["x_train"], "x_train", where),
                       _labels(arrays["y_train"], "y_train", where),
                       _images(arrays["x_test"], "x_test", where),
                       _labels(arrays["y_test"], "y_test", where), path.stem, where)
    if {"images", "labels"} <= keys:
        return _split(_images(arrays["images"], "images", where),
                      _labels(arrays["labels"], "labels", where), path.stem, test_fraction,
                      seed, where)
    raise DataError(f"{where}: expected arrays 'images' and 'labels' (or x_train, y_train, "
                    f"x_test, y_test); found {sorted(keys)}")


def load_dataset(path: str | Path | None = None) -> Dataset:
    """The default digits dataset, or the ``.npz`` at ``path``."""
    return load_digits_dataset() if path is None else load_npz(path)
