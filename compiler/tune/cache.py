"""The on-disk cache of RTL measurements, and running jobs through it.

Every measurement is stored as one JSON file, ``<cache>/<key[:2]>/<key>.json``,
written atomically (a reader never sees half a file), holding the result, the
seconds the measurement took when it was made and when that was. The key is the
sha256 of the HwConfig hash, :data:`FORMAT_VERSION`, the RTL sources
(:func:`rtl_fingerprint`) and the measured content (for a layer or a group: its
binary's bytes and its inputs), so a measurement is reused exactly when the same
program runs on the same hardware, and different HwConfigs never share an entry.

:func:`measure` runs a list of jobs through an :class:`~.executor.Executor`,
answering from the cache where it can and storing each new result as it
arrives: a run that is interrupted and started again redoes only the jobs that
had not finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...hw.binary import atomic_write
from ...hw.config import HwConfig
from .executor import Executor
from .progress import Progress

__all__ = ["FORMAT_VERSION", "ENTRY_FORMAT", "default_build_dir", "default_cache_dir", "rtl_fingerprint",
           "measurement_key", "CacheEntry", "MeasurementCache", "Measurement", "measure"]

#: Bumped when what a measurement means changes in a way its key would not see
#: (the harness counting cycles differently, a new result field the readers need).
FORMAT_VERSION = 1
#: ``format`` field of every entry file.
ENTRY_FORMAT = "dlfusion-measurement/1"


def default_build_dir() -> Path:
    """``$DLFUSION_BUILD_DIR``, else ``<repository>/build`` (else ``./build``), as the RTL builds use."""
    env = os.environ.get("DLFUSION_BUILD_DIR")
    if env:
        return Path(env).resolve()
    root = Path(__file__).resolve().parents[2]
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / "build"


def default_cache_dir() -> Path:
    """``<build>/tune-cache`` (see :func:`default_build_dir`)."""
    return default_build_dir() / "tune-cache"


def _canonical(part) -> bytes:
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, np.ndarray):
        array = np.ascontiguousarray(part)
        return f"{array.dtype.str}{array.shape}".encode() + array.tobytes()
    return json.dumps(part, sort_keys=True, separators=(",", ":")).encode()


@functools.cache
def rtl_fingerprint() -> str:
    """sha256 of the RTL's sources (:func:`~dlfusion.hw.sources.gateware_sources` and the simulation
    testbench): part of every key, so that a changed design is measured again rather than read from
    the cache."""
    from ...hw.sources import gateware_sources
    from ...sim import rtl
    digest = hashlib.sha256()
    for path in [*gateware_sources(), Path(rtl.TB_SOURCE)]:
        data = path.read_bytes()
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def measurement_key(hw: HwConfig, *content) -> str:
    """The cache key of measuring ``content`` on ``hw``.

    Parameters
    ----------
    hw : HwConfig
    *content : bytes, str, numpy.ndarray or JSON-serialisable value
        What is measured, e.g. a binary's bytes and its input arrays, or a
        canonical description of a job. Each part is length-prefixed, so
        ``("ab", "c")`` and ``("a", "bc")`` differ. The key also covers
        :func:`rtl_fingerprint`.

    Returns
    -------
    str
        64 hex digits.
    """
    digest = hashlib.sha256()
    for part in (b"dlfusion-measurement", str(FORMAT_VERSION), rtl_fingerprint(), hw.hash, *content):
        data = _canonical(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@dataclass
class CacheEntry:
    """One stored measurement.

    Attributes
    ----------
    key : str
    result : object
        The measurement (JSON).
    seconds : float
        How long the measurement took when it was made (preparing and running it).
    created : str
        When it was made (local time, ISO 8601).
    hw_hash : str or None
    job : object
        A description of what was measured, for people reading the cache.
    """
    key: str
    result: Any
    seconds: float
    created: str
    hw_hash: str | None = None
    job: Any = None

    def to_json(self) -> dict:
        return {"format": ENTRY_FORMAT, "key": self.key, "hw_hash": self.hw_hash, "created": self.created,
                "seconds": self.seconds, "job": self.job, "result": self.result}


class MeasurementCache:
    """Measurements on disk, one JSON file per key.

    Parameters
    ----------
    directory : path, optional
        Default :func:`default_cache_dir`.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key``, or None (also for an unreadable or foreign file)."""
        try:
            data = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != ENTRY_FORMAT or data.get("key") != key:
            return None
        return CacheEntry(key, data.get("result"), float(data.get("seconds", 0.0)), data.get("created", ""),
                          data.get("hw_hash"), data.get("job"))

    def put(self, key: str, result, *, seconds: float, hw_hash: str | None = None, job=None) -> CacheEntry:
        """Store ``result`` (JSON-serialisable) under ``key``, atomically."""
        entry = CacheEntry(key, result, float(seconds), time.strftime("%Y-%m-%dT%H:%M:%S"), hw_hash, job)
        atomic_write(self.path(key), json.dumps(entry.to_json(), indent=1, sort_keys=True))
        return entry

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.json"))


@dataclass
class Measurement:
    """One job's measurement, from the cache or just made.

    Attributes
    ----------
    spec : object
        The job as given to :func:`measure`.
    key : str or None
        Its cache key (None if preparing it failed).
    result : object
        The job function's result (None on error).
    seconds : float
        Preparing plus running it: now, or when the cached entry was made.
    cached : bool
    error : str or None
    traceback : str or None
    attempts : int
        Runs it took: more than 1 when the executor lost a worker under it and ran
        it again (0 when it came from the cache or could not be prepared).
    """
    spec: Any
    key: str | None
    result: Any = None
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def measure(specs: Sequence, prepare: Callable, fn: Callable, *, executor: Executor, cache: MeasurementCache,
            hw_hash: str | None = None, describe: Callable | None = None, progress: bool = False,
            label: str = "measuring") -> Iterator[Measurement]:
    """Measure every spec, from the cache where possible; yield each as it is known.

    Parameters
    ----------
    specs : sequence
        What to measure.
    prepare : callable
        ``prepare(spec) -> (key, job)``, run here, lazily: the cache key (see
        :func:`measurement_key`) and the picklable job for ``fn``.
    fn : callable
        ``fn(job) -> result``, run by the executor; a top-level function. The
        result must be JSON-serialisable (it is stored).
    executor : Executor
    cache : MeasurementCache
    hw_hash : str, optional
        Recorded in new entries.
    describe : callable, optional
        ``describe(spec)``: the JSON description recorded in new entries.
    progress : bool
        Draw a progress bar on stderr (only if it is a terminal).
    label : str
        The progress bar's label.

    Yields
    ------
    Measurement
        Cached ones as they are found, new ones as they complete. A job that
        failed (``prepare`` or ``fn`` raised, or its worker died) has ``error`` set
        and is not stored, so the next run tries it again.
    """
    hits: deque[Measurement] = deque()
    submitted: list[tuple[Any, str, float]] = []     # (spec, key, prepare seconds) by executor index

    def jobs():
        for spec in specs:
            start = time.perf_counter()
            try:
                key, job = prepare(spec)
            except Exception as error:  # this spec cannot be measured; the others can
                hits.append(Measurement(spec, None, error=f"{type(error).__name__}: {error}"))
                continue
            entry = cache.get(key)
            if entry is not None:
                hits.append(Measurement(spec, key, entry.result, entry.seconds, cached=True))
                continue
            submitted.append((spec, key, time.perf_counter() - start))
            yield job

    with Progress(len(specs), label, enabled=progress) as bar:
        def drain():
            while hits:
                item = hits.popleft()
                bar.update(cached=item.cached, failed=not item.ok)
                yield item

        for outcome in executor.map(fn, jobs()):
            yield from drain()
            spec, key, prepare_seconds = submitted[outcome.index]
            seconds = prepare_seconds + outcome.seconds
            if outcome.ok:
                cache.put(key, outcome.result, seconds=seconds, hw_hash=hw_hash,
                          job=describe(spec) if describe else None)
            bar.update(failed=not outcome.ok)
            yield Measurement(spec, key, outcome.result, seconds, error=outcome.error, traceback=outcome.traceback,
                              attempts=outcome.attempts)
        yield from drain()
