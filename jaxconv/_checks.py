"""Normalising and validating static arguments: the one place where jaxconv raises on bad input.

Every public op calls into this module before it touches JAX, so a bad call fails at trace time
with a message that names the argument, what was expected and what came, under ``jit`` and
``grad`` alike. The results are hashable, fully explicit configurations (per-dimension tuples,
explicit ``(low, high)`` pads) that the ops carry as static, never-traced arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxconv._geometry import ConvConfig, PoolConfig, effective

PaddingLike = str | int | Sequence[tuple[int, int]]
LAYOUTS = ("channels_last", "channels_first")
PADDING_STRINGS = ("VALID", "SAME", "FULL")


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


# --------------------------------------------------------------------------------------------
# One wording for every error on bad input: "<name> must <be or have what was expected>, got
# <what came>". Every check below (and the CLI, data, train and models) words its errors
# through these helpers.
# --------------------------------------------------------------------------------------------


def invalid(name: str, expected: str, got: Any, error: type = ValueError) -> Exception:
    """The error for an argument ``name`` that is not ``expected``: raise what this returns.

    Args:
      name: the argument as the caller spells it (``"stride"``, ``"--epochs"``).
      expected: what it must be or have, with its verb: ``"be a positive int"``,
        ``"have shape (C_out,) = (4,)"``.
      got: what came, already worded (``repr`` of a value, ``"shape (3,)"``, ...).
      error: ``ValueError`` (a wrong value) or ``TypeError`` (a wrong kind of thing).
    """
    return error(f"{name} must {expected}, got {got}")


def choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``; else ``<name> must be one of (...), got <value>``
    (a ``TypeError`` for a value of another type than the choices, e.g. a non-string)."""
    choices = tuple(choices)
    try:
        found = value in choices
    except TypeError:  # an unhashable or incomparable value
        found = False
    if not found:
        wrong_type = choices and not any(isinstance(value, type(c)) for c in choices)
        got = _describe(value) if wrong_type else repr(value)
        raise invalid(name, f"be one of {choices}", got, TypeError if wrong_type else ValueError)
    return value


def names(name: str, values: Any, choices: Sequence[str]) -> tuple[str, ...]:
    """A non-empty sequence of names, each one of ``choices``, as a tuple."""
    choices = tuple(choices)
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise invalid(name, f"be a sequence of names from {choices}", _describe(values),
                      TypeError)
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        got = f"the unknown {unknown}" if unknown else "none"
        raise invalid(name, f"be a non-empty sequence of names from {choices}", got)
    return tuple(values)


