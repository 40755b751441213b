"""The progress bar (compiler/tune/progress.py, on tqdm): drawn on a terminal when asked for,
silent otherwise, counting cached and failed jobs."""

import io
import logging
import sys

from dlfusion.compiler.tune.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, **options):
    with Progress(3, "characterize", stream=stream, **options) as bar:
        bar.update(cached=True)
        bar.update(failed=True)
        bar.update()
    return bar


def test_drawn_on_a_terminal_with_the_counts():
    terminal = Terminal()
    bar = _run(terminal)
    assert bar.enabled and (bar.done, bar.cached, bar.failed) == (3, 1, 1)
    last = terminal.getvalue().split("\r")[-1]
    assert last.startswith("characterize: 100%") and "3/3" in last and "cached=1, failed=1" in last


def test_silent_when_not_a_terminal_or_not_asked_for():
    pipe = io.StringIO()
    bar = _run(pipe)
    assert not bar.enabled and pipe.getvalue() == ""
    assert (bar.done, bar.cached, bar.failed) == (3, 1, 1)      # still counted
    terminal = Terminal()
    assert not _run(terminal, enabled=False).enabled and terminal.getvalue() == ""


def test_log_records_go_above_the_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)       # as the command line's, on stderr
    monkeypatch.setattr(logging.getLogger("dlfusion"), "handlers", [handler])
    with Progress(2, "measuring") as bar:
        bar.update()
        logging.getLogger("dlfusion.compiler.tune.executor").warning("job 1: running it again")
        bar.update()
    assert terminal.getvalue().count("job 1: running it again") == 1
    assert "\rjob 1: running it again\n" in terminal.getvalue()     # on a line of its own
    assert logging.getLogger("dlfusion").handlers == [handler]     # given back afterwards
