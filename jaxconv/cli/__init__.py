"""The ``jaxconv`` command: ``train``, ``gradcheck``, ``explain`` and ``bench``.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser and
sets ``run=`` to a function ``run(args) -> int``. Errors a user can cause (bad arguments, missing
files, invalid configurations rejected by jaxconv's checks) become one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxconv import _checks

COMMANDS = ("train", "gradcheck", "explain", "bench")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``jaxconv train: error: ...``), exit status 2;
    ``--help`` still shows the usage."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from jaxconv import __version__

    parser = _Parser(
        prog="jaxconv",
        description="Backpropagation written by hand in JAX: train, check and explain the "
        "lecture's rules.",
    )
    parser.add_argument("--version", action="version", version=f"jaxconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"jaxconv.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"jaxconv {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, NotADirectoryError,
            PermissionError) as err:
        print(f"jaxconv {args.command}: error: {err}", file=sys.stderr)
        return 2


def _number(text: str, cast, check):
    """argparse type: ``cast(text)`` checked by a :mod:`jaxconv._checks` helper, whose words
    make the error line (argparse puts the option in front:
    ``argument --epochs: must be a positive int, got 0``)."""
    try:
        value = cast(text)
    except ValueError:
        value = text  # not a number at all: the check says so
    try:
        return check("", value)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err).lstrip()) from None


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    return _number(text, int, _checks.positive_int)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _number(text, int, _checks.non_negative_int)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _number(text, float, _checks.positive_number)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _number(text, float, _checks.non_negative_number)


if __name__ == "__main__":
    sys.exit(main())
