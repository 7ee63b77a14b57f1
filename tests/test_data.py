"""Tests for jaxconv.data: shapes, dtypes, determinism, the MNIST-1D cache, the IDX reader and
the epoch order. Every cache lives under pytest's tmp_path, never the user's real cache."""

from __future__ import annotations

import gzip
import pathlib
import random
import struct

import numpy as np
import pytest

from jaxconv import _io, data

# --- helpers --------------------------------------------------------------------------------

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
          np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, written from the format's definition (not by jaxconv)."""
    array = np.asarray(array)
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: pathlib.Path, array: np.ndarray, *, gz: bool = False) -> pathlib.Path:
    raw = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(directory: pathlib.Path, *, gz: bool = False, n_train: int = 12, n_test: int = 5,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Write four small MNIST-shaped IDX files and return what they hold."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # the extremes map to exactly 1 and 0
    arrays["train-images-idx3-ubyte"][0, 0, 1] = 0
    for name, array in arrays.items():
        write_idx(directory / name, array, gz=gz)
    return arrays


def only_cache_file(cache_dir: pathlib.Path) -> pathlib.Path:
    files = sorted(cache_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mnist1d-"), files
    assert files[0].suffix == ".npz"
    return files[0]


@pytest.fixture(scope="session")
def mnist1d_cached(tmp_path_factory):
    """MNIST-1D generated once per session into a private cache directory."""
    cache_dir = tmp_path_factory.mktemp("jaxconv-cache")
    return data.load("mnist1d", cache_dir=cache_dir), cache_dir


@pytest.fixture
def counted_generator(monkeypatch, mnist1d_cached):
    """Replace the (slow) generator with one that returns the session's arrays and counts calls,
    for tests of the cache logic alone."""
    ds, _ = mnist1d_cached
    calls = []

    def generate(args):
        calls.append(args)
        return {k: getattr(ds, k).copy() for k in ("x_train", "y_train", "x_test", "y_test")}

    monkeypatch.setattr(data, "_generate_mnist1d", generate)
    return calls


def assert_same(a: data.Dataset, b: data.Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


# --- MNIST-1D -------------------------------------------------------------------------------


def test_mnist1d_shapes_dtypes_and_split(mnist1d_cached):
    ds, _ = mnist1d_cached
    assert ds.name == "mnist1d" and ds.num_classes == 10
    assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
    assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.input_shape == (40, 1) and (ds.num_train, ds.num_test) == (4000, 1000)
    # 500 examples of each digit in all, shuffled across the split.
    counts = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, 500))
    assert np.bincount(ds.y_train).min() > 350
    # Used as generated: centred and unit-scaled, so the training split is close to standard.
    assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()
    assert abs(ds.x_train.mean()) < 0.01 and abs(ds.x_train.std() - 1) < 0.01
    assert "train=4000" in repr(ds) and "input_shape=(40, 1)" in repr(ds)


def test_mnist1d_matches_the_package_generator_with_its_default_args(mnist1d_cached):
    """The cached arrays are exactly mnist1d's make_dataset(get_dataset_args()), cast."""
    from mnist1d.data import get_dataset_args, make_dataset

    ds, _ = mnist1d_cached
    state = np.random.get_state()
    try:
        raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(ds.x_train[..., 0], raw["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.x_test[..., 0], raw["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, raw["y"])
    np.testing.assert_array_equal(ds.y_test, raw["y_test"])


def test_mnist1d_regenerates_a_truncated_cache_deterministically(tmp_path, mnist1d_cached):
    """A real regeneration (no stand-in generator), after the cache file was cut short and the
    global RNGs were moved: the same arrays come back, and the global RNGs are left alone."""
    ds, session_dir = mnist1d_cached
    good = only_cache_file(session_dir)
    path = tmp_path / good.name
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    np.random.seed(123)
    random.seed(456)
    np_before, py_before = np.random.get_state(), random.getstate()
    again = data.load("mnist1d", cache_dir=tmp_path)
    assert_same(ds, again)
    assert only_cache_file(tmp_path) == path and path.read_bytes() == good.read_bytes()
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert random.getstate() == py_before


def test_mnist1d_cache_is_written_once_and_reused(tmp_path, counted_generator, mnist1d_cached):
    first = data.load("mnist1d", cache_dir=tmp_path / "nested" / "cache")
    assert len(counted_generator) == 1
    path = only_cache_file(tmp_path / "nested" / "cache")  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    second = data.load("mnist1d", cache_dir=tmp_path / "nested" / "cache")
    assert len(counted_generator) == 1, "a valid cache must not be regenerated"
    assert path.stat().st_mtime_ns == mtime
    assert_same(first, second)
    assert_same(first, mnist1d_cached[0])


def test_mnist1d_cache_key_depends_on_the_generator_args(tmp_path, monkeypatch,
                                                         counted_generator):
    data.load("mnist1d", cache_dir=tmp_path)
    old = only_cache_file(tmp_path).name
    original = data._mnist1d_args

    def other_args():
        args = original()
        args["seed"] += 1
        return args

    monkeypatch.setattr(data, "_mnist1d_args", other_args)
    data.load("mnist1d", cache_dir=tmp_path)
    assert len(counted_generator) == 2 and counted_generator[1]["seed"] == other_args()["seed"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and old in names


def _flip_middle_byte(raw: bytes) -> bytes:
    mid = len(raw) // 2
    return raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1:]


def _npz_bytes(tmp_path: pathlib.Path, **arrays) -> bytes:
    np.savez(tmp_path / "scratch.npz", **arrays)
    raw = (tmp_path / "scratch.npz").read_bytes()
    (tmp_path / "scratch.npz").unlink()
    return raw


@pytest.mark.parametrize("damage", ["empty", "garbage", "flipped_byte", "truncated", "stale_key",
                                    "wrong_shape", "wrong_dtype", "missing_array", "bad_labels",
                                    "non_finite"])
def test_mnist1d_damaged_or_stale_cache_is_regenerated(tmp_path, damage, counted_generator,
                                                       mnist1d_cached):
    ds, session_dir = mnist1d_cached
    good = only_cache_file(session_dir)
    raw = good.read_bytes()
    with np.load(good) as npz:
        arrays = {k: npz[k] for k in npz.files}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if damage == "empty":
        raw = b""
    elif damage == "garbage":
        raw = b"not an npz file at all" * 10
    elif damage == "flipped_byte":
        raw = _flip_middle_byte(raw)
    elif damage == "truncated":
        raw = raw[:-100]
    elif damage == "stale_key":
        raw = _npz_bytes(scratch, **{**arrays, "key": np.asarray("0" * 64)})
    elif damage == "wrong_shape":
        raw = _npz_bytes(scratch, **{**arrays, "x_train": arrays["x_train"][:-1]})
    elif damage == "wrong_dtype":
        raw = _npz_bytes(scratch, **{**arrays, "x_train": arrays["x_train"].astype(np.float64)})
    elif damage == "missing_array":
        raw = _npz_bytes(scratch, **{k: v for k, v in arrays.items() if k != "y_test"})
    elif damage == "bad_labels":
        raw = _npz_bytes(scratch, **{**arrays, "y_train": arrays["y_train"] + 10})
    elif damage == "non_finite":
        x = arrays["x_train"].copy()
        x[0, 0, 0] = np.nan
        raw = _npz_bytes(scratch, **{**arrays, "x_train": x})
    path = tmp_path / good.name
    path.write_bytes(raw)
    loaded = data.load("mnist1d", cache_dir=tmp_path)
    assert len(counted_generator) == 1, f"a {damage} cache file must not be trusted"
    assert_same(loaded, ds)
    assert path.read_bytes() == good.read_bytes(), "the regenerated cache replaces the bad one"


def test_mnist1d_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, counted_generator):
    def broken_savez(file, **arrays):
        file.write(b"half an npz")
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "savez", broken_savez)
    with pytest.warns(RuntimeWarning, match="could not cache MNIST-1D"):
        ds = data.load("mnist1d", cache_dir=tmp_path)
    assert ds.x_train.shape == (4000, 40, 1)
    assert list(tmp_path.iterdir()) == [], "neither the temporary file nor a partial cache stays"


