"""The auto-tuner: RTL characterization, the fitted decision rule, many simulations.

``executor``
    run many independent jobs (RTL simulations) on a local process pool or on Ray.
``cache``
    the on-disk cache of RTL measurements and :func:`~.cache.measure`, which runs
    jobs through an executor, consulting and filling the cache.
``characterize``
    the characterization study: synthesized layers at every core count and split
    axis, measured on the RTL (``dlfusion characterize``).
``rule``
    the decision rule fitted to that data: per layer, the core count and split axis
    (:func:`~.rule.load_rule`, :meth:`~.rule.Rule.choose`, :func:`~.rule.features_of`).
"""

from .errors import TuneError

__all__ = ["TuneError"]
