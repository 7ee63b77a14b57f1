"""jaxconv.checkpoint: orbax checkpoints that round-trip exactly and detect damage."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv.checkpoint import DAMAGED_DIR, MANIFEST, Checkpoints, checksum


def _state(seed: int):
    """A params + adam-state pytree with namedtuple nodes, like the training loop's."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"conv": {"w": jax.random.normal(k1, (3, 2, 4), jnp.float32),
                       "b": jnp.zeros(4, jnp.float32)},
              "dense": {"w": jax.random.normal(k2, (4, 10), jnp.float32)}}
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments and count
    return {"params": params, "opt_state": opt_state}


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _garble_state_files(step_dir):
    """Overwrite the middle of every data file of a checkpoint's arrays with junk."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size]
    assert files, f"no files under {step_dir / 'state'}"
    for path in files:
        raw = bytearray(path.read_bytes())
        for i in range(len(raw) // 3, len(raw)):
            raw[i] = (raw[i] + 0x5A) % 256
        path.write_bytes(bytes(raw))


def test_checksum_sees_every_bit_dtype_and_shape():
    tree = {"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 3), np.int32)}
    base = checksum(tree)
    assert checksum({k: v.copy() for k, v in tree.items()}) == base
    flipped = tree["a"].copy()
    flipped.view(np.uint32)[3] ^= 1  # one bit of one float
    assert checksum({**tree, "a": flipped}) != base
    assert checksum({**tree, "b": tree["b"].reshape(3, 2)}) != base
    assert checksum({**tree, "a": tree["a"].astype(np.float64)}) != base


def test_round_trip_is_exact_and_keeps_structure(tmp_path):
    state = _state(0)
    with Checkpoints(tmp_path / "ck") as ck:
        ck.save(7, state, {"epoch": 1, "history": [{"loss": 0.1 + 0.2}]})
        assert ck.steps() == [7]
    with Checkpoints(tmp_path / "ck") as ck:  # a fresh manager, as after a restart
        restored = ck.restore_latest(target=_state(1))
    assert restored.step == 7 and restored.damaged == ()
    assert restored.meta["history"] == [{"loss": 0.1 + 0.2}]
    _assert_same(restored.state, state)
    # optax's namedtuple state comes back as namedtuples, so optimizer.update accepts it.
    assert type(restored.state["opt_state"][0]) is type(state["opt_state"][0])


def test_keeps_the_newest_three(tmp_path):
    with Checkpoints(tmp_path / "ck") as ck:
        for step in (10, 20, 30, 40, 50):
            ck.save(step, _state(step), {"epoch": step // 10})
        assert ck.steps() == [30, 40, 50]
        restored = ck.restore_latest(target=_state(0))
    assert restored.step == 50
    _assert_same(restored.state, _state(50))


@pytest.mark.parametrize("damage", ["garbled arrays", "truncated metadata", "deleted arrays"])
def test_damaged_latest_falls_back_to_previous(tmp_path, damage):
    with Checkpoints(tmp_path / "ck") as ck:
        ck.save(1, _state(1), {"epoch": 1})
        ck.save(2, _state(2), {"epoch": 2})
    latest = tmp_path / "ck" / "2"
    if damage == "garbled arrays":
        _garble_state_files(latest)
    elif damage == "truncated metadata":
        meta = latest / "meta" / "metadata"
        meta.write_bytes(meta.read_bytes()[:10])
    else:
        for path in (latest / "state").rglob("*"):
            if path.is_file() and path.parent.name == "d":
                path.unlink()
    with Checkpoints(tmp_path / "ck") as ck:
        restored = ck.restore_latest(target=_state(0))
        assert ck.steps() == [1]  # the damaged one was moved aside
    assert restored.step == 1
    _assert_same(restored.state, _state(1))
    assert [s for s, _ in restored.damaged] == [2]
    reason = restored.damaged[0][1]
    assert reason and "\n" not in reason
    assert (tmp_path / DAMAGED_DIR / "2").is_dir()


def test_a_file_that_differs_from_the_manifest_is_damage(tmp_path):
    with Checkpoints(tmp_path / "ck") as ck:
        ck.save(1, _state(1), {"epoch": 1})
        ck.save(2, _state(2), {"epoch": 2})
    manifest = json.loads((tmp_path / "ck" / "2" / MANIFEST).read_text())
    assert "meta/metadata" in manifest and any(k.startswith("state/") for k in manifest)
    meta_path = tmp_path / "ck" / "2" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["epoch"] = 3  # valid JSON, same length: only the hash can tell
    meta_path.write_text(json.dumps(meta))
    with Checkpoints(tmp_path / "ck") as ck:
        restored = ck.restore_latest(target=_state(0))
    assert restored.step == 1
    assert restored.damaged == ((2, "ValueError: its file meta/metadata does not match its "
                                    "SHA-256"),)


def test_without_a_manifest_the_array_checksum_still_guards(tmp_path):
    """A checkpoint committed by orbax but killed before its manifest was written restores
    normally; if its arrays differ from their checksum it is damaged."""
    with Checkpoints(tmp_path / "ck") as ck:
        ck.save(1, _state(1), {"epoch": 1})
        ck.save(2, _state(2), {"epoch": 2})
        ck.save(3, _state(3), {"epoch": 3})
    for step in (2, 3):
        (tmp_path / "ck" / str(step) / MANIFEST).unlink()
    meta_path = tmp_path / "ck" / "3" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["checksum"] = checksum(_state(4))
    meta_path.write_text(json.dumps(meta))
    with Checkpoints(tmp_path / "ck") as ck:
        restored = ck.restore_latest(target=_state(0))
    assert restored.step == 2
    _assert_same(restored.state, _state(2))
    assert restored.damaged == ((3, "ValueError: its arrays do not match their checksum"),)


def test_all_damaged_is_an_error_and_empty_is_none(tmp_path):
    with Checkpoints(tmp_path / "empty") as ck:
        assert ck.restore_latest(target=_state(0)) is None
    with Checkpoints(tmp_path / "ck") as ck:
        ck.save(1, _state(1), {"epoch": 1})
        ck.save(2, _state(2), {"epoch": 2})
    for step in (1, 2):
        _garble_state_files(tmp_path / "ck" / str(step))
    with Checkpoints(tmp_path / "ck") as ck, pytest.raises(ValueError, match="every checkpoint"):
        ck.restore_latest(target=_state(0))


def test_max_to_keep_below_two_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be >= 2, got 1"):
        Checkpoints(tmp_path / "ck", max_to_keep=1)


def test_check_runs_on_the_metadata_before_any_array_is_read(tmp_path):
    with Checkpoints(tmp_path / "ck") as ck:
        ck.save(1, _state(1), {"epoch": 1, "config": {"model": "a"}})

    def check(meta):
        if meta["config"]["model"] != "b":
            raise ValueError("another run")

    other_structure = {"params": {"w": jnp.zeros(3)}}
    with Checkpoints(tmp_path / "ck") as ck:
        with pytest.raises(ValueError, match="another run"):
            ck.restore_latest(target=other_structure, check=check)
        assert ck.steps() == [1]
    assert not (tmp_path / DAMAGED_DIR).exists()