def test_mnist1d_unwritable_cache_dir_still_returns_the_data(tmp_path, counted_generator):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="could not cache MNIST-1D"):
        ds = data.load("mnist1d", cache_dir=blocker / "cache")
    assert ds.num_train == 4000


def test_load_uses_the_default_cache_dir(tmp_path, monkeypatch, counted_generator):
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "env-cache"))
    data.load("mnist1d")
    only_cache_file(tmp_path / "env-cache")


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("JAXCONV_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert _io.cache_dir() == tmp_path / "home" / ".cache" / "jaxconv"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert _io.cache_dir() == tmp_path / "home" / ".cache" / "jaxconv"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _io.cache_dir() == tmp_path / "xdg" / "jaxconv"
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "mine"))
    assert _io.cache_dir() == tmp_path / "mine"
    assert not (tmp_path / "mine").exists(), "asking for the directory must not create it"


# --- digits ---------------------------------------------------------------------------------


def test_digits_shapes_scaling_and_stratified_split():
    from sklearn.datasets import load_digits

    ds = data.load("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    assert (ds.num_train, ds.num_test) == (1437, 360)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    both = np.concatenate([ds.x_train, ds.x_test])
    assert both.min() == 0 and both.max() == 1
    # Every test class holds 20% of its class, up to rounding.
    full = load_digits()
    per_class = np.bincount(full.target, minlength=10)
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.2 * per_class) <= 1)
    # The split is a partition of sklearn's set: same (image, label) pairs, none twice.
    ours = np.concatenate([both.reshape(len(both), 64) * 16,
                           np.concatenate([ds.y_train, ds.y_test])[:, None]], axis=1)
    theirs = np.concatenate([full.data, full.target[:, None]], axis=1)
    np.testing.assert_array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0))
    assert len(np.unique(ours, axis=0)) == len(np.unique(theirs, axis=0))


