"""Datasets as NumPy arrays with a fixed train/test split, and a reproducible epoch order.

Three datasets, all returned as a :class:`Dataset` of channels-last ``float32`` inputs and
``int32`` labels in ``[0, num_classes)``:

=========  =====================  ===========  ====================================================
name       x_train / x_test       train/test   source
=========  =====================  ===========  ====================================================
mnist1d    ``(N, 40, 1)``         4000/1000    generated locally by the ``mnist1d`` package's
                                               ``make_dataset`` with its default arguments; nothing
                                               is downloaded; cached as ``.npz``
digits     ``(N, 8, 8, 1)``       1437/360     scikit-learn's bundled 8×8 digits, stratified split
mnist      ``(N, 28, 28, 1)``     60000/10000  the standard IDX files in a directory you name
=========  =====================  ===========  ====================================================

Inputs are ready for training as they come:

- **mnist1d** is used as generated: ``make_dataset`` already centres the whole generated set and
  scales it to unit standard deviation (the published MNIST-1D convention, so accuracies compare
  with the paper's), which leaves the training split with mean ≈ 0 and std ≈ 1.
- **digits** pixels (integers 0..16) are divided by 16, **mnist** pixels (0..255) by 255: images
  lie in ``[0, 1]``.

Only the generated MNIST-1D set is cached (the other two are read from files in well under a
second). The cache lives in jaxconv's cache directory (``$JAXCONV_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv``: :func:`jaxconv._io.cache_dir`) unless
``cache_dir`` is given; each file's
name and contents carry a hash of the cache format, the ``mnist1d`` version and the generator's
arguments, so a stale or corrupt file is regenerated, never trusted, and a new file appears
atomically (written to a temporary file, then ``os.replace``).

:func:`epoch_permutation` gives the order of the examples in an epoch as a pure function of
``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import pathlib
import random
import struct
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

from jaxconv import _checks, _io
from jaxconv._checks import _describe

DATASETS = ("mnist1d", "digits", "mnist")

# Bump when the layout or the preprocessing of the cached MNIST-1D arrays changes.
_CACHE_FORMAT = 1
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset with a fixed train/test split.

    Attributes:
      name: one of :data:`DATASETS`.
      x_train: ``(N_train, *input_shape)`` float32, channels-last (the channel axis comes last).
      y_train: ``(N_train,)`` int32 class labels in ``[0, num_classes)``.
      x_test: ``(N_test, *input_shape)`` float32.
      y_test: ``(N_test,)`` int32.
      num_classes: the number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
                raise TypeError(
                    f"x_{split} must be a float32 NumPy array of shape (N, *input_shape), got "
                    f"{_describe(x)}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise TypeError(f"y_{split} must be an int32 NumPy array of shape (N,), got "
                                f"{_describe(y)}")
            if len(x) != len(y):
                raise ValueError(f"x_{split} and y_{split} must hold the same number of examples, "
                                 f"got {len(x)} and {len(y)}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"y_{split} must hold labels in [0, {self.num_classes}), got "
                                 f"labels from {y.min()} to {y.max()}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"x_train and x_test must have the same input shape, got "
                             f"{self.x_train.shape[1:]} and {self.x_test.shape[1:]}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, channels last: ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    @property
    def num_test(self) -> int:
        return len(self.x_test)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a dataset with its fixed train/test split.

    Args:
      name: ``"mnist1d"``, ``"digits"`` or ``"mnist"`` (see :data:`DATASETS`).
      data_dir: for ``"mnist"`` only (required there): the directory holding the four IDX files
        ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
        ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``). Ignored by the others.
      cache_dir: where the generated MNIST-1D set is cached; jaxconv's cache directory
        (:func:`jaxconv._io.cache_dir`) if None.

    Returns:
      A :class:`Dataset`: float32 channels-last inputs (mnist1d ``(N, 40, 1)``, digits
      ``(N, 8, 8, 1)``, mnist ``(N, 28, 28, 1)``), int32 labels in ``[0, 10)``.

    Raises:
      ValueError: an unknown ``name``; ``"mnist"`` without ``data_dir``; a corrupt IDX file.
      FileNotFoundError: ``"mnist"`` whose IDX files are not all in ``data_dir``.
    """
    _checks.choice("dataset", name, DATASETS)
    if name == "mnist1d":
        cache = _io.cache_dir() if cache_dir is None else _path("cache_dir", cache_dir)
        return _load_mnist1d(cache)
    if name == "digits":
        return _load_digits()
    if data_dir is None:
        raise ValueError(
            f"dataset 'mnist' needs data_dir: the directory holding {_mnist_file_list()} "
            f"(download them once from an MNIST mirror; jaxconv never downloads)"
        )
    return _load_mnist(_path("data_dir", data_dir))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` examples: a permutation of ``range(n)``.

    A pure function of ``(seed, epoch, n)`` (a NumPy ``Generator`` seeded with the entropy
    ``[seed, epoch]``), so that a run resumed at any epoch replays exactly the order it would
    have seen, and different epochs see different orders.

    Returns:
      ``(n,)`` int64, each of ``0 .. n-1`` once.
    """
    seed = _checks.non_negative_int("seed", seed)
    epoch = _checks.non_negative_int("epoch", epoch)
    n = _checks.non_negative_int("n", n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """The example indices of every full batch of an epoch, in order (the last partial batch of
    :func:`epoch_permutation` is dropped, so every batch has the same shape under ``jit``).

    Returns:
      ``(n // batch_size, batch_size)`` int64; row ``i`` indexes the examples of batch ``i``.
    """
    n = _checks.non_negative_int("n", n)
    batch_size = _checks.non_negative_int("batch_size", batch_size)
    if batch_size == 0 or batch_size > n:
        raise _checks.invalid("batch_size", f"be between 1 and the number of examples n={n}",
                              batch_size)
    steps = n // batch_size
    return epoch_permutation(seed, epoch, n)[: steps * batch_size].reshape(steps, batch_size)


# --- MNIST-1D -------------------------------------------------------------------------------


def _mnist1d_args() -> dict[str, Any]:
    """The generator's default arguments (``get_dataset_args``), less its unused download URL."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    return args


def _mnist1d_key(args: dict[str, Any]) -> str:
    """A hash of everything the cached arrays depend on."""
    from importlib.metadata import version

    spec = {"format": _CACHE_FORMAT, "generator": "mnist1d.data.make_dataset",
            "mnist1d": version("mnist1d"), "args": args}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _mnist1d_split_sizes(args: dict[str, Any]) -> tuple[int, int]:
    """Train and test sizes ``make_dataset`` produces: 10 classes × ``num_samples // 10``."""
    total = args["num_samples"] // 10 * 10
    n_train = int(total * args["train_split"])
    return n_train, total - n_train


def _generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run ``mnist1d``'s generator (it seeds the global NumPy and ``random`` RNGs with
    ``args["seed"]``; their previous states are restored afterwards)."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": raw["x"].astype(np.float32)[..., None],
        "y_train": raw["y"].astype(np.int32),
        "x_test": raw["x_test"].astype(np.float32)[..., None],
        "y_test": raw["y_test"].astype(np.int32),
    }


def _read_mnist1d_cache(path: pathlib.Path, key: str, args: dict[str, Any]) -> dict | None:
    """The cached arrays if ``path`` holds a complete, intact cache for ``key``; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    length = args["final_seq_length"]
    for split, n in zip(("train", "test"), _mnist1d_split_sizes(args), strict=True):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if (x.shape != (n, length, 1) or x.dtype != np.float32 or not np.isfinite(x).all()
                or y.shape != (n,) or y.dtype != np.int32 or y.min() < 0 or y.max() >= 10):
            return None
    return arrays


def _write_atomically(path: pathlib.Path, arrays: dict[str, Any]) -> None:
    """Write an ``.npz`` to a temporary file beside ``path``, then move it into place."""
    with _io.atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _load_mnist1d(cache_dir: pathlib.Path) -> Dataset:
    args = _mnist1d_args()
    key = _mnist1d_key(args)
    path = cache_dir / f"mnist1d-{key[:16]}.npz"
    arrays = _read_mnist1d_cache(path, key, args)
    if arrays is None:
        arrays = _generate_mnist1d(args)
        try:
            _write_atomically(path, {"key": np.asarray(key), **arrays})
        except OSError as err:
            warnings.warn(f"could not cache MNIST-1D in {path} ({err}); using the generated "
                          f"data uncached", RuntimeWarning, stacklevel=3)
    return Dataset(name="mnist1d", num_classes=10, **arrays)


# --- scikit-learn digits --------------------------------------------------------------------


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_DIGITS_TEST_FRACTION, stratify=y, random_state=_DIGITS_SPLIT_SEED
    )
    return Dataset(name="digits", x_train=x_train, y_train=y_train, x_test=x_test,
                   y_test=y_test, num_classes=10)


# --- MNIST from IDX files -------------------------------------------------------------------

# IDX type codes (third byte of the magic number) -> big-endian element types.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzipped, into a native-endian array.

    The format: a magic number of two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64) and the number of dimensions ``d``; then ``d``
    big-endian uint32 sizes; then the elements, big-endian, in C order. A gzip stream is
    recognised by its own magic bytes, whatever the file is called.

    Raises:
      ValueError: the file is not IDX, or is truncated, or has bytes beyond its data.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path} is a corrupt or truncated gzip file ({err})") from None
    if len(raw) < 4:
        raise ValueError(f"{path} is not an IDX file: it has {len(raw)} bytes, fewer than the "
                         f"4-byte magic number")
    if raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path} is not an IDX file: its magic number is 0x{raw[:4].hex()}, expected "
            f"0x0000 then a type code in {{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} "
            f"then a dimension count >= 1"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header promises {ndim} dimension sizes "
                         f"({header} bytes) but the file has {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, got = math.prod(dims) * dtype.itemsize, len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise ValueError(f"{path} is {what}: shape {dims} of {dtype.name} needs {expected} data "
                         f"bytes, the file has {got}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _mnist_file_list() -> str:
    return ", ".join(f"{f}[.gz]" for f in MNIST_FILES)


def _find_mnist_files(data_dir: pathlib.Path) -> list[pathlib.Path]:
    """The four IDX files in ``data_dir`` (raw preferred over ``.gz``), or one clear error."""
    found, missing = [], []
    for stem in MNIST_FILES:
        candidates = [data_dir / stem, data_dir / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        (found if hit else missing).append(hit or stem)
    if missing:
        state = "" if data_dir.is_dir() else " (which is not an existing directory)"
        raise FileNotFoundError(
            f"MNIST needs {_mnist_file_list()} in {data_dir}{state}; missing: "
            f"{', '.join(missing)}"
        )
    return found


def _load_mnist(data_dir: pathlib.Path) -> Dataset:
    train_images, train_labels, test_images, test_labels = _find_mnist_files(data_dir)
    splits = {}
    for split, image_path, label_path in (("train", train_images, train_labels),
                                          ("test", test_images, test_labels)):
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"{image_path} must hold uint8 images of shape (N, rows, cols), got "
                             f"{images.dtype} of shape {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(f"{label_path} must hold uint8 labels of shape (N,), got "
                             f"{labels.dtype} of shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds "
                             f"{len(labels)} labels")
        if labels.size and labels.max() >= 10:
            raise ValueError(f"{label_path} must hold digit labels 0..9, found {labels.max()}")
        splits[f"x_{split}"] = (images / np.float32(255)).astype(np.float32)[..., None]
        splits[f"y_{split}"] = labels.astype(np.int32)
    if splits["x_train"].shape[1:] != splits["x_test"].shape[1:]:
        raise ValueError(f"{train_images} and {test_images} hold images of different sizes: "
                         f"{splits['x_train'].shape[1:3]} and {splits['x_test'].shape[1:3]}")
    return Dataset(name="mnist", num_classes=10, **splits)


# --- argument checks ------------------------------------------------------------------------


def _path(name: str, value: Any) -> pathlib.Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {_describe(value)}")
    return pathlib.Path(value).expanduser()
