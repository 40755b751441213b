"""The error base of the whole flow: every error a user can cause or meet carries its exit status.

It sits at the bottom of the import graph (``hw`` is below ``sim``, ``compiler``,
the tuner and the command line), so every layer derives its errors from it and the
command line catches :class:`DlfusionError` alone: it prints the message on one
line and exits with :attr:`DlfusionError.exit_status`.

==============  ======  ==========================================================
class           status  meaning
==============  ======  ==========================================================
InputError      2       bad input: a file, a value, a model, a plan, a HwConfig
AcceleratorFault 3      the accelerator (golden or RTL) stopped with an error
MismatchError   4       an output does not match its reference
==============  ======  ==========================================================
"""

from __future__ import annotations

__all__ = ["DlfusionError", "InputError", "AcceleratorFault", "MismatchError", "EXIT_BAD_INPUT",
           "EXIT_ACCELERATOR", "EXIT_MISMATCH"]

EXIT_BAD_INPUT = 2
EXIT_ACCELERATOR = 3
EXIT_MISMATCH = 4


class DlfusionError(Exception):
    """Base of every dlfusion error; :attr:`exit_status` is the command line's exit status."""
    exit_status: int = EXIT_BAD_INPUT


class InputError(DlfusionError, ValueError):
    """Something the user gave is wrong; the message names it and what is accepted (status 2)."""
    exit_status = EXIT_BAD_INPUT


class AcceleratorFault(DlfusionError, RuntimeError):
    """The accelerator stopped with an error, or its simulation could not run (status 3)."""
    exit_status = EXIT_ACCELERATOR


class MismatchError(DlfusionError):
    """An output differs from its reference (status 4)."""
    exit_status = EXIT_MISMATCH
