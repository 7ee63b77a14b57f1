"""``jaxconv.manual`` on other people's models: Flax (NNX and Linen), Haiku, Equinox, plain lax.

Each model is written the way that library's users write it (their layers, their pooling, their
way of taking a gradient; random parameter values, see ``_params``). For each one, in float64
(the conftest enables x64):

- every leaf of the gradient of ``jaxconv.manual(loss)`` equals ``jax.grad(loss)``'s to 1e-10
  relative to that leaf's scale (the largest magnitude of autodiff's leaf), and the loss values
  agree;
- ``jaxconv.coverage`` puts every convolution, dense product, max pool and relu of the model on a
  hand-derived rule, and the counts are the ones the model contains (so a layer that silently
  falls back to autodiff, or is not seen at all, fails the test); and ``manual(loss)`` really
  runs that many rules (its jaxpr holds one ``custom_vjp_call`` per instance; equal gradients
  alone would not tell a rewrite from a ``manual`` that did nothing).

Then one Flax model is trained with optax through ``jaxconv.manual`` on scikit-learn's digits and
reaches the accuracy of the same training with JAX's own gradients.

The libraries are the optional extra ``jaxconv[ecosystem]`` (``jaxconv[dev]`` includes it); a test
whose library is missing is skipped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.extend.core import jaxprs_in_params

import jaxconv

RTOL = 1e-10


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _params(abstract, seed=42):
    """Concrete float64 values for the abstract parameters of a model (``eval_shape`` of its
    library's initialiser): each floating leaf N(0, 1) / sqrt(fan-in), every other leaf zeros.

    The libraries' own initialisers are left out on purpose: compiling Haiku's ResNet-18
    initialiser alone takes longer here than comparing its gradients, and random values are what
    a comparison of gradients wants anyway (Haiku zeroes the scale of the last batch norm of
    every residual block, which would zero the gradient of everything before it in the block,
    and a zero gradient proves nothing). NumPy, not eager JAX, which would compile every op."""
    rng = np.random.default_rng(seed)

    def value(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in))

    return jax.tree.map(value, abstract)


def _normal(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _labels(n, classes=10, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, classes, n))


def _assert_grads_equal(loss, *args, value_and_grad=jax.value_and_grad, jit=jax.jit):
    """The gradient of ``jaxconv.manual(loss)`` equals the gradient of ``loss`` leaf by leaf, to
    RTOL of the leaf's scale, and the loss values agree. Both are taken the way the model's
    library takes them (``value_and_grad``: ``jax``'s, ``nnx``'s or ``eqx.filter_``'s, with
    respect to the first argument) and compiled as a user's training step is (``jit``)."""
    value_m, grads_m = jit(value_and_grad(jaxconv.manual(loss)))(*args)
    value_a, grads_a = jit(value_and_grad(loss))(*args)
    np.testing.assert_allclose(value_m, value_a, rtol=RTOL)
    _assert_trees_close(grads_m, grads_a)


def _assert_trees_close(grads_m, grads_a):
    """Same structure, shapes and float64 dtype; max |manual - autodiff| <= RTOL · max |autodiff|
    on every leaf, and no leaf of autodiff's gradient is all zeros (it would prove nothing)."""
    leaves_m, tree_m = jax.tree.flatten(grads_m)
    leaves_a, tree_a = jax.tree.flatten(grads_a)
    assert tree_m == tree_a
    assert leaves_a, "the loss has no parameters to differentiate"
    for path, gm, ga in zip(_paths(grads_a), leaves_m, leaves_a, strict=True):
        assert gm.shape == ga.shape and gm.dtype == ga.dtype == jnp.float64, path
        gm, ga = np.asarray(gm), np.asarray(ga)
        scale = np.max(np.abs(ga))
        assert scale > 0, f"{path}: autodiff's gradient is zero, the comparison proves nothing"
        err = np.max(np.abs(gm - ga)) / scale
        assert err <= RTOL, f"{path}: manual vs autodiff relative error {err:.2e}"


def _paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _assert_covered(loss, *args, **expected: int):
    """``coverage(loss, *args)`` has exactly ``expected[kind]`` instances of each kind on a
    hand-derived rule, nothing that has a rule is left to autodiff, and the jaxpr of
    ``manual(loss)`` runs one custom_vjp rule per instance it reports (none of these models has
    custom_vjp rules of its own)."""
    report = jaxconv.coverage(loss, *args)
    assert not report.unmapped, str(report)
    counts = {kind: report.manual.get(kind, 0) for kind in expected}
    assert counts == expected, str(report)
    assert not report.kept.get("custom_vjp_call"), str(report)
    assert _custom_vjp_calls(jaxconv.manual(loss), *args) == report.n_manual, str(report)


def _custom_vjp_calls(fun, *args) -> int:
    """How many custom_vjp_call equations the jaxpr of ``fun(*args)`` holds, nested jaxprs
    included (not those inside a custom_vjp rule). Non-array leaves of ``args`` (the functions
    in an Equinox module) are static."""
    leaves, tree = jax.tree.flatten(args)
    dynamic = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]

    def flat(*arrays):
        filled = list(leaves)
        for i, a in zip(dynamic, arrays, strict=True):
            filled[i] = a
        return fun(*tree.unflatten(filled))

    def count(jaxpr) -> int:
        return sum(1 if eqn.primitive.name == "custom_vjp_call"
                   else sum(count(sub) for sub in jaxprs_in_params(eqn.params))
                   for eqn in jaxpr.eqns)

    return count(jax.make_jaxpr(flat)(*(leaves[i] for i in dynamic)).jaxpr)


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --------------------------------------------------------------------------------------------
# Flax NNX: nnx.Conv (strided, asymmetric padding, dilated, grouped), nnx.ConvTranspose,
# nnx.Linear, nnx.max_pool / nnx.avg_pool, nnx.relu; differentiated with nnx.value_and_grad.
# --------------------------------------------------------------------------------------------


