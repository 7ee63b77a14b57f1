"""The convolution's alternative formulations (jaxconv.ops._algorithms) and the per-shape choice.

Every formulation of the forward, dx and dw must equal the XLA formulation (float64, 1e-10) on
every configuration it is eligible for; the manual op must keep matching jax.grad whichever
formulation is forced; the measurement cache must survive being missing, corrupt or stale; and
the policy "xla" must switch every alternative off.
"""

import json
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jaxconv
import jaxconv.autodiff
from jaxconv import _checks
from jaxconv.ops import _algorithms as A

# A modest share of the active profile: each example compiles up to nine formulations.
EXAMPLES = max(8, settings.default.max_examples // 20)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own cache folder, no environment policy and an empty memory."""
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXCONV_CONV_POLICY", raising=False)
    A.clear_memory()
    A.set_policy(None)
    yield
    A.clear_memory()
    A.set_policy(None)


@st.composite
def problems(draw, max_nd=2):
    """A random valid convolution: shapes, stride, dilation, asymmetric padding, groups."""
    nd = draw(st.integers(1, max_nd))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups > 1
    c_in_g = 1 if depthwise else draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, padding, strict=True):
        smallest = max(1, d * (k - 1) + 1 - lo - hi)
        size.append(draw(st.integers(smallest, smallest + 5)))
    x_shape = (draw(st.integers(1, 2)), *size, groups * c_in_g)
    w_shape = (*kernel, c_in_g, c_out)
    cfg = _checks.ConvConfig(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x_shape, w_shape, cfg, draw(st.integers(0, 2**31 - 1))


def _arrays(x_shape, w_shape, cfg, seed):
    kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
    y_shape = (x_shape[0], *A.out_spatial(x_shape[1:-1], w_shape[:-2], cfg), w_shape[-1])
    return tuple(jax.random.normal(k, shape, jnp.float64)
                 for k, shape in ((kx, x_shape), (kw, w_shape), (kd, y_shape)))


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-10, atol=1e-10)


@settings(max_examples=EXAMPLES)
@given(problems(max_nd=3))
def test_every_formulation_equals_xla(problem):
    """forward, dx and dw of every eligible formulation equal XLA's convolution (float64)."""
    x_shape, w_shape, cfg, seed = problem
    x, w, dy = _arrays(x_shape, w_shape, cfg, seed)
    kernel, in_size = tuple(w_shape[:-2]), tuple(x_shape[1:-1])
    args = {"forward": (x, w, cfg), "dx": (dy, w, in_size, cfg), "dw": (x, dy, kernel, cfg)}
    for role in A.ROLES:
        names = A.eligible(role, x_shape, w_shape, cfg, jnp.float64)
        assert "xla" in names and "shifted" in names
        static = args[role][2:]  # in_size / kernel and cfg are static

        def call(name, role=role, static=static):
            fn = A.TABLES[role][name]
            return jax.jit(lambda a, b: fn(a, b, *static))(*args[role][:2])

        expected = call("xla")
        for name in names:
            _close(call(name), expected)


@settings(max_examples=EXAMPLES)
@given(problems(), st.sampled_from(["shifted", "im2col", "banded"]),
       st.sampled_from(["shifted", "col2im", "banded"]),
       st.sampled_from(["shifted", "im2col", "banded"]))
def test_manual_gradients_equal_jax_grad_under_every_forced_formulation(problem, fwd, dx, dw):
    """The core issue's check, for forced formulations: manual grads == jax.grad of XLA conv."""
    x_shape, w_shape, cfg, seed = problem
    x, w, _ = _arrays(x_shape, w_shape, cfg, seed)
    b = jnp.linspace(-1.0, 1.0, w_shape[-1], dtype=jnp.float64)
    kw = dict(stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups)

    def loss(op):
        return lambda x, w, b: jnp.sum(jnp.sin(op(x, w, b, **kw)))

    with A.use(forward=fwd, dx=dx, dw=dw):
        manual = jax.jit(jax.value_and_grad(loss(jaxconv.conv), argnums=(0, 1, 2)))(x, w, b)
    with A.policy("xla"):
        reference = jax.jit(jax.value_and_grad(loss(jaxconv.autodiff.conv),
                                               argnums=(0, 1, 2)))(x, w, b)
    jax.tree.map(_close, manual, reference)


