"""Run many independent jobs (RTL simulations) and get their results as they complete.

An :class:`Executor` maps a job function over a sequence of jobs and yields one
:class:`Outcome` per job, in completion order. Two implementations share the
interface:

:class:`LocalExecutor`
    a pool of worker processes on this machine (the default);
:class:`RayExecutor`
    Ray tasks, on a cluster (``ray.init(address=...)``) or on a local Ray instance
    started for the run.

The job function must be a top-level function of an importable module (it is
pickled by reference; on a Ray cluster every node needs ``dlfusion`` installed),
and jobs and results must be picklable. A job that raises, or whose worker
process dies under it, comes back as an :class:`Outcome` with ``error`` set; the
other jobs carry on. Jobs are drawn lazily from the iterable, a few per worker
ahead, so preparing them overlaps running them.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from .errors import TuneError

__all__ = ["EXECUTORS", "Outcome", "Executor", "LocalExecutor", "RayExecutor", "make_executor"]

#: Accepted executor names of :func:`make_executor` (and of ``--executor``).
EXECUTORS = ("local", "ray")

#: Jobs handed out ahead of completion, per worker: keeps workers busy while the
#: parent prepares jobs, without preparing (and holding) all of them at once.
JOBS_AHEAD_PER_WORKER = 2


@dataclass
class Outcome:
    """What became of one job.

    Attributes
    ----------
    index : int
        Position of the job in the submitted sequence.
    job : object
        The job itself.
    result : object
        What the job function returned (None on error).
    error : str or None
        ``"ExceptionType: message"`` if the job raised or its worker died.
    traceback : str or None
        The worker-side traceback of that exception, when there is one.
    seconds : float
        Wall-clock seconds of the job function in its worker.
    """
    index: int
    job: Any
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _call(fn: Callable, job) -> tuple[bool, Any, float, str | None]:
    """Run one job in a worker: ``(ok, result or error text, seconds, traceback)``."""
    start = time.perf_counter()
    try:
        result = fn(job)
    except Exception as error:  # a job's failure is its outcome, not the run's
        return False, f"{type(error).__name__}: {error}", time.perf_counter() - start, traceback.format_exc()
    return True, result, time.perf_counter() - start, None


def _outcome(index: int, job, returned) -> Outcome:
    ok, value, seconds, trace = returned
    if ok:
        return Outcome(index, job, result=value, seconds=seconds)
    return Outcome(index, job, error=value, traceback=trace, seconds=seconds)


class Executor:
    """Runs jobs in parallel; see the module docstring.

    Use as a context manager (or call :meth:`close`) to release the workers.
    """

    #: Name accepted by :func:`make_executor`.
    name = ""

    @property
    def workers(self) -> int:
        """How many jobs run at once."""
        raise NotImplementedError

    def map(self, fn: Callable, jobs: Iterable) -> Iterator[Outcome]:
        """Run ``fn(job)`` for every job; yield an :class:`Outcome` per job as each completes.

        Parameters
        ----------
        fn : callable
            A top-level function of an importable module.
        jobs : iterable
            Picklable jobs, drawn lazily.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers (the executor can be used again afterwards)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class LocalExecutor(Executor):
    """Worker processes on this machine.

    Parameters
    ----------
    workers : int, optional
        Processes (default: ``os.cpu_count()``, at least 1).

    Notes
    -----
    Workers are spawned (not forked): a forked child of a process with threads
    can deadlock. When a worker process dies, the pool is replaced and the jobs
    that were running in it are run again one at a time, so that only the job
    that kills its worker is reported as failed.
    """

    name = "local"

    def __init__(self, workers: int | None = None):
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise TuneError(f"workers must be a positive integer, not {workers!r}")
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def _current_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)

    def map(self, fn: Callable, jobs: Iterable) -> Iterator[Outcome]:
        numbered = enumerate(jobs)
        pending = {}            # future -> (index, job, pool, isolated)
        suspects = deque()      # (index, job) running when a worker died: rerun alone
        exhausted = False
        try:
            while True:
                if suspects:
                    if not pending:
                        index, job = suspects.popleft()
                        pool = self._current_pool()
                        pending[pool.submit(_call, fn, job)] = (index, job, pool, True)
                else:
                    while not exhausted and len(pending) < JOBS_AHEAD_PER_WORKER * self._workers:
                        item = next(numbered, None)
                        if item is None:
                            exhausted = True
                            break
                        pool = self._current_pool()
                        pending[pool.submit(_call, fn, item[1])] = (*item, pool, False)
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index, job, pool, isolated = pending.pop(future)
                    try:
                        returned = future.result()
                    except BrokenProcessPool as error:
                        self._discard(pool)
                        if isolated:
                            yield Outcome(index, job, error=f"the worker process died running this job ({error})")
                        else:
                            suspects.append((index, job))
                        continue
                    except Exception as error:  # the job or its result could not be pickled
                        yield Outcome(index, job, error=f"{type(error).__name__}: {error}")
                        continue
                    yield _outcome(index, job, returned)
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