def test_flax_nnx():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 8, (3, 3), strides=2, padding=((1, 0), (0, 1)), rngs=rngs)
            self.conv2 = nnx.Conv(8, 8, (3, 3), kernel_dilation=2, feature_group_count=2,
                                  padding="SAME", rngs=rngs)
            self.up = nnx.ConvTranspose(8, 4, (3, 3), strides=(2, 2), rngs=rngs)
            self.fc1 = nnx.Linear(4 * 4 * 4, 16, rngs=rngs)
            self.fc2 = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv1(x))                                   # (N, 8, 8, 8)
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))                   # (N, 4, 4, 8)
            x = nnx.relu(self.conv2(x))                                   # (N, 4, 4, 8)
            x = nnx.relu(self.up(x))                                      # (N, 8, 8, 4)
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))                   # (N, 4, 4, 4)
            x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
            return self.fc2(x)

    model = _params(nnx.eval_shape(lambda: Net(nnx.Rngs(0))))
    x = _normal(2, 16, 16, 1)
    y = _labels(2)

    def loss_fn(model, x, y):
        return _cross_entropy(model(x), y)

    # As NNX users take gradients: nnx.value_and_grad of the loss of a module, nnx.jit-ed.
    _assert_grads_equal(loss_fn, model, x, y, value_and_grad=nnx.value_and_grad, jit=nnx.jit)
    _assert_covered(loss_fn, model, x, y, conv_general_dilated=3, dot_general=2,
                    reduce_window_max=1, reduce_window_sum=1, relu=4)


# --------------------------------------------------------------------------------------------
# Flax Linen: the flax docs' MNIST CNN (nn.Conv, nn.relu, nn.avg_pool, nn.Dense) with an
# nn.ConvTranspose and an nn.max_pool added; init/apply with a params dict.
# --------------------------------------------------------------------------------------------


def test_flax_linen():
    nn = pytest.importorskip("flax.linen")

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(features=8, kernel_size=(3, 3))(x))
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(features=8, kernel_size=(3, 3), strides=(2, 2),
                                padding="VALID")(x))
            x = nn.ConvTranspose(features=4, kernel_size=(2, 2), strides=(2, 2))(x)
            x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(features=16)(x))
            return nn.Dense(features=10)(x)

    x = _normal(2, 14, 14, 1)
    y = _labels(2)
    params = _params(jax.eval_shape(CNN().init, jax.random.key(2), x))["params"]

    def loss(params, x, y):
        return _cross_entropy(CNN().apply({"params": params}, x), y)

    _assert_grads_equal(loss, params, x, y)
    _assert_covered(loss, params, x, y, conv_general_dilated=3, dot_general=2,
                    reduce_window_max=1, reduce_window_sum=1, relu=3)


