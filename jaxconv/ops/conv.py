r"""N-d convolution (cross-correlation) with the lecture's hand-derived backward rules.

The lecture's worked example (1-D, one filter, stride 1, no padding) is

    y₁ = w₁x₁ + w₂x₂ + b,   y₂ = w₁x₂ + w₂x₃ + b,   y₃ = w₁x₃ + w₂x₄ + b

and the chain rule gives, with dy = ∂L/∂y,

    db  = dy₁ + dy₂ + dy₃                                = Σ dy
    dw₁ = x₁dy₁ + x₂dy₂ + x₃dy₃,  dw₂ = x₂dy₁ + x₃dy₂ + x₄dy₃   = x ⋆ dy
    dx₁ = w₁dy₁,  dx₂ = w₂dy₁ + w₁dy₂,  dx₃ = w₂dy₂ + w₁dy₃,  dx₄ = w₂dy₃
                                                         = full-conv(rot180 w, dy)

(the slides print dw₂ and dx₂ with typos; these are the correct lines). In general, per spatial
dimension, with stride s, kernel dilation d, padding (lo, hi), kernel size K, input size I and
output size O,

    y[o] = b + Σ_k w[k] · x_pad[o·s + k·d]                     (forward)

    db    = Σ_{n, o} dy[n, o]
    dw[k] = Σ_{n, o} x_pad[n, o·s + k·d] · dy[n, o]            (x ⋆ dy: dy dilated by s,
                                                                 the kernel's d becomes a stride)
    dx_pad[i] = Σ_k w[k] · dy_s[i − k·d]                       (dy_s: dy dilated by s)
              = Σ_j rot180(w)[j] · dy_s[i − (K−1)·d + j·d]     (full correlation with rot180 w)
    dx    = dx_pad[lo : lo + I]                                (the padding crops dx)

Groups split the channels: each group of C_out / groups filters sees only its own
C_in / groups input channels, so dx transposes w group by group and dw pairs each group of x
with its own group of dy.

These are the *reference* forms below: each product is one correlation
(``lax.conv_general_dilated``), with its paddings and dilations named by
:func:`dx_padding` and :func:`dw_padding`. Per shape, a faster equivalent may compute the same
product instead (shifted matrix products, im2col / col2im, or one product with the banded
(Toeplitz) matrix the kernel makes along the last spatial dimension:
:mod:`jaxconv.ops._formulations`, proven equal to these by the tests), chosen at trace time by
:mod:`jaxconv.ops._choice`. None loops over positions and no Jacobian is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _checks
from jaxconv._geometry import ConvConfig, effective
from jaxconv.ops import _choice, _formulations
from jaxconv.ops._twins import autodiff_with_feedback, twins, with_feedback
from jaxconv.ops._varying import laid_out_like, summed_like

# --------------------------------------------------------------------------------------------
# The reference forms: the forward and its two rules as correlations, the lecture's formulas.
# Core layout: x (N, *S, C_in), w (*K, C_in/g, C_out), y and dy (N, *O, C_out).
# --------------------------------------------------------------------------------------------


def _channels_last_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """lhs (N, *S, C), rhs (*K, I, O), out (N, *S, C): lax's NHWC / HWIO, for any nd."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1, *spatial),
        rhs_spec=(nd + 1, nd, *range(nd)),
        out_spec=(0, nd + 1, *spatial),
    )