def test_autodiff_differentiates_the_shared_forward_choice():
    """jaxconv.autodiff.conv runs the chosen forward too, and JAX's gradient of it is right."""
    x, w, _ = _arrays((2, 9, 9, 4), (3, 3, 4, 5), _checks.ConvConfig((2, 1), ((1, 0), (2, 1)),
                                                                     (1, 2), 1), 3)
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))

    def loss(x, w):
        return jnp.sum(jnp.cos(jaxconv.autodiff.conv(x, w, **kw)))

    with A.policy("xla"):
        expected = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    for name in A.FORWARD:
        with A.use(forward=name):
            jax.tree.map(_close, jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w), expected)


# --------------------------------------------------------------------------------------------
# The choice: policy, off switch, backends.
# --------------------------------------------------------------------------------------------

LENET1 = ((128, 28, 28, 1), (5, 5, 1, 6), _checks.ConvConfig((1, 1), ((2, 2), (2, 2)), (1, 1), 1))


def _hlo(policy_name=None, **forced):
    x = jnp.ones(LENET1[0], jnp.float32)
    w = jnp.ones(LENET1[1], jnp.float32)

    def f(x, w):
        return jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, padding=2)), argnums=(0, 1))(x, w)

    with A.policy(policy_name), A.use(**forced):
        return jax.jit(f).lower(x, w).as_text()


def test_policy_xla_is_the_off_switch():
    with A.policy("xla"):
        assert {A.choose(r, *LENET1, jnp.float32) for r in A.ROLES} == {"xla"}
    assert "convolution" in _hlo("xla")
    # Forcing every role away from XLA leaves no convolution at all in the program.
    assert "convolution" not in _hlo(forward="shifted", dx="shifted", dw="shifted")


def test_environment_variable_sets_the_policy(monkeypatch):
    monkeypatch.setenv("JAXCONV_CONV_POLICY", "xla")
    assert A.get_policy() == "xla"
    assert A.choose("forward", *LENET1, jnp.float32) == "xla"
    A.set_policy("auto")  # an explicit set_policy wins over the environment
    assert A.get_policy() == "auto"
    monkeypatch.setenv("JAXCONV_CONV_POLICY", "fastest")
    A.set_policy(None)
    with pytest.raises(ValueError, match="JAXCONV_CONV_POLICY"):
        A.get_policy()


def test_bad_policy_and_forced_names_are_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        A.set_policy("fastest")
    with pytest.raises(ValueError, match="dx must be one of"), A.use(dx="im2col"):
        pass


