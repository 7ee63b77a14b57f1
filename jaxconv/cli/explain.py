"""``jaxconv explain {conv1d,conv2d,perceptron}``: the lecture's worked examples, with numbers.

The numbers come from :mod:`jaxconv.explain`; this module only prints them: the forward pass,
the Jacobians, the chain rule term by term, the convolution identities, jax.grad, whether the
routes agree, and (conv1d) the slides' typos with the corrected lines.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from jaxconv.cli import CLIError

EXAMPLES = ("conv1d", "conv2d", "perceptron")
DECIMALS = 4


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="walk through the lecture's worked example with numbers",
        description=(
            "Walk through the lecture's worked example: the forward pass, the Jacobians ∂y/∂w and "
            "∂y/∂x, dx, dw and db by the chain rule, by the convolution identities "
            "(dw = x ⋆ dy, dx = full-conv(rot180 w, dy)) and by jax.grad, and the slides' typos. "
            "Values are comma-separated; rows of a 2-D array are separated by ';'. Write a value "
            "that starts with '-' as --x=-1,2."
        ),
    )
    p.add_argument("example", nargs="?", default="conv1d", choices=EXAMPLES,
                   help="which example (default: conv1d, the lecture's)")
    p.add_argument("--x", default=None,
                   help="the input, e.g. 0.5,-1.2,2,0.7 (conv2d: 1,2,3;4,5,6;7,8,9)")
    p.add_argument("--w", default=None, help="the filter (perceptron: the weights), e.g. 1.5,-0.4")
    p.add_argument("--b", default=None, help="the bias, e.g. 0.3")
    p.add_argument("--dy", default=None,
                   help="conv1d/conv2d: the upstream gradient ∂L/∂y, shaped like y, e.g. "
                        "0.2,-0.7,1.1")
    p.add_argument("--t", default=None, help="perceptron: the target of the squared error")
    p.set_defaults(run=run)


# --------------------------------------------------------------------------------------------
# Parsing the user's numbers.
# --------------------------------------------------------------------------------------------


def _number(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--{option} must be numbers separated by commas, got {text.strip()!r} "
                         f"in it") from None
    if not math.isfinite(value):
        raise ValueError(f"--{option} must be finite numbers, got {text.strip()!r}")
    return value


def parse_values(option: str, text: str | None, ndim: int) -> np.ndarray | None:
    """'0.5,-1.2,2' -> a 1-D array; '1,2;3,4' (or a square count of values) -> a 2-D array."""
    if text is None:
        return None
    rows = [r for r in text.split(";")]
    values = [[_number(option, v) for v in r.split(",")] for r in rows]
    if ndim == 1:
        if len(values) != 1:
            raise ValueError(f"--{option} must be one row of numbers (no ';'), got {text!r}")
        return np.array(values[0])
    if len(values) == 1:
        side = math.isqrt(len(values[0]))
        if side * side != len(values[0]):
            raise ValueError(f"--{option} must be a 2-D array: rows separated by ';' (e.g. "
                             f"1,2;3,4) or a square number of values, got {len(values[0])} values")
        return np.array(values[0]).reshape(side, side)
    if len({len(r) for r in values}) != 1:
        raise ValueError(f"--{option} rows must all have the same length, got lengths "
                         f"{[len(r) for r in values]}")
    return np.array(values)


def parse_scalar(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    if "," in text or ";" in text:
        raise ValueError(f"--{option} must be one number, got {text!r}")
    return _number(option, text)


# --------------------------------------------------------------------------------------------
# Printing.
# --------------------------------------------------------------------------------------------


def num(v: float) -> str:
    """A number with 4 decimals (no '-0.0000')."""
    s = f"{v:.{DECIMALS}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def vector(a: np.ndarray) -> str:
    return "[" + ", ".join(num(v) for v in np.ravel(a)) + "]"


def matrix(cells: list[list[str]], indent: str = "    ") -> list[str]:
    """Right-aligned columns between brackets, one line per row."""
    widths = [max(len(row[j]) for row in cells) for j in range(len(cells[0]))]
    return [indent + "[ " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " ]"
            for row in cells]


def side_by_side(left: list[str], right: list[str], sep: str = "  =  ") -> list[str]:
    width = max(len(s) for s in left)
    mid = len(left) // 2
    return [f"{a.ljust(width)}{sep if i == mid else ' ' * len(sep)}{b}"
            for i, (a, b) in enumerate(zip(left, right, strict=True))]


def array_lines(name: str, a: np.ndarray, indent: str = "  ") -> list[str]:
    if a.ndim == 1:
        return [f"{indent}{name} = {vector(a)}"]
    rows = matrix([[num(v) for v in row] for row in a], indent="")
    pad = " " * len(f"{name} = ")
    return [f"{indent}{name} = {rows[0]}"] + [f"{indent}{pad}{r}" for r in rows[1:]]


def _products(terms) -> tuple[str, str]:
    symbolic = " + ".join(f"{s}{t}" for s, t, _, _ in terms)
    numeric = " + ".join(f"({num(a)})({num(c)})" for _, _, a, c in terms)
    return symbolic, numeric


def _conv_lines(ex, user_given: bool) -> list[str]:
    from jaxconv import explain as E

    out: list[str] = []
    nd = ex.x.ndim
    shape_word = "1-D" if nd == 1 else "2-D"
    out.append(f"jaxconv explain {ex.op}: the lecture's {shape_word} convolution example "
               f"(one filter, stride 1, no padding, cross-correlation)")
    out.append("")
    out.append("Inputs" + ("" if user_given else " (defaults; change them with --x --w --b --dy)"))
    out += array_lines("x ", ex.x)
    out += array_lines("w ", ex.w)
    out.append(f"  b  = {num(ex.b)}")
    out += array_lines("dy", ex.dy)
    out.append("  (dy = ∂L/∂y, the gradient arriving from the layer above)")
    out.append("")

    terms = E.formula_terms(ex)
    y_idx = list(np.ndindex(*ex.dy.shape))
    w_idx = list(np.ndindex(*ex.w.shape))
    x_idx = list(np.ndindex(*ex.x.shape))

    def name(sym, idx, shape):
        return f"{sym}{E.subscript(idx, shape)}"

    out.append("1. Forward pass: y = x ⋆ w + b")
    for i, o in enumerate(y_idx):
        ks = [k for k in range(len(w_idx)) if ex.w_terms[i, k] >= 0]
        symbolic = " + ".join(
            f"{name('w', w_idx[k], ex.w.shape)}{name('x', x_idx[ex.w_terms[i, k]], ex.x.shape)}"
            for k in ks)
        wv, xv = ex.w.reshape(-1), ex.x.reshape(-1)
        numeric = " + ".join(f"({num(wv[k])})({num(xv[ex.w_terms[i, k]])})" for k in ks)
        out.append(f"  {name('y', o, ex.dy.shape)} = {symbolic} + b = {numeric} + {num(ex.b)} "
                   f"= {num(ex.y.reshape(-1)[i])}")
    out += array_lines("y ", ex.y)
    out.append("")

    flat = "" if nd == 1 else " (y, w and x flattened row by row)"
    out.append(f"2. Local gradients: the Jacobians{flat}")
    y_names = [name("y", o, ex.dy.shape) for o in y_idx]
    sym_w = [[name("x", x_idx[ex.w_terms[i, k]], ex.x.shape) for k in range(len(w_idx))]
             for i in range(len(y_idx))]
    num_w = [[num(v) for v in row] for row in ex.jac_w]
    out.append(f"  ∂y/∂w: row i holds ∂yᵢ/∂w_k ({len(y_idx)}×{len(w_idx)}):")
    out += side_by_side(matrix(sym_w), matrix(num_w, indent=""))
    sym_x = [[name("w", w_idx[ex.x_terms[i, j]], ex.w.shape) if ex.x_terms[i, j] >= 0 else "0"
              for j in range(len(x_idx))] for i in range(len(y_idx))]
    num_x = [[num(v) for v in row] for row in ex.jac_x]
    out.append(f"  ∂y/∂x: row i holds ∂yᵢ/∂x_j ({len(y_idx)}×{len(x_idx)}):")
    out += side_by_side(matrix(sym_x), matrix(num_x, indent=""))
    out.append(f"  ∂y/∂b = [{', '.join('1' for _ in y_names)}]ᵀ")
    out.append("")

    chain = ex.routes[0]
    out.append("3. Chain rule: db = dy · ∂y/∂b,  dw = dy · ∂y/∂w,  dx = dy · ∂y/∂x")
    dy_names = [name("dy", o, ex.dy.shape) for o in y_idx]
    out.append(f"  db = {' + '.join(dy_names)} = "
               f"{' + '.join(f'({num(v)})' for v in ex.dy.reshape(-1))} = {num(chain.db)}")
    for k, o in enumerate(w_idx):
        symbolic, numeric = _products(terms["dw"][k])
        out.append(f"  {name('dw', o, ex.w.shape)} = {symbolic} = {numeric} = "
                   f"{num(chain.dw.reshape(-1)[k])}")
    for j, o in enumerate(x_idx):
        symbolic, numeric = _products(terms["dx"][j])
        out.append(f"  {name('dx', o, ex.x.shape)} = {symbolic} = {numeric} = "
                   f"{num(chain.dx.reshape(-1)[j])}")
    out += array_lines("dw", chain.dw)
    out += array_lines("dx", chain.dx)
    out.append("")

    ident = ex.routes[1]
    out.append("4. The convolution identities (evaluated with jaxconv.conv's forward, "
               "a cross-correlation ⋆)")
    out.append("  dw = x ⋆ dy: slide dy over x")
    out += array_lines("dw", ident.dw, indent="    ")
    pad = "k − 1 zeros" if nd == 1 else "kH − 1 rows and kW − 1 columns of zeros"
    out.append(f"  dx = full-conv(rot180 w, dy): dy padded with {pad} on each side, "
               f"⋆ the filter rotated by 180°")
    out += array_lines("dy padded ", ex.dy_padded, indent="    ")
    out += array_lines("rot180 w  ", ex.w_rot180, indent="    ")
    out += array_lines("dx", ident.dx, indent="    ")
    out.append(f"  db = Σ dy = {num(ident.db)}")
    out.append("")
    out += _agreement_lines("5.", ex)

    if ex.op == "conv1d":
        out.append("")
        out.append("6. The lecture's typos (and glitches), with the corrected lines")
        for i, t in enumerate(E.lecture_typos(ex), 1):
            out.append(f"  ({i}) {t.where}")
            out.append(f"      slide:     {t.slide}")
            out.append(f"      corrected: {t.corrected}")
            if t.value is not None:
                out.append(f"      here:      {t.value}")
            out.append(f"      why:       {t.note}")
    return out


def _agreement_lines(number: str, ex) -> list[str]:
    from jaxconv import explain as E

    out = [f"{number} The same gradients by {len(ex.routes)} independent routes"]
    for r in ex.routes:
        out.append(f"  {r.route}")
        out.append(f"      dx = {vector(r.dx)}")
        out.append(f"      dw = {vector(r.dw)}")
        out.append(f"      db = {num(r.db)}")
    verdict = "agree" if ex.agree else "DISAGREE"
    out.append(f"  => the routes {verdict}: largest difference from the chain rule "
               f"{ex.max_disagreement:.3e} (tolerance {E.AGREE_ATOL:.0e}, float64)")
    return out


def _perceptron_lines(ex, user_given: bool) -> list[str]:
    n = ex.x.size
    sub = [f"{i + 1}".translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")) for i in range(n)]
    out = ["jaxconv explain perceptron: one sigmoid neuron with a squared-error loss", ""]
    out.append("Inputs" + ("" if user_given else " (defaults; change them with --x --w --b --t)"))
    out.append(f"  x = {vector(ex.x)}")
    out.append(f"  w = {vector(ex.w)}")
    out.append(f"  b = {num(ex.b)}")
    out.append(f"  t = {num(ex.t)}   (the target)")
    out.append("")
    out.append("1. Forward pass: z = w·x + b,  a = σ(z) = 1/(1 + e^(−z)),  L = (a − t)²")
    symbolic = " + ".join(f"w{s}x{s}" for s in sub)
    numeric = " + ".join(f"({num(w)})({num(x)})" for w, x in zip(ex.w, ex.x, strict=True))
    out.append(f"  z = {symbolic} + b = {numeric} + {num(ex.b)} = {num(ex.z)}")
    out.append(f"  a = σ({num(ex.z)}) = {num(ex.a)}")
    out.append(f"  L = ({num(ex.a)} − {num(ex.t)})² = {num(ex.loss)}")
    out.append("")
    out.append("2. Local gradients (Jacobians)")
    out.append(f"  dL/da = 2(a − t) = {num(ex.dl_da)}")
    out.append(f"  da/dz = a(1 − a) = {num(ex.da_dz)}")
    out.append(f"  ∂z/∂w = [{', '.join(f'x{s}' for s in sub)}] = {vector(ex.x)}   (1×{n})")
    out.append(f"  ∂z/∂x = [{', '.join(f'w{s}' for s in sub)}] = {vector(ex.w)}   (1×{n})")
    out.append("  ∂z/∂b = 1")
    out.append("")
    chain = ex.routes[0]
    out.append("3. Chain rule: dz = dL/da · da/dz, then dw = dz · ∂z/∂w, dx = dz · ∂z/∂x, "
               "db = dz · ∂z/∂b")
    out.append(f"  dz = ({num(ex.dl_da)})({num(ex.da_dz)}) = {num(ex.dz)}")
    for i, s in enumerate(sub):
        out.append(f"  dw{s} = dz·x{s} = ({num(ex.dz)})({num(ex.x[i])}) = {num(chain.dw[i])}")
    for i, s in enumerate(sub):
        out.append(f"  dx{s} = dz·w{s} = ({num(ex.dz)})({num(ex.w[i])}) = {num(chain.dx[i])}")
    out.append(f"  db = dz = {num(chain.db)}")
    out.append("")
    out += _agreement_lines("4.", ex)
    return out


def run(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the example is computed in float64
    from jaxconv import explain as E

    given = any(v is not None for v in (args.x, args.w, args.b, args.dy, args.t))
    if args.example == "perceptron":
        if args.dy is not None:
            raise CLIError("--dy is for conv1d and conv2d: the perceptron's upstream gradient "
                           "comes from its loss; give the target with --t")
        ex = E.perceptron_example(
            x=parse_values("x", args.x, 1), w=parse_values("w", args.w, 1),
            b=parse_scalar("b", args.b), t=parse_scalar("t", args.t),
        )
        lines = _perceptron_lines(ex, given)
    else:
        if args.t is not None:
            raise CLIError(f"--t is the perceptron's target; {args.example} takes --dy")
        nd = 1 if args.example == "conv1d" else 2
        x, w = parse_values("x", args.x, nd), parse_values("w", args.w, nd)
        dy = parse_values("dy", args.dy, nd)
        b = parse_scalar("b", args.b)
        if dy is None and (x is not None or w is not None):
            defaults = E.DEFAULTS[args.example]
            shapes_changed = (x is not None and x.shape != np.shape(defaults["x"])) or (
                w is not None and w.shape != np.shape(defaults["w"]))
            if shapes_changed:
                raise CLIError("--dy is needed when --x or --w change the shapes: dy has one "
                               "value per output")
        ex = E.conv_example(args.example, x=x, w=w, b=b, dy=dy)
        lines = _conv_lines(ex, given)
    print("\n".join(lines))
    return 0 if ex.agree else 1