def test_digits_split_is_fixed():
    a, b = data.load("digits"), data.load("digits")
    assert_same(a, b)


# --- MNIST from IDX -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_mnist_from_idx_files(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    ds = data.load("mnist", data_dir=tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"] / 255,
                               rtol=1e-6)
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["t10k-images-idx3-ubyte"] / 255,
                               rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.x_train[0, 0, 0, 0] == 1 and ds.x_train[0, 0, 1, 0] == 0


def test_mnist_mixes_raw_and_gzipped_files_and_accepts_str_paths(tmp_path):
    arrays = fake_mnist(tmp_path, gz=False)
    gz_name = "t10k-labels-idx1-ubyte"
    (tmp_path / gz_name).unlink()
    write_idx(tmp_path / gz_name, arrays[gz_name], gz=True)
    ds = data.load("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.y_test, arrays[gz_name])


def test_mnist_without_data_dir_is_a_clear_error():
    with pytest.raises(ValueError, match="needs data_dir") as info:
        data.load("mnist")
    assert "train-images-idx3-ubyte[.gz]" in str(info.value)


@pytest.mark.parametrize("present", [0, 3])
def test_mnist_missing_files_name_every_file_and_the_directory(tmp_path, present):
    fake_mnist(tmp_path)
    for name in data.MNIST_FILES[present:]:
        (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.load("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for name in ("train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]",
                 "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]", str(tmp_path)):
        assert name in message
    assert message.endswith("missing: " + ", ".join(data.MNIST_FILES[present:]))


def test_mnist_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        data.load("mnist", data_dir=tmp_path / "nowhere")


_IMAGES = np.zeros((3, 28, 28), np.uint8)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "not an IDX file"),
        (b"\x00\x00", "not an IDX file"),
        (b"\x01\x00\x08\x03" + idx_bytes(_IMAGES)[4:], "magic number is 0x01000803"),
        (b"\x00\x00\x07\x03" + idx_bytes(_IMAGES)[4:], "type code"),
        (b"\x00\x00\x08\x00", "dimension count"),
        (idx_bytes(_IMAGES)[:10], "truncated: its header"),
        (idx_bytes(_IMAGES)[:-1], "truncated: shape \\(3, 28, 28\\) of uint8 needs 2352"),
        (idx_bytes(_IMAGES) + b"\x00", "longer than its header says"),
        (gzip.compress(idx_bytes(_IMAGES))[:-10], "corrupt or truncated gzip"),
        (_flip_middle_byte(gzip.compress(idx_bytes(np.arange(3000, dtype=np.uint8)))),
         "corrupt or truncated gzip"),
        (idx_bytes(_IMAGES.astype(np.int32)), "must hold uint8 images"),
        (idx_bytes(np.zeros(3, np.uint8)), "must hold uint8 images of shape \\(N, rows, cols\\)"),
    ],
    ids=["empty", "short", "magic", "type-code", "no-dims", "short-header", "truncated-data",
         "trailing-bytes", "truncated-gzip", "corrupt-gzip", "wrong-dtype", "labels-as-images"],
)
def test_mnist_corrupt_images_file(tmp_path, raw, match):
    fake_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as info:
        data.load("mnist", data_dir=tmp_path)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([1, 2, 10] + [0] * 9, np.uint8), "digit labels 0..9, found 10"),
        (np.zeros(11, np.uint8), "holds 12 images but .* holds 11 labels"),
        (np.zeros((12, 1), np.uint8), "uint8 labels of shape \\(N,\\)"),
    ],
    ids=["label-10", "count-mismatch", "rank-2"],
)
def test_mnist_inconsistent_labels(tmp_path, labels, match):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match=match):
        data.load("mnist", data_dir=tmp_path)


