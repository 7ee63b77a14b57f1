"""jaxconv.models: shapes for every model × input shape, manual vs autodiff equality, the
Rosenblatt rule, and the errors for bad names and shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import models, recipes
from jaxconv.rosenblatt import rosenblatt

SHAPES = ((40, 1), (8, 8, 1), (28, 28, 1))  # MNIST-1D, digits, MNIST
PAIRS = [(name, shape) for name in models.MODELS for shape in SHAPES]


def _ids(pair):
    name, shape = pair
    return f"{name}-{'x'.join(map(str, shape))}"


def _perturbed(params, key, scale=0.1):
    """params + noise on every leaf, so that no layer starts at zero (tcn1d's second convolution
    of each block does) and every gradient is exercised."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in
        zip(leaves, keys, strict=True)
    ])


def _loss(params, x, y, *, apply, grads):
    logits = apply(params, x, grads=grads)
    return jnp.mean(models.ops_for(grads).softmax_cross_entropy_with_integer_labels(logits, y))


# --------------------------------------------------------------------------------------------
# Registry and shapes
# --------------------------------------------------------------------------------------------


def test_registry_matches_models():
    assert models.MODELS == ("perceptron", "mlp", "cnn1d", "tcn1d", "lenet5")
    for name in models.MODELS:
        model = models.get(name)
        assert isinstance(model, models.Model)
        assert model.name == name
        assert set(recipes.RECIPES[name]) >= {"optimizer", "lr", "schedule", "epochs",
                                              "batch_size"}


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_shapes_and_dtypes(pair):
    """Every model takes every dataset's input shape (traced abstractly: no compilation; the
    values are checked by test_manual_and_autodiff_agree)."""
    name, shape = pair
    model = models.get(name)
    params = _abstract(model, shape, 7)
    leaves = jax.tree.leaves(params)
    assert isinstance(params, dict) and leaves
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    for grads in models.GRADS:
        logits = jax.eval_shape(functools.partial(model.apply, grads=grads), params, x)
        assert logits.shape == (3, 7) and logits.dtype == jnp.float32


def _abstract(model, input_shape, num_classes):
    """The parameters as shapes and dtypes, by abstract evaluation of init (no compilation)."""
    init = functools.partial(model.init, input_shape=input_shape, num_classes=num_classes)
    return jax.eval_shape(init, jax.random.key(0))


def _shapes(model, input_shape, num_classes=10):
    """The parameters' shapes."""
    params = _abstract(model, input_shape, num_classes)
    return jax.tree.map(lambda leaf: leaf.shape, params)


def test_init_is_a_pure_function_of_the_key():
    init = jax.jit(models.get("cnn1d").init, static_argnums=(1, 2))
    a = init(jax.random.key(3), (40, 1), 10)
    b = init(jax.random.key(3), (40, 1), 10)
    c = init(jax.random.key(4), (40, 1), 10)
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a["conv0"]["w"], c["conv0"]["w"])


def test_documented_architectures():
    # cnn1d is the MNIST-1D paper's CNN: 40 -> 19 -> 10 -> 5 positions of 25 channels.
    p = _shapes(models.get("cnn1d"), (40, 1))
    assert [p[f"conv{i}"]["w"] for i in range(3)] == [(5, 1, 25), (3, 25, 25), (3, 25, 25)]
    assert p["out"]["w"] == (125, 10)
    # lenet5 with the original widths on 28x28 is the classic network (400 features); on 8x8
    # it skips the first pooling and keeps 2x2 positions.
    classic = models.get("lenet5", channels=(6, 16))
    p = _shapes(classic, (28, 28, 1))
    assert p["conv0"]["w"] == (5, 5, 1, 6) and p["conv1"]["w"] == (5, 5, 6, 16)
    assert [p[k]["w"] for k in ("dense0", "dense1", "out")] == [(400, 120), (120, 84), (84, 10)]
    assert _shapes(classic, (8, 8, 1))["dense0"]["w"] == (64, 120)
    # The default doubles the widths: (16, 32).
    p = _shapes(models.get("lenet5"), (28, 28, 1))
    assert p["conv1"]["w"] == (5, 5, 16, 32) and p["dense0"]["w"] == (800, 120)
    # A sequence runs the 1-D LeNet: 40 -> 20 -> 16 -> 8 positions.
    p = _shapes(classic, (40, 1))
    assert p["conv0"]["w"] == (5, 1, 6) and p["dense0"]["w"] == (128, 120)
    # 1-D models read an image's rows as a sequence: (28, 28, 1) -> (28, 28).
    assert _shapes(models.get("tcn1d"), (28, 28, 1))["stem"]["w"] == (5, 28, 32)
    # mlp: the paper's two hidden layers of 100.
    p = _shapes(models.get("mlp"), (8, 8, 1))
    assert [p[k]["w"] for k in ("dense0", "dense1", "out")] == [(64, 100), (100, 100), (100, 10)]


