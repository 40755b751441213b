"""The tuner's errors, on the flow's error base (:mod:`dlfusion.hw.errors`)."""

from __future__ import annotations

from ...hw.errors import InputError

__all__ = ["TuneError"]


class TuneError(InputError):
    """Bad tuner input: an unknown grid, strategy, model or executor, a missing rule or cost model (status 2).

    A failed measurement is not a :class:`TuneError`: see
    :class:`~.planrun.MeasurementFailed` and :class:`~.characterize.CharacterizationError`.
    """