#: Seconds to wait for a Ray cluster's port to accept a connection before giving up.
CONNECT_TIMEOUT = 10


def _check_reachable(address: str) -> None:
    """Fail fast on an unreachable ``host:port`` (``ray.init`` would keep retrying for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise TuneError(f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        raise TuneError(f"cannot reach the Ray cluster at {address!r} ({error})") from None


class RayExecutor(Executor):
    """Ray tasks, one per job.

    Parameters
    ----------
    address : str, optional
        A running Ray cluster (``"ray://host:10001"``, ``"host:6379"`` or ``"auto"``).
        Default: the Ray instance this process is already connected to, else a new
        local instance (stopped again by :meth:`close`).
    num_cpus : int, optional
        CPUs of a new local instance (default: all).

    Notes
    -----
    Each task asks for one CPU (an RTL simulation is single-threaded) and is not
    retried: a job whose worker dies comes back as an error.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self._started = False

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise TuneError("the ray executor needs the 'ray' package (pip install ray)") from None
        if self.address is not None:
            _check_reachable(self.address)
        if not ray.is_initialized():
            import logging
            options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, **options)
            else:
                try:
                    ray.init(address=self.address, **options)
                except (ConnectionError, RuntimeError, ValueError) as error:
                    raise TuneError(f"cannot connect to the Ray cluster at {self.address!r}: {error}") from None
            self._started = True
        return ray

    @property
    def workers(self) -> int:
        ray = self._connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable, jobs: Iterable) -> Iterator[Outcome]:
        numbered = enumerate(jobs)
        first = next(numbered, None)
        if first is None:       # nothing to run (everything cached): do not start or join Ray
            return
        ray = self._connect()
        remote = ray.remote(_call).options(num_cpus=1, max_retries=0)
        numbered = itertools.chain([first], numbered)
        ahead = JOBS_AHEAD_PER_WORKER * self.workers
        pending = {}            # ObjectRef -> (index, job)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < ahead:
                    item = next(numbered, None)
                    if item is None:
                        exhausted = True
                        break
                    pending[remote.remote(fn, item[1])] = item
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index, job = pending.pop(ref)
                    try:
                        returned = ray.get(ref)
                    except ray.exceptions.RayError as error:  # worker died, or arguments could not be loaded
                        yield Outcome(index, job, error=f"{type(error).__name__}: {error}")
                        continue
                    yield _outcome(index, job, returned)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            import ray
            ray.shutdown()
            self._started = False


def make_executor(name: str, address: str | None = None, workers: int | None = None) -> Executor:
    """The executor called ``name``.

    Parameters
    ----------
    name : {"local", "ray"}
    address : str, optional
        Ray cluster address (``ray`` only).
    workers : int, optional
        Worker processes (``local``) or CPUs of a new local Ray instance (``ray``).

    Raises
    ------
    TuneError
        Unknown name, or an address given to the local executor.
    """
    if name == "local":
        if address is not None:
            raise TuneError(f"--address {address!r} is for the ray executor; the local executor takes none")
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, num_cpus=workers)
    raise TuneError(f"unknown executor {name!r}; accepted: {', '.join(EXECUTORS)}")
