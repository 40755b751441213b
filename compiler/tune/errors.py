"""The tuner's one error type."""

from __future__ import annotations

__all__ = ["TuneError"]


class TuneError(ValueError):
    """Bad tuner input (unknown grid or executor, missing rule) or a failed measurement."""
