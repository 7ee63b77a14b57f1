"""Every formulation of the convolution's forward, dx and dw, forced one set at a time, on pinned
awkward configurations, against the numpy definition (:mod:`references`): values and gradients.

The random property tests reach a formulation only when the per-shape choice picks it; here each
one meets, by construction, a stride that does not divide the size, asymmetric padding, dilation,
groups (grouped and depthwise), batch 1, kernel 1, one input channel, an odd "SAME", "FULL", and
1, 2 and 3 spatial dims.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import references as R
import strategies as S

import jaxconv

# The one place that names the forcing API (it may move to jaxconv.use).
from jaxconv import use

# (forward, dx, dw) forced together; every formulation of every role appears in one set.
SETS = {
    "xla": ("xla", "xla", "xla"),
    "shifted": ("shifted", "shifted", "shifted"),
    "im2col": ("im2col", "col2im", "im2col"),
    "banded": ("banded", "banded", "banded"),
    "winograd": ("winograd", "winograd", "winograd"),  # only on WINOGRAD's configurations
    "per_group": ("per_group", "per_group", "per_group"),  # one group where groups == 1
    "per_group_shifted": ("per_group_shifted",) * 3,
    "shifted_per_image": ("shifted", "shifted", "shifted_per_image"),  # whole batch at these sizes
}

# (x shape, w shape, kwargs), channels_last unless the kwargs say otherwise.
PINNED = {
    "1d-stride-not-dividing-asym-dilated": (
        (2, 9, 3), (3, 3, 4), dict(stride=2, padding=((2, 0),), dilation=2)),
    "1d-kernel1-stride3-padding-only-windows": (
        (1, 5, 2), (1, 2, 3), dict(stride=3, padding=((2, 1),))),
    "1d-depthwise-full": ((2, 6, 3), (3, 1, 6), dict(padding="FULL", dilation=2, groups=3)),
    "2d-grouped-strided-asym-dilated": (
        (1, 7, 8, 4), (2, 3, 2, 6), dict(stride=(2, 3), padding=((1, 0), (0, 2)),
                                         dilation=(1, 2), groups=2)),
    "2d-one-input-channel-stride-above-kernel": (
        (2, 8, 9, 1), (2, 2, 1, 3), dict(stride=3, padding=((0, 1), (1, 0)))),
    "2d-same-odd-lenet-like": ((1, 9, 7, 2), (4, 3, 2, 5), dict(stride=2, padding="same")),
    "2d-kernel-spans-input": ((2, 5, 4, 3), (3, 2, 3, 2), dict(dilation=(2, 3))),
    "2d-channels-first-grouped": (
        (1, 4, 6, 5), (6, 2, 3, 2), dict(stride=(1, 2), padding=1, groups=2,
                                         layout="channels_first")),
    "3d-strided-kernel1-asym": (
        (1, 5, 4, 6, 2), (1, 2, 3, 2, 3), dict(stride=(2, 1, 3), padding=((0, 1), (1, 0), (2, 1)))),
    "3d-depthwise-full-dilated": (
        (2, 3, 4, 3, 2), (2, 1, 2, 1, 4), dict(padding="FULL", dilation=(1, 2, 1), groups=2)),
    # The 3×3, stride-1 layers Winograd F(2×2, 3×3) computes: odd outputs, batch 1, padding past
    # the kernel (dX crops dY), one input channel, channels first.
    "2d-3x3-batch1-padding-past-kernel": (
        (1, 5, 6, 2), (3, 3, 2, 3), dict(padding=((3, 0), (1, 4)))),
    "2d-3x3-one-channel-same": ((3, 7, 4, 1), (3, 3, 1, 2), dict(padding="same")),
    "2d-3x3-channels-first-valid": ((2, 3, 6, 5), (4, 3, 3, 3), dict(layout="channels_first")),
}
WINOGRAD = [name for name in PINNED if name.startswith("2d-3x3")]
CASES = [(f, n) for f in SETS for n in PINNED if f != "winograd" or n in WINOGRAD]


@functools.partial(jax.jit, static_argnames=("kw", "forced"), compiler_options=S._FAST_COMPILE)
def _vjp(kw, forced, x, w, b, dy):
    """(y, (dx, dw, db)) with the formulations forced while tracing (part of the cache key)."""
    with use(**dict(forced)):
        y, pullback = jax.vjp(lambda *a: jaxconv.conv(*a, **dict(kw)), x, w, b)
        return y, pullback(dy)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("formulations, name", CASES)
def test_formulation_against_the_definition(formulations, name, dtype):
    """y, dx, dw, db of jaxconv.conv with (forward, dx, dw) forced to one set equal the numpy
    loops over the definition: float64 to 1e-10, float32 to 1e-5 of each one's scale."""
    x_shape, w_shape, kw = PINNED[name]
    c_out = w_shape[0] if kw.get("layout") == "channels_first" else w_shape[-1]
    x, w, b = S.normal(0, x_shape, dtype), S.normal(1, w_shape, dtype), S.normal(2, (c_out,), dtype)
    y_shape = jax.eval_shape(lambda: jaxconv.conv(x, w, b, **kw)).shape
    dy = S.normal(3, y_shape, dtype)
    forced = tuple(zip(("forward", "dx", "dw"), SETS[formulations], strict=True))
    y, grads = jax.device_get(_vjp(tuple(kw.items()), forced, x, w, b, dy))
    ref_y, ref_grads = R.conv_call(x, w, b, dy, **kw)
    rtol = S.RTOL[np.dtype(dtype)]
    S.assert_scaled_close(y, ref_y, rtol, f"{formulations} forward, {name}")
    for label, g, ref in zip(("dx", "dw", "db"), grads, ref_grads, strict=True):
        assert g.dtype == dtype and g.shape == ref.shape, (label, g.dtype, g.shape)
        S.assert_scaled_close(g, ref, rtol, f"{formulations} {label}, {name}")