def test_perceptron_is_one_dense_layer():
    model = models.get("perceptron")
    params = jax.jit(model.init, static_argnums=(1, 2))(jax.random.key(0), (8, 8, 1), 10)
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1), jnp.float32)
    expected = np.asarray(x).reshape(5, 64) @ np.asarray(params["dense"]["w"]) + np.asarray(
        params["dense"]["b"])
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), expected, rtol=1e-5, atol=1e-5)


def test_hyperparameters_change_the_model():
    p = _shapes(models.get("mlp", hidden=(32,)), (40, 1))
    assert set(p) == {"dense0", "out"} and p["dense0"]["w"] == (40, 32)
    p = _shapes(models.get("tcn1d", channels=8, dilations=(1, 3)), (40, 1), 4)
    assert set(p) == {"stem", "block0a", "block0b", "block1a", "block1b", "out"}
    assert p["out"]["w"] == (8, 4)
    model = models.get("lenet5", activation="tanh", pool="avg")
    params = _abstract(model, (8, 8, 1), 10)
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    assert jax.eval_shape(model.apply, params, x).shape == (2, 10)


# --------------------------------------------------------------------------------------------
# manual vs autodiff
# --------------------------------------------------------------------------------------------


# Each model on its own dataset's shape (every shape is traced by test_shapes_and_dtypes; a
# compilation per pair is what this test costs, so it checks one per model).
GRAD_PAIRS = [("perceptron", (40, 1)), ("mlp", (40, 1)), ("cnn1d", (40, 1)), ("tcn1d", (40, 1)),
              ("lenet5", (8, 8, 1))]


@pytest.mark.parametrize("pair", GRAD_PAIRS, ids=_ids)
def test_manual_and_autodiff_agree(pair):
    """Same parameters and forward values; the hand-derived gradients close to JAX's (float32,
    on perturbed parameters so that no gradient is zero)."""
    name, shape = pair
    model = models.get(name)
    y = jnp.array([0, 3, 7, 9])

    def loss_and_logits(params, x, grads):
        logits = model.apply(params, x, grads=grads)
        loss = models.ops_for(grads).softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.mean(loss), logits

    @jax.jit
    def both(key):  # one compilation for the whole check
        k_init, k_noise, k_x = jax.random.split(key, 3)
        params = _perturbed(model.init(k_init, shape, 10), k_noise)
        x = jax.random.normal(k_x, (4, *shape), jnp.float32)
        run = jax.value_and_grad(loss_and_logits, has_aux=True)
        return run(params, x, "manual"), run(params, x, "autodiff")

    ((loss_m, logits_m), manual), ((loss_a, logits_a), auto) = both(jax.random.key(0))
    # One forward code: equal up to how XLA fuses it beside each backward pass.
    np.testing.assert_allclose(logits_m, logits_a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss_m, loss_a, rtol=1e-6)
    for path, dm in jax.tree_util.tree_leaves_with_path(manual):
        da = np.asarray(functools.reduce(lambda t, k: t[k.key], path, auto))
        assert dm.dtype == jnp.float32
        scale = float(np.max(np.abs(da)))
        assert scale > 0, f"{name}: zero gradient at {jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(np.asarray(dm), da, rtol=2e-4, atol=2e-5 * scale,
                                   err_msg=f"{name} {shape}: {jax.tree_util.keystr(path)}")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unknown_model_names_model_and_choices():
    with pytest.raises(ValueError, match="model must be one of") as info:
        models.get("resnet")
    assert "'resnet'" in str(info.value) and "lenet5" in str(info.value)


def test_unknown_hyperparameter():
    with pytest.raises(TypeError, match="model 'mlp' got an unknown hyperparameter"):
        models.get("mlp", channels=3)


def test_bad_grads():
    model = models.get("perceptron")
    params = _abstract(model, (40, 1), 10)
    with pytest.raises(ValueError, match=r"grads must be one of \('manual', 'autodiff'\)"
        r", got 'numeric'"):
        model.apply(params, jnp.ones((2, 40, 1)), grads="numeric")


