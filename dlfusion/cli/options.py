"""The options several subcommands share, each defined once, and what they resolve to.

Every subcommand is made with :func:`add_command`, which gives it ``--quiet``;
the others are added where they apply: :func:`add_hw`, :func:`add_json` and, for
the commands that run many RTL simulations, :func:`add_simulation_options`
(``--executor``, ``--address``, ``--workers``, ``--cache``, ``--rule-dir``).
"""

from __future__ import annotations

import argparse
import json

from ..compiler.tune.executor import EXECUTORS
from ..hw.config import HwConfig
from ..hw.errors import InputError

__all__ = ["UsageError", "add_command", "add_hw", "add_json", "add_sparse_exec", "add_simulation_options", "load_hw",
           "make_executor", "measurement_cache", "print_json", "show_progress"]


class UsageError(InputError):
    """Bad command-line input that argparse cannot see (status 2)."""


def add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser on ``sub`` (the main parser's subparsers) with the options every command has."""
    parser = sub.add_parser(name, **kwargs)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no messages or progress on stderr, only warnings and errors")
    return parser


def add_hw(parser: argparse.ArgumentParser, help: str = "HwConfig TOML file (default: built-in defaults)") -> None:
    parser.add_argument("--hw", metavar="TOML", help=help)


def add_sparse_exec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sparse-exec", choices=("auto", "on", "off"), default="auto",
                        help="layers whose int8 weights follow an N:M pattern of the HwConfig (sparse_patterns) run on "
                             "the sparse PE array: auto (where they do), on (an error naming the layers that cannot), "
                             "off (the same weights on the dense datapath)")


def add_json(parser: argparse.ArgumentParser, help: str = "print the result as JSON (and no progress)") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_simulation_options(parser: argparse.ArgumentParser, *, cache: bool = True, rule_dir: bool = True,
                           rule_dir_help: str = "where the rule and the cost model live (default: build/tune)",
                           ) -> None:
    """The options of the commands that run many RTL simulations through an executor."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local process pool, or Ray tasks (a cluster with --address, else a local Ray instance)")
    parser.add_argument("--address", help="Ray cluster address (--executor ray)")
    parser.add_argument("--workers", type=int, help="parallel RTL runs (local; default: the CPU count)")
    if cache:
        parser.add_argument("--cache", metavar="DIR", help="measurement cache directory (default: build/tune-cache)")
    if rule_dir:
        parser.add_argument("--rule-dir", metavar="DIR", help=rule_dir_help)


def load_hw(args: argparse.Namespace) -> HwConfig:
    """The ``--hw`` file's HwConfig (the built-in defaults without one)."""
    return HwConfig.load(args.hw)


def make_executor(args: argparse.Namespace):
    """The executor ``--executor``, ``--address`` and ``--workers`` name (a context manager)."""
    from ..compiler.tune.executor import make_executor
    return make_executor(args.executor, address=args.address, workers=args.workers)


def measurement_cache(args: argparse.Namespace):
    """The measurement cache of ``--cache`` (default: ``build/tune-cache``)."""
    from ..compiler.tune.cache import MeasurementCache
    return MeasurementCache(args.cache) if args.cache else MeasurementCache()


def show_progress(args: argparse.Namespace) -> bool:
    """Progress messages and bars: not with ``--quiet``, nor with ``--json`` (stderr stays empty)."""
    return not (args.quiet or getattr(args, "json", False))


def print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True))
