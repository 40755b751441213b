"""A one-line progress bar on stderr for long runs.

Drawn only when asked for and stderr is a terminal: the CLI turns it off for
``--json`` (as it does its other progress messages), and logs and pipes never see
carriage returns.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """``label [#####.....] done/total  cached c  failed f  elapsed  ~left``.

    Parameters
    ----------
    total : int
        Jobs expected.
    label : str
    enabled : bool
        Draw at all (it is still off when ``stream`` is not a terminal).
    stream : file, optional
        Default ``sys.stderr``.
    """

    WIDTH = 24
    #: Redraw at most this often (seconds), except for the last job.
    INTERVAL = 0.2

    def __init__(self, total: int, label: str = "", *, enabled: bool = True, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled) and bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total
        self.label = label
        self.done = self.cached = self.failed = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, *, cached: bool = False, failed: bool = False) -> None:
        """Count one finished job."""
        self.done += 1
        self.cached += bool(cached)
        self.failed += bool(failed)
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= self.INTERVAL or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.WIDTH * fraction)
        elapsed = now - self.started
        measured = self.done - self.cached
        remaining = self.total - self.done
        eta = f"  ~{_clock(elapsed / measured * remaining)} left" if measured and remaining else ""
        line = (f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}"
                f"  cached {self.cached}  failed {self.failed}  {_clock(elapsed)}{eta}")
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
