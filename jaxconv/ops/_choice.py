r"""Which formulation computes the convolution's forward, dX and dW: the policy and the choice.

Every formulation of a role (the reference ``"xla"`` of :mod:`jaxconv.ops.conv`, and the faster
equivalents of :mod:`jaxconv.ops._formulations`) computes the same linear map, so the choice
changes the program's speed, never its values (beyond float rounding). It is made at trace time,
from static shapes, per role:

- ``"forward"`` is shared by ``jaxconv.conv`` and ``jaxconv.autodiff.conv`` (one forward, two
  differentiation modes): both run the same forward program;
- ``"dx"`` and ``"dw"`` exist only for the manual rule; autodiff has no rule to choose, it
  transposes the forward program.

Policy (:func:`set_policy`, the context manager :func:`policy`, or ``$JAXCONV_CONV_POLICY``):

- ``"xla"``: always XLA's convolution, the reference: the reproducible off switch.
- ``"auto"`` (default): :func:`heuristic`, a pure function of the problem (shapes, configuration,
  dtype) and the backend: XLA's convolution except where the tuning set measured a clear win.
  On any backend but CPU it is ``"xla"``. It never reads the measurement cache, so the same code
  compiles to the same program on every machine.
- ``"measure"`` (opt-in): the first time a problem is seen on a backend, the layer's
  forward+backward (jit of vjp: forward, dX and dW as they compose in one program) is compiled
  and timed under candidate formulations (:func:`measure`), and the fastest is kept, in memory
  and in ``conv_algorithms.json`` of the cache folder (``$JAXCONV_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv``), written atomically. A missing,
  unreadable, corrupt or stale cache is ignored and rewritten.

:func:`use` forces formulations by name, whatever the policy.

The choice is part of the program. A ``with policy(...)`` or ``with use(...)`` block fixes a
snapshot, :func:`key` (the policy and the forced names), in a ``contextvars`` variable: it
affects only its own thread or task, and a new thread sees :func:`set_policy`'s global setting.
The same snapshot (or, outside blocks, the global setting) is a ``jax.make_user_context`` value,
which ``jax.jit`` adds to its cache keys: a function jitted under one choice is traced again,
not silently reused, under another. Caches of compiled programs kept outside ``jax.jit`` (as
``jaxconv.train`` keeps) add :func:`key` to their keys. Within one trace, the manual op chooses
its three formulations when its forward is traced and hands them to its rule as a static
argument, so the backward computes what was chosen with the forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxconv._geometry import ConvConfig, effective, out_spatial, padded_size
from jaxconv._io import atomic_open, cache_dir
from jaxconv.ops import _formulations

POLICIES = ("xla", "auto", "measure")
ROLES = ("forward", "dx", "dw")
#: The formulations that compute a grouped convolution group by group
#: (:func:`jaxconv.ops.conv.per_group`): the references', and the shifted products'.
PER_GROUP = ("per_group", "per_group_shifted")
#: The formulations of each role: the reference ``"xla"`` first, then dW's reference laid out
#: channels-last (``"xla_cl"``, :func:`jaxconv.ops.conv.dw_channels_last`), the formulations
#: group by group (:data:`PER_GROUP`), then the faster equivalents.
NAMES: dict[str, tuple[str, ...]] = {
    role: ("xla", *(("xla_cl",) if role == "dw" else ()), *PER_GROUP,
           *_formulations.TABLES[role])
    for role in ROLES
}
CACHE_VERSION = 4
_ENV_POLICY = "JAXCONV_CONV_POLICY"


# --------------------------------------------------------------------------------------------
# Policy, forced formulations, and the key they make.
# --------------------------------------------------------------------------------------------


class Key(NamedTuple):
    """A hashable snapshot of what decides the choice: the policy in force and the forced
    formulations as sorted ``(role, name)`` pairs."""

    policy: str
    forced: tuple[tuple[str, str], ...]


_lock = threading.Lock()
_global: dict[str, str | None] = {"policy": None}  # set_policy's; read and written under _lock
# Inside a policy() or use() block: the Key in force, fixed when the block was entered.
_block: contextvars.ContextVar[Key | None] = contextvars.ContextVar("jaxconv_conv_choice",
                                                                    default=None)
_jit_context = jax.make_user_context(None)


def _check_policy(name) -> None:
    if name is not None and name not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES} or None, got {name!r}")


def _global_policy() -> str:
    with _lock:
        name = _global["policy"]
    if name is not None:
        return name
    env = os.environ.get(_ENV_POLICY, "").strip().lower()
    if env and env not in POLICIES:
        raise ValueError(f"${_ENV_POLICY} must be one of {POLICIES}, got {env!r}")
    return env or "auto"


def key() -> Key:
    """The snapshot of the policy and forced formulations in force: add it to the key of any
    cache of traced or compiled programs (``jax.jit``'s own caches already include it)."""
    block = _block.get()
    return block if block is not None else Key(_global_policy(), ())


def get_policy() -> str:
    """The policy in force: the innermost :func:`policy` block's, else :func:`set_policy`'s,
    else ``$JAXCONV_CONV_POLICY``, else ``"auto"``."""
    return key().policy


def set_policy(name: str | None) -> None:
    """Set the global policy: ``"xla"``, ``"auto"`` or ``"measure"`` (``None``: back to
    ``$JAXCONV_CONV_POLICY`` or ``"auto"``). Applies to every thread, outside :func:`policy` and
    :func:`use` blocks (which keep what was in force when they were entered); ``jax.jit``
    re-traces functions called afterwards."""
    _check_policy(name)
    with _lock:
        _global["policy"] = name
        _jit_context.set_global(("global", name, os.environ.get(_ENV_POLICY)))


@contextlib.contextmanager
def _entered(snapshot: Key):
    token = _block.set(snapshot)
    try:
        with _jit_context(snapshot):
            yield
    finally:
        _block.reset(token)


@contextlib.contextmanager
def policy(name: str | None):
    """``with jaxconv.policy("xla"): ...``: trace the enclosed code under that policy (``None``:
    the global one). Affects only the current thread or task; forced formulations of an
    enclosing :func:`use` block stay forced."""
    _check_policy(name)
    outer = key()
    with _entered(Key(name or _global_policy(), outer.forced)):
        yield


@contextlib.contextmanager
def use(forward: str | None = None, dx: str | None = None, dw: str | None = None):
    """Force formulations by name for code traced inside the block, whatever the policy, e.g.
    ``with jaxconv.use(forward="shifted", dw="im2col"): ...``; a role left ``None`` keeps what an
    enclosing block forced, else follows the policy. A formulation over its memory cap is still
    honoured: forcing is explicit. Affects only the current thread or task."""
    outer = key()
    forced = dict(outer.forced)
    for role, name in (("forward", forward), ("dx", dx), ("dw", dw)):
        if name is not None:
            if name not in NAMES[role]:
                raise ValueError(f"{role} must be one of {NAMES[role]} or None, got {name!r}")
            forced[role] = name
    with _entered(Key(outer.policy, tuple(sorted(forced.items())))):
        yield


# --------------------------------------------------------------------------------------------
# The problem a choice is made for, and eligibility.
# --------------------------------------------------------------------------------------------


def problem(x_shape, w_shape, cfg: ConvConfig, dtype) -> dict:
    """A JSON-able description of one convolution (the choice's input)."""
    return {
        "x": list(x_shape), "w": list(w_shape), "stride": list(cfg.stride),
        "padding": [list(p) for p in cfg.padding], "dilation": list(cfg.dilation),
        "groups": cfg.groups, "dtype": jnp.dtype(dtype).name,
    }


def _cols_bytes(x_shape, w_shape, cfg: ConvConfig, dtype) -> int:
    out = out_spatial(x_shape[1:-1], w_shape[:-2], cfg)
    n_k = math.prod(w_shape[:-2])
    return x_shape[0] * math.prod(out) * n_k * x_shape[-1] * jnp.dtype(dtype).itemsize


def _banded_bytes(x_shape, w_shape, cfg: ConvConfig, dtype) -> tuple[int, int]:
    """(the banded matrix T, the row views): |K_lead|·W_pad·C_in·O_w·C_out and
    N·|O_lead|·|K_lead|·W_pad·C_in elements, in bytes."""
    out = out_spatial(x_shape[1:-1], w_shape[:-2], cfg)
    width = padded_size(x_shape[1:-1], cfg.padding)[-1]
    row = width * x_shape[-1] * math.prod(w_shape[:-3])
    size = jnp.dtype(dtype).itemsize
    return row * out[-1] * w_shape[-1] * size, x_shape[0] * math.prod(out[:-1]) * row * size


def _winograd_bytes(x_shape, w_shape, cfg: ConvConfig, dtype) -> int:
    """Winograd's transformed tiles and products: 16 numbers per 2×2 tile and channel, in and
    out (4·(|x| + |y|) rounded up to whole tiles), in bytes."""
    out = out_spatial(x_shape[1:-1], w_shape[:-2], cfg)
    tiles = math.prod(-(-o // 2) for o in out) * x_shape[0]
    return 16 * tiles * (x_shape[-1] + w_shape[-1]) * jnp.dtype(dtype).itemsize


# A |K|-times larger patch buffer is allowed up to this size (bytes); above it, im2col/col2im
# are ineligible and ``shifted`` (no buffer larger than x or y) takes their place. This bounds the
# extra memory the rules may cost over autodiff, which keeps only x, w and XLA's own workspace.
# The banded row views obey the same cap.
IM2COL_MAX_BYTES = 256 * 2**20
# The banded matrix T grows with the row length squared (W_pad·O_w): beyond this size its zeros
# cost more than any convolution algorithm, so ``banded`` is ineligible.
BANDED_MAX_BYTES = 16 * 2**20


def eligible(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> tuple[str, ...]:
    """The formulations of ``role`` that may be chosen for this problem.

    Every formulation but ``winograd`` (every role: 2-D 3×3, stride 1, no dilation or groups)
    handles stride, padding, dilation and groups; the other restrictions are memory: the
    im2col/col2im buffer and the banded row views must stay under ``IM2COL_MAX_BYTES``, the
    banded matrix under ``BANDED_MAX_BYTES``.
    """
    names = NAMES[role]
    if _cols_bytes(x_shape, w_shape, cfg, dtype) > IM2COL_MAX_BYTES:
        names = tuple(n for n in names if n not in ("im2col", "col2im"))
    matrix, rows = _banded_bytes(x_shape, w_shape, cfg, dtype)
    if matrix > BANDED_MAX_BYTES or rows > IM2COL_MAX_BYTES:
        names = tuple(n for n in names if n != "banded")
    if (not _formulations.winograd_suits(w_shape, cfg)
            or _winograd_bytes(x_shape, w_shape, cfg, dtype) > IM2COL_MAX_BYTES):
        names = tuple(n for n in names if n != "winograd")
    if cfg.groups == 1:
        names = tuple(n for n in names if n not in PER_GROUP)
    if role == "dx" and xla_dx_may_abort(x_shape, w_shape, cfg):
        names = tuple(n for n in names if n not in LHS_DILATED_DX)
    return names


#: The dX formulations that are XLA convolutions of dy dilated by the stride (``lhs_dilation``):
#: the ones :func:`xla_dx_may_abort` rules out.
LHS_DILATED_DX = ("xla", "per_group")


def xla_dx_may_abort(x_shape, w_shape, cfg: ConvConfig) -> bool:
    """Whether XLA:CPU (jaxlib 0.10.2) may abort the whole process compiling the ``xla`` dX of
    this convolution: one convolution with dy dilated by the stride (``lhs_dilation``).

    ``experiments/abort_sweep.py`` found the class (results/abort_sweep.md): 2 or more spatial
    dims, one with stride = kernel >= 2, another whose (dilated) kernel is larger than dy. It is
    taken broadly here (any stride >= 2 in one dim, a kernel larger than dy in another): there
    no :data:`LHS_DILATED_DX` formulation is eligible for dX, and :func:`choose` computes dX as
    ``shifted`` products even under the ``"xla"`` policy or a forced ``use(dx="xla")``. Other
    backends are unaffected.
    """
    nd = len(w_shape) - 2
    if nd < 2 or jax.default_backend() != "cpu":
        return False
    kernel = tuple(w_shape[:nd])
    out = out_spatial(tuple(x_shape[1:-1]), kernel, cfg)
    strided = [a for a in range(nd) if cfg.stride[a] >= 2]
    wide = [b for b in range(nd) if effective(kernel[b], cfg.dilation[b]) > out[b]]
    return any(a != b for a in strided for b in wide)


# --------------------------------------------------------------------------------------------
# The heuristic (policy "auto").
# --------------------------------------------------------------------------------------------


# The banded dX and dW: LeNet's layers (6 and 16 output channels) won 1.8–4.6× over plain JAX;
# with more output channels XLA's convolution held its own or won (2-D, forward+backward against
# plain JAX, quiet machine; the tune shapes gray32.k5.c32.b32 and gray28.k7.c48.b8 tied at
# 0.94–1.00×, c4.20.k5.c64.b16 lost at 0.43× and heldout3's pixelcnn.7x7.b16 at 0.71×). Up to this
# many output channels the banded rules apply.
BANDED_MAX_C_OUT = 16


def _banded_suits(x_shape, w_shape, cfg: ConvConfig, names) -> bool:
    """Where the banded products beat XLA's convolution on CPU: 2-D and 3-D, no groups, at most
    8 input and ``BANDED_MAX_C_OUT`` output channels (XLA's convolution runs at a few percent of
    the matmul rate there), and rows short enough that T's zeros cost at most ~8× the useful
    work (W_pad ≤ 8·K_w,eff). In 1-D there are no leading rows to share T between (the product's
    M is the batch alone)."""
    nd, c_in = len(w_shape) - 2, x_shape[-1]
    width = padded_size(x_shape[1:-1], cfg.padding)[-1]
    return ("banded" in names and nd >= 2 and cfg.groups == 1 and c_in <= 8
            and w_shape[-1] <= BANDED_MAX_C_OUT
            and width <= 8 * effective(w_shape[-3], cfg.dilation[-1]))


# Strided 1-D layers (the MNIST-1D layers' col2im dX and im2col dW), narrowed after a second
# held-out set lost 0.49× on an ECG layer (32×1000×64, 7 taps, stride 2) with both. On the tune
# set (experiments/bench_layers.py, forced plans against autodiff, 2-core CPU under load 6–7):
# - col2im dX won where the input channels were few (cnn1d 1.08–1.51×, signal1d.stem.b32 1.38×,
#   signal1d.s2.b64.c16 1.47×) and only tied XLA's from 32 channels on (audio1d.s2.b16 0.97×,
#   speechlike.1d.s2 0.92×, conv1d.s2.b2.c128 0.95×, conv1d.s2.b64.c32 1.07×): below this many
#   input channels per group, col2im;
STRIDED_1D_COL2IM_MAX_C_IN = 31
# - im2col dW won only on a small patch buffer (conv1d.s2.b2.c128, 1.3 MB: 1.49×; the cnn1d
#   layers, ≤ 0.6 MB) and lost on larger ones (speechlike.1d.s2, 3.4 MB: 0.78×; audio1d.s2.b16,
#   19 MB: 0.49×), tying in between (signal1d.stem.b32 2.8 MB: 0.96×): im2col up to this size.
STRIDED_1D_IM2COL_MAX_BYTES = 2 * 2**20


# Depthwise dW, 2-D and 3-D: the shifted products image by image (``shifted_per_image``, a scan
# over the batch once dy exceeds the L2 cache; see _formulations.per_image). Fitted on the tune
# set's depthwise layers and seven added ones, dW alone (jit, interleaved, milliseconds, whole
# batch / image by image / XLA's): depthwise.3x3 75.9 / 19.6 / 251; dw5.s2.b16.c96 47.0 / 13.7 /
# 115; dw3.s2.b32.c16 35.8 / 10.3 / 27.0; dw3.c320.b128.7 27.8 / 5.2 / 112; dw5.c96.b64.14
# 40.9 / 8.0 / 87; dw3.c64.b512.8 33.4 / 8.3 / 84; dw3d.c64.b4 71.6 / 40.4 / 168; below the
# threshold (the whole batch at once) the same within 4%. XLA's dW, kept for strided depthwise
# layers of at most 32 channels since an old-harness fit (1.9× on dw3.s2.b32.c16), lost to both
# there. In 1-D the scan lost (dw1d.k9.c128.b16: 211 against 51 ms): 1-D depthwise dW stays
# ``shifted``.


# Winograd F(2×2, 3×3) for the forward and dW (they transform the same input tiles, which XLA
# computes once), XLA's dX, on 3×3 stride-1 layers with enough channels and outputs. First fitted
# (all three roles on Winograd) on the tune set's 3×3 "SAME" layers with the old harness, which
# rotated a fixed order of calls: from 64 channels in and out and outputs ≥ 12×12 all five won
# (1.08–2.17× the twin); 32 channels won twice and lost on the Flax MNIST CNN's second layer
# (0.78×, 0.80×). Refitted with the harness that runs each timed call after one of its own
# (experiments/bench_winograd.py, results/bench_winograd_refit.md: forward+backward against plain
# JAX, quiet machine), the forward and dW on Winograd with XLA's dX against all three on Winograd:
# the Flax CNN's layer 1.62× against 1.08×, and from 32 channels w3.c32.b32.16 1.15× against
# 0.97×, w3.c32.c64.b64.12 1.93× against 1.74×, w3.c48.b32.24 2.92× against 1.57×; from 64
# channels 1.84× against 1.78× and ResNet's 3×3 at batch 8 2.31× against 1.76×, but at batch 2
# and 4 with 96 and 128 channels Winograd's dX won (1.59× against 1.82×, 1.34× against 1.47×);
# 16 channels lost either way (0.77×, 0.56×), and so did 7×7 outputs with all three (0.86×).
# Whether small batches want Winograd's dX was then tried on five more tune layers at batch 1 to 8
# (results/bench_winograd_small_batch.md): the forward+dW plan won or tied on all five (1.06–1.41×
# against 0.92–1.32×), so the two losses above are not a batch rule, and no dX rule was fitted.
WINOGRAD_MIN_C = 32
WINOGRAD_MIN_OUT = 12


# Single-input-channel layers with small kernels and many outputs: im2col dW (one product of the
# (N·O, |K|) patches with dy). Fitted on the tune set's single-channel layers (forward+backward
# against the twin, and forward+dW alone as a network's first layer runs it, quiet machine): 3×3
# kernels with 32 and 64 outputs won (2.34× and 1.22× against XLA's dW's 2.25× and 1.12×; 2.09× and
# 2.00× against 1.66× and 1.89× as a first layer); 8 outputs lost (1.15× against 1.38×), and so
# did 5×5 and 7×7 kernels (0.58–1.12× against 1.44–2.67×). Up to this many kernel taps and from
# this many outputs:
SINGLE_CHANNEL_IM2COL_DW_MAX_TAPS = 9
SINGLE_CHANNEL_IM2COL_DW_MIN_C_OUT = 32


# Grouped (not depthwise) layers with more than one tap: one ungrouped XLA convolution per group
# for all three roles (``per_group``), from two input channels per group. First fitted (old
# harness) on the tune set's ten grouped layers with a floor of 8 channels per group: with 8 to 64
# channels per group all five won over the shifted products (1.48–3.92× against 1.01–1.19× the
# autodiff twin); 4 channels per group had read a tie (1.15× against 1.06×) and 2 a loss (1.27×
# against 1.42×). heldout6's SKNet layer (5×5, 4 per group) then lost on the shifted products
# (0.81× the twin). Re-measured with the corrected harness (forced plans, forward+backward against
# the twin of the shifted forward), per_group won on all six tune layers with 2 to 4 channels per
# group: g16.c4.b8 2.72× (shifted 0.96×), g32.c2.b8 2.52× (1.16×), g32.5x5.c4.b16.14 3.98×
# (0.83×), g16.1d.k9.c4.b8 3.27× (1.01×), g128.c2.b4.56 3.24× (0.96×), g32.7x7.c3.b16 9.8×
# (0.93×). Its cost is compile time, one convolution per group and role: 2.6 s against 1.1 s for
# the shifted products at 32 groups, 6–12 s against 1.1 s at 128 groups (a ``lax.map`` over the
# groups compiled in 0.6 s but ran 8–23% slower: the groups' transposes).
PER_GROUP_MIN_C_IN = 2


def _winograd_pays(x_shape, w_shape, cfg: ConvConfig, names) -> bool:
    out = out_spatial(x_shape[1:-1], w_shape[:-2], cfg)
    return ("winograd" in names and x_shape[-1] >= WINOGRAD_MIN_C
            and w_shape[-1] >= WINOGRAD_MIN_C and min(out) >= WINOGRAD_MIN_OUT)


def heuristic(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> str:
    """The choice of policy ``"auto"`` on CPU, without measuring: XLA's convolution except where
    the tuning set showed a large, repeatable win.

    XLA:CPU runs a convolution near the matmul rate when it is *plain*: enough channels, no
    groups, no dilation of the input. Where it leaves that regime the rule is computed otherwise:

    - 1×1 kernels (one tap: 1-, 2- or 3-D, any stride): the perceptron's products at every
      position, ``shifted`` for all three roles (y = x·w, dx = dy·wᵀ, dw = xᵀ·dy), group by
      group when grouped (``per_group_shifted``; a depthwise 1×1 stays elementwise,
      ``shifted``). XLA:CPU runs a 1×1 convolution below the rate of the matrix product it is,
      its dW (a convolution whose kernel is the whole of dy) far below: on the tune set's nine
      ungrouped 1×1 layers the products ran 1.05–4.7× the twin of XLA's convolution (ResNet's
      1×1 at batch 16: 59 against 203 ms), the forward alone (XLA's dW kept) 0.84–1.35×; on its
      seven grouped ones, one product per group ran 0.89–2.00× the twin of the batched shifted
      products, which themselves ran 0.57–0.79× (forward+backward, forced plans);
    - grouped layers with at least ``PER_GROUP_MIN_C_IN`` input channels per group (all but
      depthwise ones) and more than one kernel tap: ``per_group`` for all three roles, one
      ungrouped XLA convolution per group (XLA:CPU's ungrouped convolution runs near the matmul
      rate, its grouped one far below); a dX in XLA:CPU's aborting class is computed as
      ``shifted`` instead;
    - depthwise layers (one input channel per group): ``shifted`` for all three roles, the
      elementwise products (XLA:CPU's grouped convolution runs far below the matmul rate: the
      README's depthwise layer, 5× slower); in 2-D and 3-D the dW image by image
      (``shifted_per_image``: each tap's product stays in cache, 1.8–5.3× on the tune set's
      dW);
    - few input and output channels on short rows, 2-D or 3-D (:func:`_banded_suits`: LeNet's
      layers): dx and dw ``banded`` (2–9× over XLA's); the forward ``shifted`` for one input
      channel, ``banded`` in 3-D, else ``xla``;
    - other layers with one input channel, 2-D or 3-D (a network's first layer): the forward
      ``shifted`` (|K| outer products) and dX ``col2im`` (one product to the patches, then
      scatters; ``shifted`` above the memory cap), XLA's dW. The forward was found on the Flax
      MNIST CNN's first layer and held on four other single-channel layers
      (``experiments/bench_single_channel.py``: 1.5–1.6× over autodiff with dX, 1.9–2.9×
      without). XLA's dX then lost to the autodiff twin's (the transpose of the shifted forward)
      on 3×3 kernels (heldout4's EMNIST layer 0.68×, seen first there); on the seven
      single-channel tune layers this plan ran 1.31–2.25× over the twin (XLA's dX 0.58–1.77×,
      shifted dX 1.14–1.93×, shifted or im2col dW 0.44–1.22×); with at most
      ``SINGLE_CHANNEL_IM2COL_DW_MAX_TAPS`` kernel taps and at least
      ``SINGLE_CHANNEL_IM2COL_DW_MIN_C_OUT`` outputs, dW ``im2col`` instead of XLA's;
    - 3×3, stride-1, undilated 2-D layers with at least ``WINOGRAD_MIN_C`` channels in and out
      and outputs of at least ``WINOGRAD_MIN_OUT`` in each dimension (:func:`_winograd_pays`):
      Winograd F(2×2, 3×3) for the forward and dW (2.25× fewer multiplications; the transforms
      are memory traffic, which is why it loses on few channels or tiny outputs), XLA's dX;
    - a strided 1-D layer (the MNIST-1D layers): XLA's dx dilates dy by the stride
      (``lhs_dilation``) and multiplies all the inserted zeros, its dw contracts the batch
      against a dilated dy; dx ``col2im`` (one product, then scatters; ``shifted`` above the
      memory cap) when the input channels are few (``STRIDED_1D_COL2IM_MAX_C_IN``), dw
      ``im2col`` (one product) when its patch buffer is small
      (``STRIDED_1D_IM2COL_MAX_BYTES``); elsewhere XLA's dx and dw held their own or won
      (``audio1d.s2.b16``, 64 channels and 8192 output rows: 0.46× with both; the loss was first
      seen on ``heldout2``'s ECG layer, so that set was looked at for this rule). From 2-D on
      the same col2im lost on the tune set where the kernel is large and the channels few
      (ResNet's and AlexNet's stems: 0.4–0.8×) and only broke even on ResNet's stride-2 3×3, so
      XLA keeps it; XLA's 2-D dw held its own too (ResNet's 3×3, stride 1 and 2);
    - everything else, and every forward not listed: ``xla``.

    Wherever dW is XLA's convolution it is computed channels-last (``xla_cl``): the reference's
    products, which XLA:CPU runs at one speed alone and inside a ``lax.scan`` body, where the
    reference's layout (JAX's own) takes a generic loop 20–60× slower
    (``experiments/bench_scan.py``).

    Fitted on the tune set of ``experiments/bench_layers.py`` (``jaxconv.bench.LAYERS`` and
    ``TUNE_EXTRA``, 2-core CPU, float32; ``--calibrate`` records the forward+backward timings of
    every candidate); reported on the held-out sets ``HELDOUT``, ``HELDOUT2`` and ``HELDOUT3``
    (all three looked at: their losses chose which kinds of shapes were added to the tune set)
    and ``HELDOUT4``, written before the single-channel and banded rules were refitted (looked at
    since), ``HELDOUT5``, written before the Winograd rule was fitted, ``HELDOUT6``, before the
    per-group rule, ``HELDOUT7``, before the single-channel im2col dW, ``HELDOUT8``, before the
    1×1 rule, ``HELDOUT9``, before the Winograd rule was refitted below 64 channels,
    ``HELDOUT10``, before the per-group rule was refitted below 8 channels per group, and
    ``HELDOUT11``, before the depthwise dW image by image (all looked at since).
    """
    name = _heuristic(role, x_shape, w_shape, cfg, dtype)
    return "xla_cl" if (role, name) == ("dw", "xla") else name


def _heuristic(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> str:
    names = eligible(role, x_shape, w_shape, cfg, dtype)
    c_in_g, nd = w_shape[-2], len(w_shape) - 2
    strided = any(s > 1 for s in cfg.stride)
    taps = math.prod(w_shape[:-2])
    if taps == 1:  # 1×1: the perceptron's products at every position
        return "per_group_shifted" if cfg.groups > 1 and c_in_g > 1 else "shifted"
    if "per_group" in names and c_in_g >= PER_GROUP_MIN_C_IN:  # eligible only when grouped
        return "per_group"
    if cfg.groups > 1:  # depthwise (one input channel per group), or per_group's aborting dX
        return "shifted_per_image" if role == "dw" and nd >= 2 else "shifted"
    if _winograd_pays(x_shape, w_shape, cfg, names):
        return "xla" if role == "dx" else "winograd"
    if _banded_suits(x_shape, w_shape, cfg, names):
        if role != "forward":
            return "banded"
        return "shifted" if c_in_g == 1 else ("banded" if nd == 3 else "xla")
    one_channel = c_in_g == 1 and nd >= 2
    if one_channel and role == "forward":
        return "shifted"
    if (one_channel and role == "dw" and "im2col" in names
            and taps <= SINGLE_CHANNEL_IM2COL_DW_MAX_TAPS
            and w_shape[-1] >= SINGLE_CHANNEL_IM2COL_DW_MIN_C_OUT):
        return "im2col"
    if role == "dx" and (one_channel or (strided and nd == 1
                                         and c_in_g <= STRIDED_1D_COL2IM_MAX_C_IN)):
        return "col2im" if "col2im" in names else "shifted"
    if (strided and nd == 1 and role == "dw"
            and _cols_bytes(x_shape, w_shape, cfg, dtype) <= STRIDED_1D_IM2COL_MAX_BYTES):
        return "im2col"
    return "xla"


# --------------------------------------------------------------------------------------------
# Measurement and its on-disk cache (policy "measure").
# --------------------------------------------------------------------------------------------

_memory: dict[str, dict[str, str]] = {}  # cache key -> {role: name}; read and written under _lock
_loaded: list[dict] = []  # the disk cache, read once (under _lock)


def cache_path() -> Path:
    """``conv_algorithms.json`` in jaxconv's cache folder (:func:`jaxconv._io.cache_dir`:
    ``$JAXCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv``)."""
    return cache_dir() / "conv_algorithms.json"


def _cache_key(prob: dict, backend: str) -> str:
    return json.dumps({"backend": backend, **prob}, sort_keys=True)


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and set(entry) == set(ROLES)
            and all(entry[role] in NAMES[role] for role in ROLES))


def load_cache() -> dict[str, dict[str, str]]:
    """The cached choices ``{key: {role: name}}``; ``{}`` when the file is missing, unreadable,
    corrupt or stale; entries that do not name a formulation of every role are dropped."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("choices")
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v)}


def _save_cache(entries: dict) -> None:
    """Write the cache atomically; a cache that cannot be written is silently skipped: it is an
    optimisation, never a requirement."""
    with contextlib.suppress(OSError), atomic_open(cache_path()) as f:
        json.dump({"version": CACHE_VERSION, "choices": entries}, f, indent=0, sort_keys=True)


def clear_memory() -> None:
    """Forget the measured choices held in memory (the disk cache is re-read on next use)."""
    with _lock:
        _memory.clear()
        _loaded.clear()


def _runner(x_shape, w_shape, cfg: ConvConfig, dtype, names: tuple[str, str, str]):
    """The layer's forward+backward (jit of vjp of ``jaxconv.conv``, with bias) compiled under the
    formulations ``names`` (forward, dx, dw), on fixed random inputs: a no-argument callable."""
    import jaxconv  # the public op; imported here because jaxconv.ops.conv imports this module

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, x_shape, dtype)
    w = jax.random.normal(k2, w_shape, dtype)
    b = jnp.zeros(w_shape[-1:], dtype)
    dy = jax.random.normal(k3, (x_shape[0], *out_spatial(x_shape[1:-1], w_shape[:-2], cfg),
                                w_shape[-1]), dtype)
    kw = dict(stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups)

    def forward_backward(x, w, b, dy):
        y, vjp = jax.vjp(lambda x, w, b: jaxconv.conv(x, w, b, **kw), x, w, b)
        return y, vjp(dy)  # y too: in a vjp returning only the cotangents y is dead code

    with use(*names):
        compiled = jax.jit(forward_backward).lower(x, w, b, dy).compile()
    return lambda: jax.block_until_ready(compiled(x, w, b, dy))


def _time(runners: dict, repeats: int) -> dict:
    """Minimum seconds per call of each runner: one warm-up call each, then ``repeats``
    rounds, each in a fresh random order (seeded; a call is slowed by the one before it, and a
    fixed order would always give a candidate the same predecessor). The minimum is the
    statistic least disturbed by other load."""
    for run in runners.values():
        run()
    best = {name: math.inf for name in runners}
    order = random.Random(0)
    for _ in range(repeats):
        for name in order.sample(list(runners), len(runners)):
            t0 = time.perf_counter()
            runners[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


#: A candidate replaces the incumbent only when it is at least this much faster (a timing
#: difference smaller than that is noise on a shared machine, and XLA's convolution is the
#: safer default).
MARGIN = 0.95


def measure(x_shape, w_shape, cfg: ConvConfig, dtype, repeats: int = 5) -> dict:
    """Choose the formulations of one layer by timing its forward+backward as it composes.

    Starting from XLA's convolution for all three roles (dW laid out channels-last, ``xla_cl``,
    as :func:`heuristic` has it), each role in turn (dw, dx, forward)
    tries every eligible formulation with the other two fixed at the best so far, timed against
    the incumbent in the same round-robin (:func:`_time`); a candidate wins only when at least
    ``1 − MARGIN`` faster. At most 1 + 3·3 programs are compiled.

    Returns:
      ``{"choice": {role: name}, "seconds": {role: {"forward/dx/dw": min seconds, ...}}}``: the
      timings of each role's round, the incumbent among them.
    """
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    best = ("xla", "xla", "xla_cl")
    seconds: dict[str, dict[str, float]] = {}
    runners = {best: _runner(x_shape, w_shape, cfg, dtype, best)}
    for role in ("dw", "dx", "forward"):
        i = ROLES.index(role)
        candidates = {best: runners[best]}
        for name in eligible(role, x_shape, w_shape, cfg, dtype):
            names = (*best[:i], name, *best[i + 1:])
            if names not in candidates:
                candidates[names] = runners.setdefault(
                    names, _runner(x_shape, w_shape, cfg, dtype, names))
        if len(candidates) == 1:
            continue
        times = _time(candidates, repeats)
        seconds[role] = {"/".join(n): t for n, t in times.items()}
        fastest = min(times, key=times.get)
        if times[fastest] < MARGIN * times[best]:
            best = fastest
    return {"choice": dict(zip(ROLES, best, strict=True)), "seconds": seconds}


def measured(x_shape, w_shape, cfg: ConvConfig, dtype) -> dict[str, str]:
    """The measured choice ``{role: name}`` of this problem on the default backend: from memory,
    else from the disk cache, else :func:`measure` (then remembered and written to disk)."""
    key = _cache_key(problem(x_shape, w_shape, cfg, dtype), jax.default_backend())
    with _lock:
        if not _loaded:
            _loaded.append(load_cache())
        choice = _memory.get(key) or _loaded[0].get(key)
    if choice is not None:
        return choice
    # Measuring runs concrete computations while the caller is being traced; that is allowed,
    # and ensure_compile_time_eval keeps them out of the caller's trace.
    with jax.ensure_compile_time_eval():
        choice = measure(x_shape, w_shape, cfg, dtype)["choice"]
    with _lock:
        _memory[key] = choice
        entries = load_cache()  # merge with what other processes wrote meanwhile
        entries.update(_memory)
        _save_cache(entries)
        _loaded[:] = [entries]
    return choice


# --------------------------------------------------------------------------------------------
# The choice.
# --------------------------------------------------------------------------------------------


def choose(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> str:
    """The formulation of ``role`` ("forward", "dx" or "dw") for this problem: the one forced
    by :func:`use`, else the policy's; never an ``xla`` or ``per_group`` dX that XLA:CPU would
    abort on (:func:`xla_dx_may_abort`)."""
    name = _choose(role, x_shape, w_shape, cfg, dtype)
    if role == "dx" and name in LHS_DILATED_DX and xla_dx_may_abort(x_shape, w_shape, cfg):
        return "shifted"
    return name


def _choose(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> str:
    mode, forced = key()
    if role in dict(forced):
        name = dict(forced)[role]
        if name == "winograd" and not _formulations.winograd_suits(w_shape, cfg):
            raise ValueError(
                f"{role}='winograd' computes only 2-D 3x3 convolutions with stride 1, no "
                f"dilation and no groups; got kernel {tuple(w_shape[:-2])}, stride {cfg.stride}, "
                f"dilation {cfg.dilation}, groups {cfg.groups}")
        return name
    if mode == "xla":
        return "xla"
    if mode == "measure":
        return measured(x_shape, w_shape, cfg, dtype)[role]
    if jax.default_backend() != "cpu":
        return "xla"
    return heuristic(role, x_shape, w_shape, cfg, dtype)


def plan(x_shape, w_shape, cfg: ConvConfig, dtype) -> tuple[str, str, str]:
    """The formulations of the forward, dx and dw for this problem (:func:`choose` per role)."""
    return tuple(choose(role, x_shape, w_shape, cfg, dtype) for role in ROLES)