def test_mnist_train_and_test_image_sizes_must_agree(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 20, 20), np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        data.load("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_every_type_code_is_big_endian(tmp_path, dtype):
    values = np.array([[0, 1, -2], [100, -100, 7]]) if dtype != "u1" else np.array([[0, 1, 255]])
    array = values.astype(dtype)
    if dtype in ("f4", "f8"):
        array = array + np.asarray(0.25, dtype)
    for gz in (False, True):
        path = write_idx(tmp_path / f"x-{dtype}", array, gz=gz)
        out = data.read_idx(path)
        assert out.dtype == np.dtype(dtype) and out.dtype.isnative
        np.testing.assert_array_equal(out, array)


# --- names and paths ------------------------------------------------------------------------


def test_unknown_dataset_names_the_argument_and_the_choices():
    with pytest.raises(ValueError, match="dataset must be one of") as info:
        data.load("cifar10")
    for name in data.DATASETS:
        assert name in str(info.value)
    assert "'cifar10'" in str(info.value)
    with pytest.raises(TypeError, match=r"dataset must be one of \('mnist1d', 'digits', 'mnist'\), "
                       r"got 3 \(int\)"):
        data.load(3)


def test_bad_path_arguments():
    with pytest.raises(TypeError, match="cache_dir must be a path"):
        data.load("mnist1d", cache_dir=3)
    with pytest.raises(TypeError, match="data_dir must be a path"):
        data.load("mnist", data_dir=["x"])


def test_dataset_validates_its_arrays():
    x, y = np.zeros((4, 3, 1), np.float32), np.zeros(4, np.int32)
    assert data.Dataset("d", x, y, x[:2], y[:2], 2).input_shape == (3, 1)
    with pytest.raises(TypeError, match="x_train must be a float32"):
        data.Dataset("d", x.astype(np.float64), y, x, y, 2)
    with pytest.raises(TypeError, match="y_test must be an int32"):
        data.Dataset("d", x, y, x, y.astype(np.int64), 2)
    with pytest.raises(ValueError, match="same number of examples, got 4 and 3"):
        data.Dataset("d", x, y[:3], x, y, 2)
    with pytest.raises(ValueError, match="labels in \\[0, 2\\)"):
        data.Dataset("d", x, y + 2, x, y, 2)
    with pytest.raises(ValueError, match="same input shape"):
        data.Dataset("d", x, y, x[:, :2], y, 2)


# --- epoch order ----------------------------------------------------------------------------


def test_epoch_permutation_is_a_reproducible_permutation():
    p = data.epoch_permutation(0, 0, 1000)
    assert p.shape == (1000,) and np.issubdtype(p.dtype, np.integer)
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    np.random.seed(99)  # global RNG state plays no part
    np.testing.assert_array_equal(p, data.epoch_permutation(0, 0, 1000))
    np.testing.assert_array_equal(p, data.epoch_permutation(np.int64(0), np.int32(0), 1000))
    assert not np.array_equal(p, data.epoch_permutation(0, 1, 1000)), "epochs differ"
    assert not np.array_equal(p, data.epoch_permutation(1, 0, 1000)), "seeds differ"
    # (seed, epoch) is not collapsed into one number: (1, 0) and (0, 1) are different orders.
    assert not np.array_equal(data.epoch_permutation(1, 0, 1000),
                              data.epoch_permutation(0, 1, 1000))
    assert data.epoch_permutation(3, 2, 0).shape == (0,)


def test_epoch_permutation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        data.epoch_permutation(-1, 0, 10)
    with pytest.raises(TypeError, match="epoch must be a non-negative int"):
        data.epoch_permutation(0, 1.0, 10)
    with pytest.raises(TypeError, match="n must be a non-negative int"):
        data.epoch_permutation(0, 0, True)


def test_epoch_batches_drop_the_last_partial_batch():
    batches = data.epoch_batches(5, 2, 10, 3)
    assert batches.shape == (3, 3)
    np.testing.assert_array_equal(batches.ravel(), data.epoch_permutation(5, 2, 10)[:9])
    assert data.epoch_batches(5, 2, 10, 10).shape == (1, 10)
    with pytest.raises(ValueError, match="batch_size must be between 1 and .* n=10, got 11"):
        data.epoch_batches(5, 2, 10, 11)
    with pytest.raises(ValueError, match="got 0"):
        data.epoch_batches(5, 2, 10, 0)