@pytest.mark.parametrize("name, shape, match", [
    ("cnn1d", (40,), r"input_shape for model 'cnn1d' must be \(L, C\)"),
    ("tcn1d", (2, 8, 8, 1), r"input_shape for model 'tcn1d' must be"),
    ("lenet5", (1, 8, 1), r"needs every spatial size >= 2"),
    ("lenet5", (40,), r"input_shape for model 'lenet5' must be"),
    ("mlp", (), r"input_shape for model 'mlp' must be of rank 1 to 4"),
    ("cnn1d", (0, 1), r"input_shape must be a positive int"),
])
def test_bad_input_shapes(name, shape, match):
    with pytest.raises(ValueError, match=match):
        models.get(name).init(jax.random.key(0), shape, 10)


def test_input_shape_must_be_a_tuple():
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        models.get("mlp").init(jax.random.key(0), 40, 10)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        models.get("cnn1d").init(jax.random.key(0), (40, 1), 0)


@pytest.mark.parametrize("name", models.MODELS)
def test_apply_rejects_x_of_another_shape(name):
    model = models.get(name)
    params = _abstract(model, (40, 1), 10)
    with pytest.raises(ValueError, match=f"model '{name}'"):
        jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((2, 28, 28, 1, 1), jnp.float32))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"pool must be one of \('max', 'avg'\), got 'sum'"):
        models.get("tcn1d", pool="sum")
    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'tanh'\)"
        r", got 'gelu'"):
        models.get("lenet5", activation="gelu")
    with pytest.raises(ValueError, match="channels must hold 2 widths"):
        models.get("lenet5", channels=(6, 16, 32))
    with pytest.raises(ValueError, match="channels must be a positive int"):
        models.get("cnn1d", channels=0)


# --------------------------------------------------------------------------------------------
# Rosenblatt's perceptron rule
# --------------------------------------------------------------------------------------------


def _separable(key, n=200, d=3, margin=0.2):
    """Points on either side of a random hyperplane, at least ``margin`` away from it."""
    kx, kw = jax.random.split(key)
    x = np.asarray(jax.random.uniform(kx, (4 * n, d), minval=-2, maxval=2))
    w = np.array(jax.random.normal(kw, (d,)))
    w /= np.linalg.norm(w)
    z = x @ w + 0.3
    keep = np.abs(z) > margin
    return x[keep][:n], np.where(z[keep][:n] > 0, 1, -1)


def test_rosenblatt_converges_on_separable_data():
    x, y = _separable(jax.random.key(0))
    assert len(y) == 200 and set(np.unique(y)) == {-1, 1}
    w, b, epochs, converged = rosenblatt(x, y, max_epochs=1000)
    assert converged
    assert 1 <= epochs < 1000
    assert w.shape == (3,) and b.shape == ()
    np.testing.assert_array_equal(np.sign(x @ np.asarray(w) + float(b)), y)


def test_rosenblatt_reads_zero_one_labels():
    x, y = _separable(jax.random.key(1))
    w_pm, b_pm, epochs_pm, _ = rosenblatt(x, y)
    w01, b01, epochs01, converged = rosenblatt(x, (y + 1) // 2)
    assert converged and epochs01 == epochs_pm
    np.testing.assert_array_equal(w01, w_pm)
    assert float(b01) == float(b_pm)


def test_rosenblatt_reports_non_separable_data():
    # XOR, the lecture-era counterexample: no line separates it.
    x = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]] * 5)
    y = np.array([-1, -1, 1, 1] * 5)
    w, b, epochs, converged = rosenblatt(x, y, max_epochs=50)
    assert not converged
    assert epochs == 50
    assert np.any(np.sign(x @ np.asarray(w) + float(b)) != y)


def test_rosenblatt_errors():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"y must hold labels in \{-1, \+1\} or \{0, 1\}"):
        rosenblatt(x, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"y must have shape \(N,\) = \(4,\)"):
        rosenblatt(x, np.array([1, -1]))
    with pytest.raises(ValueError, match=r"x must have shape \(N, D\)"):
        rosenblatt(np.zeros(4), np.array([1, -1, 1, -1]))
    with pytest.raises(ValueError, match="max_epochs must be a positive int"):
        rosenblatt(x, np.array([1, -1, 1, -1]), max_epochs=0)