def _integer(name: str, value: Any, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise invalid(name, f"be {expected}", _describe(value), TypeError)
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """An int > 0 (``bool`` is not an int here)."""
    value = _integer(name, value, "a positive int")
    if value <= 0:
        raise invalid(name, "be a positive int", value)
    return value


def non_negative_int(name: str, value: Any) -> int:
    """An int >= 0 (``bool`` is not an int here)."""
    value = _integer(name, value, "a non-negative int")
    if value < 0:
        raise invalid(name, "be a non-negative int", value)
    return value


def _real(name: str, value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise invalid(name, f"be {expected}", _describe(value), TypeError)
    return float(value)


def positive_number(name: str, value: Any) -> float:
    """A finite real number > 0, as a float."""
    v = _real(name, value, "a positive finite number")
    if not (0 < v < float("inf")):
        raise invalid(name, "be a positive finite number", value)
    return v


def non_negative_number(name: str, value: Any) -> float:
    """A finite real number >= 0, as a float."""
    v = _real(name, value, "a non-negative finite number")
    if not (0 <= v < float("inf")):
        raise invalid(name, "be a non-negative finite number", value)
    return v


def shape(name: str, value: Any, expected: tuple[int, ...], what: str = "") -> None:
    """Check ``value.shape == expected``: ``<name> must have shape <what> = <expected>, got shape
    <value.shape>`` (``what`` names the dimensions, e.g. ``"(C_out,)"``)."""
    if tuple(value.shape) != tuple(expected):
        spelled = f"{what} = {tuple(expected)}" if what else f"{tuple(expected)}"
        raise invalid(name, f"have shape {spelled}", f"shape {tuple(value.shape)}")


def broadcastable_to(name: str, value: Any, target: tuple[int, ...]) -> None:
    """Check that ``value`` broadcasts to ``target`` without growing it."""
    try:
        grown = np.broadcast_shapes(tuple(value.shape), tuple(target)) != tuple(target)
    except ValueError:
        grown = True
    if grown:
        raise invalid(name, f"be a number or an array that broadcasts to shape {tuple(target)}",
                      f"shape {tuple(value.shape)}")


def array(name: str, value: Any) -> Any:
    """Check that ``value`` is an array (or array-like) and return it as one."""
    if isinstance(value, (str, bytes, dict, set)) or value is None:
        raise TypeError(f"{name} must be an array, got {_describe(value)}")
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        try:
            value = jnp.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array, got {_describe(value)}") from err
    return value


def floating(name: str, value: Any) -> Any:
    """Check that ``value`` is an array with a floating dtype (a differentiable input)."""
    value = array(name, value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64) to be "
            f"differentiated, got dtype {value.dtype}; cast it first, e.g. {name}.astype(float)"
        )
    return value


def promote(**arrays: Any) -> tuple[Any, ...]:
    """Validate floating inputs and promote them to one common dtype (``None`` passes through)."""
    checked = {k: (None if v is None else floating(k, v)) for k, v in arrays.items()}
    present = [v for v in checked.values() if v is not None]
    dtype = jnp.result_type(*present)
    return tuple(None if v is None else v.astype(dtype) for v in checked.values())


def per_dim(name: str, value: Any, nd: int, minimum: int = 1) -> tuple[int, ...]:
    """An int, or one int >= ``minimum`` (positive by default) per spatial dimension, as an
    ``nd``-tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values: Sequence[Any] = (value,) * nd
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = value
        if len(values) != nd:
            raise ValueError(
                f"{name} must be an int or a sequence of {nd} ints (one per spatial dimension), "
                f"got {value!r} of length {len(values)}"
            )
    else:
        raise TypeError(f"{name} must be an int or a sequence of {nd} ints, got {_describe(value)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            kind = "positive" if minimum == 1 else f">= {minimum}" if minimum else "non-negative"
            raise ValueError(f"{name} must be {kind} in every dimension, got {value!r}")
        out.append(int(v))
    return tuple(out)


def padding_pairs(
    padding: Any,
    in_size: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    *,
    name: str = "padding",
) -> tuple[tuple[int, int], ...]:
    """Resolve a padding spec into explicit ``(low, high)`` pairs, one per spatial dimension.

    ``window`` is the *effective* (dilated) window size ``d * (k - 1) + 1`` per dimension.

    - ``"VALID"``: no padding.
    - ``"SAME"``: the output has ``ceil(size / stride)`` positions; the extra pad goes high (as in
      ``lax`` and TensorFlow).
    - ``"FULL"``: ``window - 1`` on both sides (the lecture's full convolution).
    - an int ``p``: ``(p, p)`` on every dimension.
    - a sequence of ``(low, high)`` pairs, one per spatial dimension.
    """
    nd = len(in_size)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * nd
        if mode == "FULL":
            return tuple((k - 1, k - 1) for k in window)
        if mode == "SAME":
            pairs = []
            for n, k, s in zip(in_size, window, stride, strict=True):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise ValueError(f"{name} must be one of {PADDING_STRINGS}, an int or (low, high) pairs, "
                         f"got the string {padding!r}")
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"{name} must be non-negative, got {padding}")
        return ((int(padding), int(padding)),) * nd
    if isinstance(padding, Sequence):
        if len(padding) != nd or not all(
            isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in padding
        ):
            raise ValueError(
                f"{name} must be a string, an int, or {nd} (low, high) pairs (one per spatial "
                f"dimension), got {padding!r}"
            )
        pairs = []
        for lo, hi in padding:
            for v in (lo, hi):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{name} pairs must hold ints, got {padding!r}")
                if v < 0:
                    raise ValueError(f"{name} must be non-negative, got {padding!r}")
            pairs.append((int(lo), int(hi)))
        return tuple(pairs)
    raise TypeError(
        f"{name} must be a string, an int or (low, high) pairs, got {_describe(padding)}"
    )


def conv_config(
    x: Any, w: Any, b: Any, *, stride: Any, padding: Any, dilation: Any, groups: Any, layout: str
) -> ConvConfig:
    """Validate a convolution call (arrays already in channels-last layout) and normalise it.

    Args:
      x: input, ``(N, *spatial, C_in)``.
      w: kernel, ``(*kernel, C_in // groups, C_out)``.
      b: bias ``(C_out,)`` or ``None``.
      layout: only used to phrase error messages in the caller's own shapes.
    """
    first = layout == "channels_first"
    x_desc = "(N, C_in, *spatial)" if first else "(N, *spatial, C_in)"
    w_desc = "(C_out, C_in // groups, *kernel)" if first else "(*kernel, C_in // groups, C_out)"
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"x must have rank 3, 4 or 5 {x_desc} for a 1-, 2- or 3-D convolution, "
            f"got shape {_shape(x, first)}"
        )
    if w.ndim != x.ndim:
        raise ValueError(
            f"w must have the same rank as x ({x.ndim}, i.e. {w_desc}), got w of shape "
            f"{_kshape(w, first)} for x of shape {_shape(x, first)}"
        )
    nd = x.ndim - 2
    groups = positive_int("groups", groups)
    c_in, c_out, w_in = x.shape[-1], w.shape[-1], w.shape[-2]
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
    if c_out % groups:
        raise ValueError(
            f"groups={groups} must divide the output channels C_out={c_out} (w of shape "
            f"{_kshape(w, first)})"
        )
    if w_in != c_in // groups:
        raise ValueError(
            f"w must have C_in // groups = {c_in} // {groups} = {c_in // groups} input channels "
            f"{w_desc}, got w of shape {_kshape(w, first)} for x of shape {_shape(x, first)}"
        )
    stride = per_dim("stride", stride, nd)
    dilation = per_dim("dilation", dilation, nd)
    kernel = w.shape[:nd]
    window = tuple(effective(k, d) for k, d in zip(kernel, dilation, strict=True))
    in_size = x.shape[1:-1]
    pads = padding_pairs(padding, in_size, window, stride)
    for i, (n, p, k) in enumerate(zip(in_size, pads, window, strict=True)):
        if n + p[0] + p[1] < k:
            raise ValueError(
                f"the kernel (effective size {k} with dilation {dilation[i]}) is larger than the "
                f"padded input ({n} + {p[0]} + {p[1]} = {n + p[0] + p[1]}) in spatial dimension "
                f"{i}: the output would be empty"
            )
    if b is not None:
        shape("b", b, (c_out,), "(C_out,)")
    return ConvConfig(stride=stride, padding=pads, dilation=dilation, groups=groups)


def _shape(x: Any, first: bool) -> tuple[int, ...]:
    s = tuple(x.shape)
    return (s[0], s[-1], *s[1:-1]) if first and len(s) > 2 else s


def _kshape(w: Any, first: bool) -> tuple[int, ...]:
    s = tuple(w.shape)
    return (s[-1], s[-2], *s[:-2]) if first and len(s) > 2 else s


def layout(value: Any) -> str:
    return choice("layout", value, LAYOUTS)


POOL_PADDING_STRINGS = ("VALID", "SAME")


def pool_config(
    x: Any, window: Any, stride: Any, padding: Any, layout: str = "channels_last"
) -> PoolConfig:
    """Validate a pooling call on ``x`` (already channels-last, ``(N, *spatial, C)``).

    ``layout`` is the caller's own layout, used only to phrase the errors in its shapes.
    ``"FULL"`` padding is refused: its edge windows would hold one real input among padding.
    """
    first = layout == "channels_first"
    if x.ndim not in (3, 4, 5):
        x_desc = "(N, C, *spatial)" if first else "(N, *spatial, C)"
        raise invalid("x", f"have rank 3, 4 or 5 {x_desc} for 1-, 2- or 3-D pooling",
                      f"shape {_shape(x, first)}")
    if isinstance(padding, str) and padding.upper() not in POOL_PADDING_STRINGS:
        raise invalid("padding", f"be one of {POOL_PADDING_STRINGS}, an int or (low, high) pairs "
                      f"for a pool", f"the string {padding!r}")
    nd = x.ndim - 2
    window = per_dim("window", window, nd)
    stride = window if stride is None else per_dim("stride", stride, nd)
    in_size = x.shape[1:-1]
    pads = padding_pairs(padding, in_size, window, stride)
    for i, (n, p, k) in enumerate(zip(in_size, pads, window, strict=True)):
        if p[0] >= k or p[1] >= k:
            raise ValueError(
                f"padding {p} must be smaller than the window ({k}) in spatial dimension {i}: "
                f"a window of padding alone has no value"
            )
        if n + p[0] + p[1] < k:
            raise ValueError(
                f"the window ({k}) is larger than the padded input ({n} + {p[0]} + {p[1]}) in "
                f"spatial dimension {i}: the output would be empty"
            )
    return PoolConfig(window=window, stride=stride, padding=pads, in_size=tuple(in_size))


def dense_shapes(x: Any, w: Any, b: Any) -> None:
    """Check that ``x (..., n_in) @ w (n_in, n_out) + b (n_out,)`` chains."""
    if w.ndim != 2:
        raise ValueError(f"w must have rank 2 (n_in, n_out), got shape {tuple(w.shape)}")
    if x.ndim < 1:
        raise ValueError(f"x must have rank >= 1 (..., n_in), got a scalar of shape {x.shape}")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"x's last axis ({x.shape[-1]}, from shape {tuple(x.shape)}) must equal w's first "
            f"axis n_in ({w.shape[0]}, from shape {tuple(w.shape)}): the shapes do not chain"
        )
    if b is not None:
        shape("b", b, (w.shape[1],), "(n_out,)")


def labels_for(logits: Any, labels: Any) -> Any:
    """Check integer class labels ``(...,)`` against logits ``(..., C)``."""
    labels = array("labels", labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise invalid("labels", "be integer class indices",
                      f"dtype {labels.dtype}; for probability labels use softmax_cross_entropy",
                      TypeError)
    if logits.ndim < 1 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise invalid("labels", f"have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}",
                      f"shape {tuple(labels.shape)} for logits of shape {tuple(logits.shape)}")
    return labels


def probabilities_for(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Check probability labels ``(..., C)`` against logits ``(..., C)``; both floating,
    promoted to one dtype."""
    labels = array("labels", labels)
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        raise invalid("labels", "have a floating dtype (one distribution over the classes per "
                      "example)", f"dtype {labels.dtype}; for integer class labels use "
                      "softmax_cross_entropy_with_integer_labels", TypeError)
    logits, labels = promote(logits=logits, labels=labels)
    if logits.ndim < 1:
        raise invalid("logits", "have rank >= 1 (..., C)", f"shape {tuple(logits.shape)}")
    same_shape("logits", logits, "labels", labels)
    return logits, labels


def same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


# --------------------------------------------------------------------------------------------
# The transposed convolution (jaxconv.conv_transpose).
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvTransposeConfig:
    """A transposed convolution, described by the convolution it transposes.

    The transposed convolution of x (size I per spatial dim) is the convolution's dX rule:
    x is dilated by the stride, correlated *fully* with rot180 w, giving the ``full`` result
    of size ``(I − 1)·s + d·(K − 1) + 1``, and ``lo`` positions are cropped from the start; the
    output has ``out_size = full − lo − hi + output_padding`` positions. The first ``core_size``
    of them are what the dX rule of the convolution ``conv`` (input size ``core_size``,
    padding ``(lo, max(hi − output_padding, 0))``) produces; the remaining
    ``out_size − core_size`` lie beyond every position the kernel reaches and are zero.

    Attributes:
      conv: the convolution being transposed (channels-last; its padding's high side already
        reduced by ``output_padding``).
      out_size: the output's spatial size.
      core_size: the leading part of the output that the dX rule computes (0 in some dim: the
        output is zero there, bias aside).
    """

    conv: ConvConfig
    out_size: tuple[int, ...]
    core_size: tuple[int, ...]

    @property
    def empty(self) -> bool:
        """True when every output position lies outside the kernel's reach (output = bias)."""
        return any(c == 0 for c in self.core_size)


def non_negative_per_dim(name: str, value: Any, nd: int) -> tuple[int, ...]:
    """An int, or one non-negative int per spatial dimension, as an ``nd``-tuple."""
    return per_dim(name, value, nd, minimum=0)


def conv_transpose_config(
    x: Any,
    w: Any,
    b: Any,
    *,
    stride: Any,
    padding: Any,
    output_padding: Any,
    dilation: Any,
    groups: Any,
    layout: str,
) -> ConvTransposeConfig:
    """Validate a transposed convolution (arrays already in channels-last layout) and normalise it.

    Args:
      x: input, ``(N, *spatial, C_in)``.
      w: kernel of the convolution being transposed, ``(*kernel, C_out // groups, C_in)``.
      b: bias ``(C_out,)`` or ``None``.
      stride, dilation: int or one positive int per spatial dim.
      padding: the padding of the convolution being transposed: an int, one int per spatial
        dim, or one ``(low, high)`` pair per spatial dim; non-negative.
      output_padding: int or one int per spatial dim, each ``< max(stride, dilation)``.
      layout: only used to phrase error messages in the caller's own shapes.
    """
    first = layout == "channels_first"
    x_desc = "(N, C_in, *spatial)" if first else "(N, *spatial, C_in)"
    w_desc = "(C_in, C_out // groups, *kernel)" if first else "(*kernel, C_out // groups, C_in)"
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"x must have rank 3, 4 or 5 {x_desc} for a 1-, 2- or 3-D transposed convolution, "
            f"got shape {_shape(x, first)}"
        )
    if w.ndim != x.ndim:
        raise ValueError(
            f"w must have the same rank as x ({x.ndim}, i.e. {w_desc}), got w of shape "
            f"{_kshape(w, first)} for x of shape {_shape(x, first)}"
        )
    nd = x.ndim - 2
    groups = positive_int("groups", groups)
    c_in, w_in, c_out_g = x.shape[-1], w.shape[-1], w.shape[-2]
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
    if w_in != c_in:
        raise ValueError(
            f"w must have C_in = {c_in} input channels {w_desc}, got w of shape "
            f"{_kshape(w, first)} for x of shape {_shape(x, first)}"
        )
    c_out = c_out_g * groups
    stride = per_dim("stride", stride, nd)
    dilation = per_dim("dilation", dilation, nd)
    if isinstance(padding, str):
        raise TypeError(
            f"padding must be an int, or one int or one (low, high) pair per spatial dimension "
            f"({nd}): the padding of the convolution being transposed; got the string {padding!r}"
        )
    if isinstance(padding, Sequence) and all(
        isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding
    ):
        padding = tuple((p, p) for p in non_negative_per_dim("padding", padding, nd))
    kernel = w.shape[:nd]
    window = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    in_size = x.shape[1:-1]
    pads = padding_pairs(padding, in_size, window, stride)
    out_pads = non_negative_per_dim("output_padding", output_padding, nd)
    conv_pads, out_size, core_size = [], [], []
    for i, (n, win, s, d, (lo, hi), op) in enumerate(
        zip(in_size, window, stride, dilation, pads, out_pads, strict=True)
    ):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding must be smaller than max(stride, dilation) = max({s}, {d}) = "
                f"{max(s, d)} in spatial dimension {i}, got {output_padding!r}"
            )
        if n < 1:
            raise ValueError(f"x must have at least one position in every spatial dimension, "
                             f"got shape {_shape(x, first)}")
        full = (n - 1) * s + win
        size = full - lo - hi + op
        if size < 1:
            raise ValueError(
                f"padding {(lo, hi)} leaves no output in spatial dimension {i}: (I - 1)·stride + "
                f"dilation·(K - 1) + 1 - lo - hi + output_padding = {full} - {lo} - {hi} + {op} "
                f"= {size}"
            )
        high = max(hi - op, 0)
        conv_pads.append((lo, high))
        out_size.append(size)
        core_size.append(max(full - lo - high, 0))
    if b is not None and tuple(b.shape) != (c_out,):
        raise ValueError(
            f"b must have shape (C_out,) = ({c_out},) (w's C_out // groups = {c_out_g} times "
            f"groups = {groups}), got shape {tuple(b.shape)}"
        )
    conv = ConvConfig(stride=stride, padding=tuple(conv_pads), dilation=dilation, groups=groups)
    return ConvTransposeConfig(conv=conv, out_size=tuple(out_size), core_size=tuple(core_size))


# --------------------------------------------------------------------------------------------
# feedback= (jaxconv.feedback): None, an array of w's shape and dtype, or a callable of w.
# --------------------------------------------------------------------------------------------


def feedback(value: Any, w: Any) -> Any:
    """``feedback=`` as given: ``None``, a callable of w, or an array of w's shape and dtype
    (checked against ``w`` as the caller passed it, before any promotion or layout change)."""
    if value is None:
        return None
    if callable(value) and not hasattr(value, "shape"):
        return value
    if isinstance(value, (str, bytes, dict, set, bool)) or not (
        hasattr(value, "shape") or isinstance(value, (list, tuple, np.ndarray))
    ):
        raise invalid("feedback", "be None, an array of w's shape and dtype, or a callable of w "
                      "(e.g. jaxconv.feedback.sign)", _describe(value), TypeError)
    value, w = array("feedback", value), array("w", w)
    if tuple(value.shape) != tuple(w.shape) or value.dtype != w.dtype:
        raise invalid("feedback", f"have w's shape {tuple(w.shape)} and dtype {w.dtype}",
                      f"shape {tuple(value.shape)} and dtype {value.dtype}")
    return value


def feedback_kernel(value: Any, w: Any) -> Any:
    """The feedback kernel B for ``w`` in the op's core (channels-last) layout: a callable is
    called on ``w`` and its result checked; an array (already in that layout) is cast to w's
    (promoted) dtype. ``None`` stays ``None``."""
    if value is None or not callable(value) or hasattr(value, "shape"):
        return None if value is None else value.astype(w.dtype)
    out = value(w)
    name = getattr(value, "__name__", None) or type(value).__name__
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise invalid(f"feedback ({name}) called on w", "return an array of w's shape "
                      f"{tuple(w.shape)} and dtype {w.dtype}", _describe(out), TypeError)
    if tuple(out.shape) != tuple(w.shape) or out.dtype != w.dtype:
        raise invalid(f"feedback ({name}) called on w", f"return w's shape {tuple(w.shape)} and "
                      f"dtype {w.dtype}", f"shape {tuple(out.shape)} and dtype {out.dtype}")
    return out
