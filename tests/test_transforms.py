"""The manual rules under JAX's transformations, against the autodiff twins: jit, vmap
(per-example gradients), grad of grad, jax.hessian, lax.scan, shard_map and sharded jit on the
4 host devices that conftest forces, and chex.variants (with and without jit).

Every op takes part through one small network (conv → relu → max_pool → grouped, dilated conv →
tanh → avg_pool → dense → sigmoid, leaky_relu, softplus → dense → cross-entropy + squared error),
so each transformation is checked on all of them with few compilations. Everything runs in
float64 and agrees to 1e-10 of the gradient's scale.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as S
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxconv

RTOL = 1e-10
MODES = {"manual": jaxconv, "autodiff": jaxconv.autodiff}


def init(seed=0):
    """Parameters of :func:`net` for x of shape (N, 6, 6, 2)."""
    shapes = {"w1": (3, 3, 2, 4), "b1": (4,), "w2": (2, 2, 2, 4), "w3": (16, 5), "b3": (5,),
              "w4": (5, 3), "b4": (3,)}
    return {k: S.normal(seed + i, s) * 0.5 for i, (k, s) in enumerate(shapes.items())}


def net(ops, params, x):
    """x (N, 6, 6, 2) -> logits (N, 3), through every op of the library."""
    h = ops.relu(ops.conv(x, params["w1"], params["b1"], padding="SAME"))  # (N, 6, 6, 4)
    h = ops.max_pool(h, 2, padding=((1, 0), (0, 1)), stride=2)  # (N, 3, 3, 4)
    h = ops.tanh(ops.conv(h, params["w2"], padding=((1, 1), (0, 1)), dilation=(2, 1), groups=2))
    h = ops.avg_pool(h, 2, stride=1)  # (N, 2, 2, 4)
    h = ops.dense(h.reshape(h.shape[0], -1), params["w3"], params["b3"])
    h = ops.sigmoid(h) + ops.leaky_relu(h, 0.1) + ops.softplus(h)
    return ops.dense(h, params["w4"], params["b4"])


def loss(ops, params, x, labels, target):
    logits = net(ops, params, x)
    return (jnp.mean(ops.softmax_cross_entropy_with_integer_labels(logits, labels))
            + jnp.mean(ops.squared_error(logits, target)))


def batch(n, seed=1):
    x = S.distinct(seed, (n, 6, 6, 2)) / 16  # distinct: no ties in max pooling
    labels = np.random.default_rng(seed).integers(0, 3, n)
    return x, labels, S.normal(seed + 1, (n, 3))


def compare(fn):
    """Evaluate ``fn(ops)`` for both modes and assert that they agree."""
    manual, autodiff = fn(MODES["manual"]), fn(MODES["autodiff"])
    S.assert_trees_close(manual, autodiff, RTOL, "manual vs autodiff")
    return manual


def test_jit():
    params, (x, labels, target) = init(), batch(4)
    compare(lambda ops: jax.jit(jax.grad(lambda p, x: loss(ops, p, x, labels, target),
                                         argnums=(0, 1)))(params, x))


def test_no_rule_uses_autodiff():
    """Every op of the network runs its own hand-written rule (13 calls of manual ops), and no
    JAX differentiation happens inside any rule (see strategies.watch_rules); the autodiff
    network runs none."""
    params, (x, labels, target) = init(), batch(2)
    for mode, rules in (("manual", 13), ("autodiff", 0)):
        with S.watch_rules() as log:
            jax.make_jaxpr(jax.grad(lambda p, ops=MODES[mode]: loss(ops, p, x, labels, target)))(
                params)
        assert log == {"rules": rules, "autodiff": []}, (mode, log)


def test_vmap_per_example_gradients():
    params, (x, labels, target) = init(), batch(4)

    def per_example(ops):
        def one(p, x, label, t):
            return loss(ops, p, x[None], label[None], t[None])

        return jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0, 0)))(params, x, labels, target)

    grads = compare(per_example)
    # The vmapped rule equals the rule applied to each example on its own.
    one = jax.jit(jax.grad(lambda p, x, t, y: loss(MODES["manual"], p, x, t, y)))
    for i in range(len(x)):
        alone = one(params, x[i:i + 1], labels[i:i + 1], target[i:i + 1])
        S.assert_trees_close(jax.tree.map(lambda g, i=i: g[i], grads), alone, RTOL, f"example {i}")


def test_grad_of_grad():
    """d/d(params, x) of ⟨∇_params L, r⟩: the rules' own derivatives (the rules are JAX code,
    differentiated by JAX) agree with autodiff's second order."""
    params, (x, labels, target) = init(), batch(2)
    r = jax.tree.map(lambda p: S.normal(7, p.shape), params)

    def second(ops):
        def inner(p, x):
            g = jax.grad(lambda p: loss(ops, p, x, labels, target))(p)
            return sum(jnp.vdot(g[k], r[k]) for k in g)

        return jax.jit(jax.grad(inner, argnums=(0, 1)))(params, x)

    compare(second)