# --------------------------------------------------------------------------------------------
# Haiku: its own ResNet-18 and MobileNetV1 (batch norm in training mode stays with autodiff).
# 64x64 inputs, so that the last batch norms still normalise over 2x2 positions x 2 examples:
# over fewer values (16x16: 1x1 x 2) a training-mode batch norm is so ill-conditioned that
# float64 rounding alone moves the gradients by up to 1.5e-7 (measured here: autodiff's own
# ResNet-18 gradient with the batch's two examples swapped), and no comparison to 1e-10 holds.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net, convs, relus, max_pools", [
    ("ResNet18", 20, 17, 1),
    ("MobileNetV1", 27, 27, 0),
])
def test_haiku_nets(net, convs, relus, max_pools):
    hk = pytest.importorskip("haiku")

    def forward(x, is_training):
        return getattr(hk.nets, net)(num_classes=10)(x, is_training=is_training)

    model = hk.transform_with_state(forward)
    x = _normal(2, 64, 64, 3)
    y = _labels(2)
    params, state = _params(jax.eval_shape(
        functools.partial(model.init, is_training=True), jax.random.key(2), x))

    def loss(params, state, x, y):
        logits, _ = model.apply(params, state, None, x, is_training=True)
        return _cross_entropy(logits, y)

    _assert_grads_equal(loss, params, state, x, y)
    _assert_covered(loss, params, state, x, y, conv_general_dilated=convs, dot_general=1,
                    reduce_window_max=max_pools, relu=relus)


# --------------------------------------------------------------------------------------------
# Equinox: a per-example model (Conv1d, Conv2d, MaxPool2d, Linear) vmapped over the batch.
# --------------------------------------------------------------------------------------------


def test_equinox_vmapped():
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        conv1d: eqx.nn.Conv1d
        conv2d: eqx.nn.Conv2d
        pool: eqx.nn.MaxPool2d
        linear: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.conv1d = eqx.nn.Conv1d(12, 12, kernel_size=3, padding=1, groups=3, key=k1)
            self.conv2d = eqx.nn.Conv2d(1, 6, kernel_size=3, stride=(1, 2), dilation=(2, 1),
                                        key=k2)
            self.pool = eqx.nn.MaxPool2d(kernel_size=2, stride=2)
            self.linear = eqx.nn.Linear(6 * 4 * 2, 10, key=k3)

        def __call__(self, x):                                        # x: (12, 12), one example
            x = jax.nn.relu(self.conv1d(x))                           # rows as channels
            x = jax.nn.relu(self.conv2d(x[None]))                     # (6, 8, 5)
            x = self.pool(x)                                          # (6, 4, 2)
            return self.linear(x.reshape(-1))

    model = _params(eqx.filter_eval_shape(Net, jax.random.key(2)))
    x = _normal(3, 12, 12)
    y = _labels(3)

    def loss_fn(model, x, y):
        return _cross_entropy(jax.vmap(model)(x), y)

    # As Equinox users take gradients: eqx.filter_value_and_grad of the loss of a module.
    _assert_grads_equal(loss_fn, model, x, y, value_and_grad=eqx.filter_value_and_grad,
                        jit=eqx.filter_jit)
    _assert_covered(loss_fn, model, x, y, conv_general_dilated=2, dot_general=1,
                    reduce_window_max=1, relu=2)


# --------------------------------------------------------------------------------------------
# Plain lax / jnp.
# --------------------------------------------------------------------------------------------