def _weight_grad_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """dw = x ⋆ dy with the batch axis N contracted: x's channels play the batch, dy's channels
    the output features, and the result comes out directly in the kernel layout (*K, I, O)."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(nd + 1, 0, *spatial),
        rhs_spec=(nd + 1, 0, *spatial),
        out_spec=(nd, nd + 1, *range(nd)),
    )


def rot180_transpose(w: jax.Array, groups: int) -> jax.Array:
    """rot180(w) with input and output channels swapped group by group.

    (*K, C_in/g, C_out) -> (*K, C_out/g, C_in): the kernel of the dx correlation.
    """
    nd = w.ndim - 2
    *k, c_in_g, c_out = w.shape
    w = jnp.flip(w, axis=tuple(range(nd)))
    w = w.reshape(*k, c_in_g, groups, c_out // groups)
    w = jnp.moveaxis(w, nd, nd + 2)  # (*K, g, C_out/g, C_in/g)
    w = jnp.swapaxes(w, nd, nd + 1)  # (*K, C_out/g, g, C_in/g)
    return w.reshape(*k, c_out // groups, groups * c_in_g)


def dx_padding(in_size, out_size, kernel, cfg: ConvConfig) -> tuple[tuple[int, int], ...]:
    """The padding of dy_s (dy dilated by the stride) in dx's correlation, per spatial dim.

    A *full* correlation pads by d(K−1) on each side; the high side also gets the remainder
    r = I + lo + hi − d(K−1) − 1 − (O−1)·s (trailing inputs no output reached: their dx is 0);
    the forward's padding (lo, hi) is cropped off by padding that much less (possibly
    negative): (d(K−1) − lo, d(K−1) + r − hi).
    """
    pads = []
    for n_in, n_out, k, s, d, (lo, hi) in zip(in_size, out_size, kernel, cfg.stride,
                                              cfg.dilation, cfg.padding, strict=True):
        full = effective(k, d) - 1
        remainder = n_in + lo + hi - effective(k, d) - (n_out - 1) * s
        pads.append((full - lo, full + remainder - hi))
    return tuple(pads)


def dw_padding(in_size, out_size, kernel, cfg: ConvConfig) -> tuple[tuple[int, int], ...]:
    """The padding of x in dw's correlation with dy_s, per spatial dim: the forward's lo, and on
    the high side whatever makes the window of dy_s ((O−1)·s + 1 long, stepping by d) land on
    exactly K positions: d(K−1) + (O−1)·s + 1 − I − lo, which trims the remainder r."""
    return tuple(
        (lo, (k - 1) * d + (n_out - 1) * s + 1 - n_in - lo)
        for n_in, n_out, k, s, d, (lo, _) in zip(in_size, out_size, kernel, cfg.stride,
                                                 cfg.dilation, cfg.padding, strict=True)
    )


def forward_reference(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y[o] = Σ_k w[k] · x_pad[o·s + k·d]: one correlation (no bias)."""
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=cfg.stride,
        padding=cfg.padding,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_channels_last_numbers(cfg.nd),
        feature_group_count=cfg.groups,
    )