@pytest.mark.parametrize("name", ["conv", "dense", "max_pool", "avg_pool", "relu", "leaky_relu",
                                  "sigmoid", "tanh", "softplus", "softmax_cross_entropy",
                                  "softmax_cross_entropy_with_integer_labels", "squared_error"])
def test_hessian(name):
    """jax.hessian (forward over reverse) of a scalar function of each op, small enough for the
    full Hessian."""
    x4 = S.distinct(3, (1, 4, 3)) / 4
    calls = {
        "conv": (lambda ops, a: jnp.sum(jnp.sin(ops.conv(x4, a, stride=2, padding=((1, 0),)))),
                 S.normal(0, (2, 3, 2))),
        "dense": (lambda ops, a: jnp.sum(jnp.sin(ops.dense(a, S.normal(1, (3, 2))))),
                  S.normal(0, (2, 3))),
        "max_pool": (lambda ops, a: jnp.sum(ops.max_pool(a, 2, stride=1) ** 3), x4),
        "avg_pool": (lambda ops, a: jnp.sum(ops.avg_pool(a, 3, padding=1) ** 3), x4),
        "leaky_relu": (lambda ops, a: jnp.sum(ops.leaky_relu(a, 0.3) ** 3), x4),
        "softmax_cross_entropy": (
            lambda ops, a: jnp.sum(ops.softmax_cross_entropy(a, jax.nn.softmax(x4[0] * 3))),
            x4[0]),
        "softmax_cross_entropy_with_integer_labels": (
            lambda ops, a: jnp.mean(ops.softmax_cross_entropy_with_integer_labels(
                a, np.array([0, 2, 1, 1]))), x4[0]),
        "squared_error": (lambda ops, a: jnp.mean(ops.squared_error(a ** 2, x4[0])), x4[0] * 2),
    }
    fn, arg = calls.get(name, (lambda ops, a: jnp.sum(getattr(ops, name)(a) ** 3), x4))
    compare(lambda ops: jax.jit(jax.hessian(lambda a: fn(ops, a)))(arg))


def test_scan():
    """A stack of 3 convolutions with shared shapes, scanned over its stacked weights."""
    x = S.normal(0, (2, 7, 3))
    ws, bs = S.normal(1, (3, 3, 3, 3)) * 0.5, S.normal(2, (3, 3))

    def stacked(ops):
        def f(ws, bs, x):
            def layer(h, wb):
                return ops.tanh(ops.conv(h, *wb, padding="SAME", dilation=2)), None

            h, _ = jax.lax.scan(layer, x, (ws, bs))
            return jnp.sum(h * S.normal(3, h.shape))

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(ws, bs, x)

    compare(stacked)


def _mesh(axis_type=jax.sharding.AxisType.Auto):
    assert jax.device_count() >= 4, "conftest forces 4 host devices"
    return jax.make_mesh((4,), ("batch",), axis_types=(axis_type,))