def test_lax_and_jnp():
    x = _normal(2, 4, 9, 7)                                           # NCHW
    params = {
        "w_nchw": _normal(6, 2, 3, 2, seed=1),                        # OIHW, 2 groups
        "w_t": _normal(3, 3, 6, 5, seed=2),                           # HWIO
        "heads": _normal(5, 4, 3, seed=3),                            # (head, d, e)
        "out": _normal(3, 10, seed=4),
    }
    y = _labels(2)

    def loss(params, x, y):
        h = lax.conv_general_dilated(x, params["w_nchw"], window_strides=(2, 1),
                                     padding=((1, 2), (0, 1)), rhs_dilation=(1, 2),
                                     feature_group_count=2,
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))   # (2,6,5,6)
        h = jax.nn.relu(h).transpose(0, 2, 3, 1)                                   # NHWC
        h = lax.conv_transpose(h, params["w_t"], strides=(2, 2), padding="SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))          # (2,10,12,5)
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 3, 1), (1, 2, 3, 1), "VALID")
        h = h.reshape(2, 5, -1, 5).mean(2)                                          # (2, 5, 5)
        h = jax.nn.relu(h[..., :4])                                                 # (2, 5, 4)
        h = jnp.einsum("bhd,hde->bhe", h, params["heads"])                          # batch dim h
        h = jnp.tanh(h).sum(1)                                                      # (2, 3)
        return _cross_entropy(h @ params["out"], y)

    # Gradients of the parameters and of the input (the first convolution's dx rule too).
    _assert_grads_equal(loss, params, x, y,
                        value_and_grad=functools.partial(jax.value_and_grad, argnums=(0, 1)))
    # The one-call comparison a user runs on their own model agrees.
    report = jaxconv.compare_grads(loss, params, x, y)
    assert jax.tree.structure(report.errors) == jax.tree.structure(params)
    assert 0 <= report.max_error <= RTOL, report
    assert min(jax.tree.leaves(report.scales)) > 0, report
    _assert_covered(loss, params, x, y, conv_general_dilated=2, dot_general=2,
                    reduce_window_max=1, relu=2, tanh=1)


# --------------------------------------------------------------------------------------------
# Training a Flax model with optax through jaxconv.manual.
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flax_training_on_digits_matches_autodiff():
    """A Flax CNN trained with optax's Adam on scikit-learn's digits (6 epochs, batches of 32
    from ``jaxconv.data``), once through ``jaxconv.manual`` and once with JAX's gradients, from
    the same initialisation on the same batches, in float64.

    Tolerances: each step's gradients agree to 1e-10 of their scale (the tests above), so after
    264 Adam steps the parameters may differ by rounding compounded, which measured 3e-14 here;
    1e-8 leaves room for other machines' rounding, while a wrong rule moves parameters by the
    order of the learning rate (1e-2) within a few steps. Parameters that close make every test
    prediction the same (a prediction flips only on a logit tie within ~1e-8), so the accuracies
    are equal, not just close, and must be a sensible digits accuracy (0.97 measured)."""
    nn = pytest.importorskip("flax.linen")
    from jaxconv import data

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(features=16, kernel_size=(3, 3))(x))
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(features=32, kernel_size=(3, 3))(x))
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(features=64)(x.reshape((x.shape[0], -1))))
            return nn.Dense(features=10)(x)

    digits = data.load("digits")
    x_train, x_test = digits.x_train.astype(np.float64), digits.x_test.astype(np.float64)
    model = CNN()
    params0 = jax.tree.map(lambda a: a.astype(jnp.float64),
                           model.init(jax.random.key(0), x_train[:1])["params"])
    optimizer = optax.adam(1e-2)

    def loss(params, x, y):
        return _cross_entropy(model.apply({"params": params}, x), y)

    def train(loss):
        @jax.jit
        def step(params, opt_state, x, y):
            grads = jax.grad(loss)(params, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = params0, optimizer.init(params0)
        for epoch in range(6):
            for idx in data.epoch_batches(0, epoch, digits.num_train, 32):
                params, opt_state = step(params, opt_state, x_train[idx], digits.y_train[idx])
        return params, np.asarray(jnp.argmax(model.apply({"params": params}, x_test), -1))

    params_m, pred_m = train(jaxconv.manual(loss))
    params_a, pred_a = train(loss)
    for path, pm, pa in zip(_paths(params_a), jax.tree.leaves(params_m),
                            jax.tree.leaves(params_a), strict=True):
        err = np.max(np.abs(np.asarray(pm) - np.asarray(pa))) / np.max(np.abs(np.asarray(pa)))
        assert err <= 1e-8, f"{path}: parameters after training differ by {err:.1e}"
    np.testing.assert_array_equal(pred_m, pred_a)
    accuracy = np.mean(pred_m == digits.y_test)
    assert accuracy >= 0.95, accuracy
