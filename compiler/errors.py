"""The compiler's error: a model, layer or plan that cannot be compiled for a HwConfig."""

from ..hw.errors import InputError

__all__ = ["CompileError"]


class CompileError(InputError):
    """The layer or model cannot be compiled for this HwConfig (names what and why)."""