def _shard_map_grads(ops, params, x, labels, target, *, replicated_params: bool):
    mesh = _mesh()

    def local(p, x, labels, target):
        if not replicated_params:
            # Each device differentiates its own (varying) copy of the parameters; the psum
            # below is then the explicit all-reduce of data parallelism.
            p = jax.tree.map(lambda a: jax.lax.pcast(a, "batch", to="varying"), p)
        g = jax.grad(lambda p: loss(ops, p, x, labels, target) * x.shape[0])(p)
        # Replicated parameters get a replicated gradient, already summed over the devices (by
        # the transpose of JAX's implicit broadcast, and by the rules' own psum).
        return g if replicated_params else jax.lax.psum(g, "batch")

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch"), P("batch"), P("batch")),
                       out_specs=P())
    rows = NamedSharding(mesh, P("batch"))
    placed = (jax.device_put(a, rows) for a in (x, labels, target))
    return jax.tree.map(lambda g: g / len(x), jax.jit(fn)(params, *placed))


@pytest.mark.parametrize("replicated_params", [False, True], ids=["varying", "replicated"])
def test_shard_map(replicated_params):
    """Data parallel: each of the 4 devices takes its slice of the batch and computes its
    gradient with the rules; equal to the unsharded gradient. With varying (per-device) copies of
    the parameters the gradients are summed by an explicit psum; with replicated ones (``P()``)
    each rule sums its dw and db over the axes dy varies along itself (ops/_varying.py)."""
    params, (x, labels, target) = init(), batch(8)
    grads = compare(lambda ops: _shard_map_grads(ops, params, x, labels, target,
                                                 replicated_params=replicated_params))
    whole = jax.jit(jax.grad(lambda p: loss(MODES["autodiff"], p, x, labels, target)))(params)
    S.assert_trees_close(grads, whole, RTOL, "shard_map vs unsharded")


def _sharded_jit_grads(ops, mesh, params, x, labels, target):
    rows = NamedSharding(mesh, P("batch"))
    x_s, labels_s, target_s = (jax.device_put(a, rows) for a in (x, labels, target))
    return jax.jit(jax.grad(lambda p, x: loss(ops, p, x, labels_s, target_s), (0, 1)))(
        params, x_s)


def test_sharded_jit():
    """jit with the batch sharded over the 4 devices (GSPMD partitions the rules' convolutions
    and products); the gradient equals the unsharded one, and the input gradient stays spread
    over the devices."""
    mesh, params, (x, labels, target) = _mesh(), init(), batch(8)
    grads = compare(lambda ops: _sharded_jit_grads(ops, mesh, params, x, labels, target))
    assert len(grads[1].sharding.device_set) == 4
    whole = jax.jit(jax.grad(lambda p, x: loss(MODES["autodiff"], p, x, labels, target),
                             (0, 1)))(params, x)
    S.assert_trees_close(grads, whole, RTOL, "sharded jit vs unsharded")


def test_explicit_sharding():
    """Explicit sharding (sharding in types, ``AxisType.Explicit``): the batch sharded over the
    4 devices, the parameters replicated on the same mesh. The rules' products that contract or
    reshape the sharded batch (dense's and conv's dw, the faster dx formulations, max-pool's
    tiled dx) run with the axes treated as automatic and come out laid out like their primals
    (ops/_varying.laid_out_like); the gradients equal autodiff's and the unsharded ones, and
    the parameters' gradients stay replicated."""
    mesh, params, (x, labels, target) = _mesh(jax.sharding.AxisType.Explicit), init(), batch(8)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    grads = compare(lambda ops: _sharded_jit_grads(ops, mesh, params, x, labels, target))
    assert all(g.sharding.is_fully_replicated for g in jax.tree.leaves(grads[0]))
    whole = jax.jit(jax.grad(lambda p, x: loss(MODES["autodiff"], p, x, labels, target),
                             (0, 1)))(jax.device_get(params), x)
    S.assert_trees_close(grads, whole, RTOL, "explicit sharding vs unsharded")


class ChexVariants(chex.TestCase):
    """The conv's rules equal autodiff's with and without jit (chex.variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_conv_grad(self):
        x, w, b = S.normal(0, (2, 6, 5, 3)), S.normal(1, (3, 2, 3, 4)), S.normal(2, (4,))
        r = S.normal(3, (2, 2, 4, 4))

        def grads(ops):
            @self.variant
            def g(x, w, b):
                return jax.grad(lambda *a: jnp.sum(ops.conv(*a, stride=(2, 1)) * r),
                                argnums=(0, 1, 2))(x, w, b)

            return g(x, w, b)

        compare(grads)
