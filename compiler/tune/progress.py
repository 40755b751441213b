"""The progress bar of long runs (many RTL measurements), drawn by tqdm on stderr.

Drawn only when asked for and stderr is a terminal: the command line turns it off
with ``--quiet`` and ``--json``, and logs and pipes never see carriage returns.
While a bar is drawn, log records (a retried measurement, say) are printed above
it rather than through it.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["Progress"]


def _console_loggers() -> list[logging.Logger]:
    """The loggers with a handler printing to stdout or stderr (tqdm prints their records above the bar)."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return [logger for logger in loggers
            if any(isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
                   for handler in logger.handlers)]


class Progress:
    """``label:  40%|####      | 4/10 [00:12<00:18, cached=1, failed=0]``.

    Parameters
    ----------
    total : int
        Jobs expected.
    label : str
    enabled : bool
        Draw at all (it is still off when ``stream`` is not a terminal).
    stream : file, optional
        Default ``sys.stderr``.

    Attributes
    ----------
    done, cached, failed : int
        Jobs counted so far: all of them, those answered from the cache, those that failed.
    """

    def __init__(self, total: int, label: str = "", *, enabled: bool = True, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled) and bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total
        self.label = label
        self.done = self.cached = self.failed = 0
        self._bar = tqdm(total=total, desc=label, file=self.stream, disable=not self.enabled, unit="job",
                         dynamic_ncols=True, postfix=self._counts())
        self._logging = contextlib.ExitStack()
        if self.enabled:
            self._logging.enter_context(logging_redirect_tqdm(_console_loggers()))

    def _counts(self) -> dict:
        return {"cached": self.cached, "failed": self.failed}

    def update(self, *, cached: bool = False, failed: bool = False) -> None:
        """Count one finished job."""
        self.done += 1
        self.cached += bool(cached)
        self.failed += bool(failed)
        if self.enabled:
            self._bar.set_postfix(self._counts(), refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        """End the bar (its last state stays on the terminal)."""
        self._logging.close()
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
