"""The ``dlfusion`` command line.

One module per subcommand (or family of subcommands); each has ``add_commands(sub)``,
which registers its parsers on the main parser's subparsers with the shared options
of :mod:`.options`, and the command functions, which take the parsed arguments and
return the exit status. A command fails by raising a
:class:`~dlfusion.hw.errors.DlfusionError`: :func:`main` prints its message on one
line and exits with its :attr:`~dlfusion.hw.errors.DlfusionError.exit_status`
(2 bad input, 3 accelerator error, 4 mismatch).

Messages go through :mod:`logging` to stderr (INFO; WARNING with ``--quiet`` or
``--json``), results to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..hw.errors import DlfusionError
from . import bench, characterize, demo, layer, lint, models, run, synth, tune, verilog
from . import compile as compile_model

__all__ = ["build_parser", "main"]

#: Exit status of a run ended by Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130

#: The subcommand modules, in the order ``dlfusion --help`` lists their commands.
COMMANDS = (verilog, synth, run, layer, compile_model, models, demo, characterize, tune, bench, lint)

_log = logging.getLogger("dlfusion")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests replace it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _PlainFormatter(logging.Formatter):
    """``[dlfusion] message`` for information, ``dlfusion: warning: message`` above; never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno <= logging.INFO:
            return f"[dlfusion] {message}"
        return f"dlfusion: {record.levelname.lower()}: {message}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlfusion", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet = args.quiet or getattr(args, "json", False)
    handler = _StderrHandler()
    handler.setFormatter(_PlainFormatter())
    level = _log.level
    _log.addHandler(handler)
    _log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return args.func(args)
    except DlfusionError as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("dlfusion: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        # Leave logging as it was: main() is also called in-process (tests, scripts).
        _log.removeHandler(handler)
        _log.setLevel(level)