def test_other_backends_default_to_xla(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert {A.choose(r, *LENET1, jnp.float32) for r in A.ROLES} == {"xla"}


def test_auto_policy_picks_an_eligible_formulation_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")
    for role in A.ROLES:
        assert A.choose(role, *LENET1, jnp.float32) in A.eligible(role, *LENET1, jnp.float32)


def test_lenet_layers_get_the_banded_rules_on_cpu():
    """LeNet-5's convolutions (few channels, 28- and 14-wide rows) are where XLA:CPU's own
    convolution is slowest; the heuristic gives their dx and dw the banded products."""
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")
    valid = _checks.ConvConfig((1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    for problem in (LENET1, ((128, 14, 14, 6), (5, 5, 6, 16), valid)):
        assert A.choose("dx", *problem, jnp.float32) == "banded"
        assert A.choose("dw", *problem, jnp.float32) == "banded"
    wide = ((8, 64, 64, 3), (3, 3, 3, 16), _checks.ConvConfig((1, 1), ((1, 1),) * 2, (1, 1), 1))
    assert A.choose("dw", *wide, jnp.float32) != "banded"  # 66-wide rows: T is mostly zeros


def test_im2col_is_ineligible_above_the_memory_cap():
    cfg = _checks.ConvConfig((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    big = ((64, 128, 128, 64), (3, 3, 64, 64), cfg, jnp.float32)  # 2.4 GB of patches
    assert "im2col" not in A.eligible("forward", *big)
    assert "col2im" not in A.eligible("dx", *big)
    assert "im2col" not in A.eligible("dw", *big)
    for role in A.ROLES:  # and its banded matrix would be 3·130·64 × 128·64 floats (818 MB)
        assert "banded" not in A.eligible(role, *big)
    for role in A.ROLES:
        assert A.choose(role, *big) in A.eligible(role, *big)


# --------------------------------------------------------------------------------------------
# The measurement cache: missing, corrupt, stale, and used when valid.
# --------------------------------------------------------------------------------------------

SMALL = ((2, 6, 3), (3, 3, 4), _checks.ConvConfig((1,), ((1, 1),), (1,), 1), jnp.float32)


def _count_measurements(monkeypatch):
    calls = []
    real = A.measure

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "measure", counting)
    return calls


def test_measure_with_missing_cache_measures_once_and_writes_it(monkeypatch):
    calls = _count_measurements(monkeypatch)
    assert not A.cache_path().exists()
    with A.policy("measure"):
        first = A.choose("dw", *SMALL)
        again = A.choose("dw", *SMALL)
    assert first == again and first in A.DW and calls == ["dw"]
    data = json.loads(A.cache_path().read_text())
    assert data["version"] == A.CACHE_VERSION
    assert list(data["choices"].values()) == [first]
    assert [p.name for p in A.cache_path().parent.iterdir()] == [A.cache_path().name]  # no temp
    # A new process (simulated: memory cleared) reads the choice back without measuring.
    A.clear_memory()
    with A.policy("measure"):
        assert A.choose("dw", *SMALL) == first
    assert calls == ["dw"]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]",
                                     b'{"version": 1, "choices": 7}'])
def test_corrupt_cache_is_ignored_and_rewritten(monkeypatch, content):
    A.cache_path().parent.mkdir(parents=True)
    A.cache_path().write_bytes(content)
    calls = _count_measurements(monkeypatch)
    assert A.load_cache() == {}
    with A.policy("auto"):  # auto reads a cache but never fails on a bad one
        assert A.choose("forward", *SMALL) in A.FORWARD
    with A.policy("measure"):
        assert A.choose("forward", *SMALL) in A.FORWARD
    assert calls == ["forward"]
    assert json.loads(A.cache_path().read_text())["version"] == A.CACHE_VERSION


def _write_cache(choice, version=A.CACHE_VERSION, role="forward"):
    key = A._key(role, A.problem(*SMALL), jax.default_backend())
    A.cache_path().parent.mkdir(parents=True, exist_ok=True)
    A.cache_path().write_text(json.dumps({"version": version, "choices": {key: choice}}))


def test_valid_cache_entry_is_used_by_measure_and_auto(monkeypatch):
    calls = _count_measurements(monkeypatch)
    for choice in ("shifted", "im2col"):
        _write_cache(choice)
        A.clear_memory()
        with A.policy("measure"):
            assert A.choose("forward", *SMALL) == choice
        with A.policy("auto"):
            assert A.choose("forward", *SMALL) == choice
        with A.policy("xla"):  # the off switch ignores the cache
            assert A.choose("forward", *SMALL) == "xla"
    assert calls == []


@pytest.mark.parametrize("version, choice", [(A.CACHE_VERSION + 1, "shifted"),
                                             (A.CACHE_VERSION, "winograd"),
                                             (A.CACHE_VERSION, "col2im")])
def test_stale_cache_entries_are_ignored(monkeypatch, version, choice):
    """Another format version, or a name that is not (or no longer) a formulation of the role."""
    _write_cache(choice, version=version)
    calls = _count_measurements(monkeypatch)
    with A.policy("measure"):
        assert A.choose("forward", *SMALL) in A.FORWARD
    assert calls == ["forward"]


def test_unwritable_cache_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(blocker / "sub"))  # a folder under a file
    with A.policy("measure"):
        assert A.choose("dx", *SMALL) in A.DX


def test_measure_policy_works_while_tracing_under_jit():
    x = jnp.ones(SMALL[0], jnp.float32)
    w = jnp.ones(SMALL[1], jnp.float32)
    with A.policy("measure"):
        g = jax.jit(jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, padding=1) ** 2),
                             argnums=(0, 1)))(x, w)
    with A.policy("xla"):
        expected = jax.jit(jax.grad(lambda x, w: jnp.sum(jaxconv.autodiff.conv(x, w, padding=1)
                                                         ** 2), argnums=(0, 1)))(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), g, expected)
    assert len(A.load_cache()) == 3
    assert math.isfinite(float(jnp.sum(g[0])))
