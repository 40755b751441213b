"""The RTL model's build lock (sim/rtl.py ``_build_lock``): runs share it across processes,
a build waits for them, a killed holder releases it; without filelock's ReadWriteLock it
is an exclusive lock."""

import subprocess
import sys
import time

import pytest
from filelock import FileLock, Timeout

from dlfusion.sim import rtl

_HOLD = """
import sys, time
from pathlib import Path
from dlfusion.sim.rtl import _build_lock
with _build_lock(Path(sys.argv[1]), exclusive=sys.argv[2] == "exclusive"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(path, mode: str, seconds: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), mode, str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def _seconds_to_hold(path, exclusive: bool) -> float:
    start = time.monotonic()
    with rtl._build_lock(path, exclusive=exclusive):
        return time.monotonic() - start


def test_runs_share_the_lock_and_a_build_waits_for_them(tmp_path):
    path = tmp_path / "model" / "build.lock"
    run = _holder(path, "shared", 1.5)
    try:
        assert _seconds_to_hold(path, exclusive=False) < 0.5     # a second run does not wait
        assert _seconds_to_hold(path, exclusive=True) > 0.5      # a build waits for the run
    finally:
        run.kill()
        run.wait()


def test_a_killed_holder_releases_the_lock(tmp_path):
    path = tmp_path / "build.lock"
    build = _holder(path, "exclusive", 600)
    build.kill()
    build.wait()
    assert _seconds_to_hold(path, exclusive=True) < 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["build.lock"]      # no other file next to the lock


def test_an_old_empty_lock_file_is_accepted(tmp_path):
    path = tmp_path / "build.lock"
    path.touch()        # what the fcntl lock left in existing build directories
    assert _seconds_to_hold(path, exclusive=False) < 0.5
    assert _seconds_to_hold(path, exclusive=True) < 0.5


def test_without_a_shared_lock_the_lock_is_exclusive(tmp_path, monkeypatch):
    monkeypatch.setattr(rtl, "ReadWriteLock", None)
    path = tmp_path / "build.lock"
    with rtl._build_lock(path, exclusive=False):
        with pytest.raises(Timeout), FileLock(path, timeout=0.1, is_singleton=False):
            pass
    with rtl._build_lock(path, exclusive=True):
        pass