def dx_reference(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dx = full-conv(rot180 w, dy): dy dilated by the stride (``lhs_dilation``), padded by
    :func:`dx_padding` (full, with the forward's padding cropped off), correlated with the
    rotated, channel-transposed kernel dilated like the forward's (``rhs_dilation``)."""
    kernel = w.shape[: cfg.nd]
    return lax.conv_general_dilated(
        dy,
        rot180_transpose(w, cfg.groups),
        window_strides=(1,) * cfg.nd,
        padding=dx_padding(in_size, dy.shape[1:-1], kernel, cfg),
        lhs_dilation=cfg.stride,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_channels_last_numbers(cfg.nd),
        feature_group_count=cfg.groups,
    )


def dw_reference(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """dw = x ⋆ dy_s over the batch: x padded by :func:`dw_padding`, correlated with dy dilated
    by the stride (``rhs_dilation``), stepping by the kernel's dilation (``window_strides``);
    groups pair each group of x with its own group of dy (``batch_group_count``). The batch N is
    what the correlation sums over, so it plays the input features and x's channels the batch,
    in the dimension numbers, as JAX's own dW is written (the two round alike, in and out of
    loops: tests/test_bitwise.py)."""
    return lax.conv_general_dilated(
        x,
        dy,
        window_strides=cfg.dilation,
        padding=dw_padding(x.shape[1:-1], dy.shape[1:-1], kernel, cfg),
        rhs_dilation=cfg.stride,
        dimension_numbers=_weight_grad_numbers(cfg.nd),
        batch_group_count=cfg.groups,
    )


def dw_channels_last(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """:func:`dw_reference` with its transposes written out: x laid out as (C_in, *S, N), dy as a
    (*O, N, C_out) kernel, a channels-last correlation like the forward's, (C_in/g, *K, C_out)
    moved back to the kernel layout.

    The same products (outside loops XLA:CPU transposes the reference into this very form). Inside
    a ``lax.scan`` or ``fori_loop`` body, a jit-compiled training epoch, XLA:CPU (jaxlib 0.10.2)
    keeps a convolution in the layout it is written in and runs any other than channels-last
    through a generic loop: the reference dW there is 20–60× slower
    (``experiments/bench_scan.py``), and so is JAX's own.
    """
    nd = cfg.nd
    x_t = jnp.moveaxis(x, (0, nd + 1), (nd + 1, 0))  # (C_in, *S, N)
    dy_t = jnp.moveaxis(dy, 0, nd)  # (*O, N, C_out)
    dw_t = lax.conv_general_dilated(
        x_t,
        dy_t,
        window_strides=cfg.dilation,
        padding=dw_padding(x.shape[1:-1], dy.shape[1:-1], kernel, cfg),
        rhs_dilation=cfg.stride,
        dimension_numbers=_channels_last_numbers(nd),
        batch_group_count=cfg.groups,
    )
    return jnp.moveaxis(dw_t, 0, nd)  # (*K, C_in/g, C_out)


def per_group(correlation: Callable) -> Callable:
    """The grouped form of a role's ``correlation(a, b, *static, cfg)`` (the reference's, or the
    shifted products'): one ungrouped correlation per group, the results concatenated along the
    channels.

    A grouped convolution is ``groups`` independent convolutions side by side, and every role
    keeps its groups on the last axis of both operands and of the result: the forward's x
    (C_in) and w (C_out) -> y (C_out); dX's dy (C_out) and w (C_out) -> dx (C_in); dW's x (C_in)
    and dy (C_out) -> dw (C_out). XLA:CPU runs a grouped convolution far below its ungrouped
    rate, the ungrouped ones near the matrix-product rate; and for a 1×1 kernel each group's
    shifted products are one plain matrix product (the perceptron's y = x·w, dx = dy·wᵀ,
    dw = xᵀ·dy at every position), where the grouped products are batched ones that XLA:CPU
    runs slower.
    """
    def grouped(a: jax.Array, b: jax.Array, *static):
        *static, cfg = static
        one = ConvConfig(cfg.stride, cfg.padding, cfg.dilation, 1)
        parts = [correlation(a_g, b_g, *static, one) for a_g, b_g in
                 zip(jnp.split(a, cfg.groups, axis=-1), jnp.split(b, cfg.groups, axis=-1),
                     strict=True)]
        return jnp.concatenate(parts, axis=-1)
    return grouped


#: Every formulation of each role by name: the reference ("xla"), dW's reference laid out
#: channels-last ("xla_cl"), the references group by group ("per_group"), the shifted products
#: group by group ("per_group_shifted": for a 1×1 kernel, one plain matrix product per group) and
#: the faster equivalents.
FORWARD: dict[str, Callable] = {
    "xla": forward_reference, "per_group": per_group(forward_reference),
    "per_group_shifted": per_group(_formulations.forward_shifted), **_formulations.FORWARD}
DX: dict[str, Callable] = {
    "xla": dx_reference, "per_group": per_group(dx_reference),
    "per_group_shifted": per_group(_formulations.dx_shifted), **_formulations.DX}
DW: dict[str, Callable] = {
    "xla": dw_reference, "xla_cl": dw_channels_last, "per_group": per_group(dw_channels_last),
    "per_group_shifted": per_group(_formulations.dw_shifted), **_formulations.DW}
TABLES = {"forward": FORWARD, "dx": DX, "dw": DW}

# --------------------------------------------------------------------------------------------
# Forward and the three rules, side by side, each computed by the formulation chosen for its
# shape. The forward's choice is shared with jaxconv.autodiff.conv; the choice of the dx and dw
# formulations is the manual rule's own.
# --------------------------------------------------------------------------------------------


def conv_forward(x: jax.Array, w: jax.Array, b: jax.Array | None, cfg: ConvConfig) -> jax.Array:
    """y = x ⋆ w + b: x (N, *S, C_in), w (*K, C_in/g, C_out), b (C_out,) -> y (N, *O, C_out).

    y[o] = b + Σ_k w[k] · x_pad[o·s + k·d], computed by the formulation chosen for this shape.
    """
    y = FORWARD[_choice.choose("forward", x.shape, w.shape, cfg, x.dtype)](x, w, cfg)
    return y if b is None else y + b


def conv_db(dy: jax.Array) -> jax.Array:
    """db = Σ dy over the batch and every spatial position: (N, *O, C_out) -> (C_out,)."""
    return jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))


def conv_dw(x: jax.Array, dy: jax.Array, kernel: tuple[int, ...], cfg: ConvConfig) -> jax.Array:
    """dw = x ⋆ dy: (N, *S, C_in), (N, *O, C_out) -> (*K, C_in/g, C_out).

    dw[k] = Σ_{n,o} x_pad[n, o·s + k·d] dy[n, o] is a correlation of x with dy in which dy is
    dilated by the stride s and slides with step d (the kernel's dilation). The high padding is
    trimmed by the remainder r = (I + lo + hi − d(K−1) − 1) mod s: those trailing inputs never
    reached the forward output, so they get no gradient. Equivalently, for each offset k,
    dw[k] = view_k(x)ᵀ · dy, a matrix product over the N·O positions.
    """
    w_shape = (*kernel, x.shape[-1] // cfg.groups, dy.shape[-1])
    return DW[_choice.choose("dw", x.shape, w_shape, cfg, x.dtype)](x, dy, kernel, cfg)


def conv_dx(dy: jax.Array, w: jax.Array, in_size: tuple[int, ...], cfg: ConvConfig) -> jax.Array:
    """dx = full-conv(rot180 w, dy): (N, *O, C_out), (*K, C_in/g, C_out) -> (N, *S, C_in).

    dy is dilated by the stride, padded by d(K−1) on each side to make the correlation *full*
    (plus the remainder r on the high side), correlated with the rotated, channel-transposed
    kernel, and the forward's padding (lo, hi) is cropped off again. Equivalently,
    dx_pad = Σ_k scatter_k(dy · w[k]ᵀ): each dy[o] is sent back to the inputs o·s + k·d that
    made it.
    """
    x_shape = (dy.shape[0], *in_size, w.shape[-2] * cfg.groups)
    return DX[_choice.choose("dx", x_shape, w.shape, cfg, dy.dtype)](dy, w, in_size, cfg)


# --------------------------------------------------------------------------------------------
# The manual op: forward + rules via custom_vjp. Residuals: x and w only. The formulations are
# chosen once, when the forward is traced, and reach the rule as a static argument (``plan``:
# the forward, dx and dw names), so the backward computes what was chosen with the forward.
# --------------------------------------------------------------------------------------------


def _conv_planned(x, w, b, cfg, plan):
    y = FORWARD[plan[0]](x, w, cfg)
    return y if b is None else y + b


def _conv_fwd(x, w, b, cfg, plan):
    return _conv_planned(x, w, b, cfg, plan), (x, w, b)


def _conv_bwd(cfg, plan, residuals, dy):
    x, w, b = residuals  # b is kept only for its structure (None or (C_out,))
    dx = laid_out_like(x, DX[plan[1]], dy, w, x.shape[1:-1], cfg)
    dw = laid_out_like(w, DW[plan[2]], x, dy, w.shape[: cfg.nd], cfg)
    db = None if b is None else conv_db(dy)
    return summed_like(dx, x), summed_like(dw, w), summed_like(db, b)


_conv_rule = jax.custom_vjp(_conv_planned, nondiff_argnums=(3, 4))
_conv_rule.defvjp(_conv_fwd, _conv_bwd)
_conv_rules = with_feedback(_conv_rule)  # feedback B: the same rule on residuals (x, B, b)


def _conv_manual(x, w, b, cfg, feedback=None):
    """y = x ⋆ w + b with the hand-derived rule, under the formulations chosen for this shape;
    with a feedback kernel B, dx = full-conv(rot180 B, dy) (:mod:`jaxconv.feedback`)."""
    plan = _choice.plan(x.shape, w.shape, cfg, x.dtype)
    return _conv_rules(x, w, b, cfg, plan, feedback=feedback)


# --------------------------------------------------------------------------------------------
# Public front-end (validation, layouts) shared by jaxconv.conv and jaxconv.autodiff.conv.
# --------------------------------------------------------------------------------------------


def _conv_front(
    core,
    x,
    w,
    b=None,
    *,
    stride=1,
    padding="VALID",
    dilation=1,
    groups=1,
    layout="channels_last",
    feedback=None,
):
    """N-d convolution (cross-correlation, as in the lecture) with optional bias.

    Args:
      x: input. ``channels_last`` (default): ``(N, *spatial, C_in)``; ``channels_first``
        (PyTorch's NCW / NCHW / NCDHW): ``(N, C_in, *spatial)``. 1, 2 or 3 spatial dims.
      w: kernel. ``channels_last``: ``(*kernel, C_in // groups, C_out)`` (lax's HWIO);
        ``channels_first``: ``(C_out, C_in // groups, *kernel)`` (PyTorch's OIHW).
      b: optional bias of shape ``(C_out,)``.
      stride: int or one int per spatial dim.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"`` (``d·(K−1)`` on each side: the lecture's full
        convolution), an int, or one ``(low, high)`` pair per spatial dim.
      dilation: kernel dilation, int or one per spatial dim.
      groups: channel groups; ``groups == C_in`` gives a depthwise convolution.
      layout: ``"channels_last"`` or ``"channels_first"``.
      feedback: what dx is sent back through (:mod:`jaxconv.feedback`): ``None`` (backprop),
        an array of w's shape and dtype (in ``layout``), or a callable of the channels-last
        w (e.g. ``jaxconv.feedback.sign``). Forward, dw and db are backprop's either way.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` (or ``(N, C_out, *out_spatial)``) with
      ``out = (size + lo + hi − d·(K−1) − 1) // stride + 1`` per spatial dim.

    The gradient of ``jaxconv.conv`` is the lecture's rule (see :mod:`jaxconv.ops.conv`):
    ``db = Σ dy``, ``dw = x ⋆ dy``, ``dx = full-conv(rot180 w, dy)``; ``jaxconv.autodiff.conv``
    runs the same forward and lets JAX differentiate it.
    """
    layout = _checks.layout(layout)
    feedback = _checks.feedback(feedback, w)
    x, w, b = _checks.promote(x=x, w=w, b=b)
    if layout == "channels_first":
        if x.ndim >= 3:
            x = jnp.moveaxis(x, 1, -1)
        w, feedback = kernels_last(w, feedback)
    cfg = _checks.conv_config(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout
    )
    y = core(x, w, b, cfg, feedback=_checks.feedback_kernel(feedback, w))
    return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y


def kernels_last(w, feedback):
    """A channels-first kernel (O, I, *K) -> channels-last (*K, I, O), and a feedback array
    with it (a callable feedback is called later, on the channels-last w)."""
    def last(k):
        return jnp.transpose(k, (*range(2, k.ndim), 1, 0)) if k.ndim >= 3 else k

    return last(w), (feedback if callable(feedback) or feedback is None else last(feedback))


conv, conv_autodiff = twins(_conv_front, _conv_manual, autodiff_with_feedback(conv_forward))


def _rank_checked(nd: int, name: str):
    def front(core, x, w, b=None, **kwargs):
        x = _checks.array("x", x)
        if x.ndim != nd + 2:
            raise ValueError(
                f"{name} expects x of rank {nd + 2} (batch, {nd} spatial dim"
                f"{'s' if nd > 1 else ''}, channels), got shape {tuple(x.shape)}; use "
                f"jaxconv.conv for other ranks"
            )
        return core(x, w, b, **kwargs)

    front.__name__ = front.__qualname__ = name
    front.__doc__ = f"{nd}-D convolution: :func:`jaxconv.conv` with x of rank {nd + 2}."
    return twins(front, conv, conv_autodiff)


conv1d, conv1d_autodiff = _rank_checked(1, "conv1d")
conv2d, conv2d_autodiff = _rank_checked(2, "conv2d")
conv3d, conv3d_autodiff = _rank_checked(3, "conv3d")
