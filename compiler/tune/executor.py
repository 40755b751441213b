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

Stopping
--------
A run stops as a whole. SIGINT (Ctrl-C) raises :class:`KeyboardInterrupt` in the
parent and SIGTERM, while :meth:`Executor.map` runs in the main thread and nobody
else handles it, raises ``SystemExit(143)``; either way leaving :meth:`~Executor.map`
(or the executor's ``with`` block) with jobs still running stops them at once,
instead of waiting for them. What finished before is the caller's: the measurement
cache stores each result as it arrives.

The local workers also leave by themselves when the parent is gone, even after a
SIGKILL that gives it no chance to clean up: each worker asks Linux for a signal
when its parent dies (``prctl(PR_SET_PDEATHSIG)``) and, everywhere, polls its
parent's pid every :data:`PARENT_POLL_SECONDS`. Each worker leads its own process
group, so that the terminal's Ctrl-C reaches the parent alone (which then stops the
workers) and stopping a worker also stops the simulator processes it started.

Ray tasks whose worker process or node is lost (:data:`RAY_LOSSES`) are run again,
up to ``max_retries`` times (the jobs are deterministic simulations); each retry
is logged and counted in :attr:`Outcome.attempts`, and a job that is lost on every
attempt comes back with an error naming the attempts.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .errors import TuneError

__all__ = ["EXECUTORS", "RAY_LOSSES", "Outcome", "Executor", "LocalExecutor", "RayExecutor", "make_executor"]

_log = logging.getLogger(__name__)

#: Accepted executor names of :func:`make_executor` (and of ``--executor``).
EXECUTORS = ("local", "ray")

#: Jobs handed out ahead of completion, per worker: keeps workers busy while the
#: parent prepares jobs, without preparing (and holding) all of them at once.
JOBS_AHEAD_PER_WORKER = 2

#: How often a local worker checks that its parent is still there (the fallback to
#: the parent-death signal, which only Linux has).
PARENT_POLL_SECONDS = 0.5
#: Seconds stopped workers get to exit on SIGTERM before they are killed.
STOP_GRACE_SECONDS = 2.0
#: Runs of a Ray task after the first when its worker process or node is lost.
RAY_MAX_RETRIES = 2
#: Names of the Ray errors that mean the task's worker or node was lost, not that
#: the job failed: the task is run again (those this Ray version has).
RAY_LOSSES = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
              "OutOfMemoryError")


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
    attempts : int
        How many times the job was started: more than 1 when its worker was lost
        and the job was run again.
    lost : list of str
        Why each earlier attempt was lost (empty when the first attempt counted).
    """
    index: int
    job: Any
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    attempts: int = 1
    lost: list[str] = field(default_factory=list)

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


def _outcome(index: int, job, returned, lost: list[str] | None = None) -> Outcome:
    ok, value, seconds, trace = returned
    lost = list(lost or [])
    if ok:
        return Outcome(index, job, result=value, seconds=seconds, attempts=len(lost) + 1, lost=lost)
    return Outcome(index, job, error=value, traceback=trace, seconds=seconds, attempts=len(lost) + 1, lost=lost)


@contextlib.contextmanager
def _sigterm_raises_exit():
    """While jobs run, SIGTERM raises ``SystemExit(128 + SIGTERM)`` in the main thread, so that
    a terminated run cleans up (stops its workers, ends its progress bar) as an interrupted one does.

    Left alone off the main thread (only it can handle signals) and when someone else
    already handles SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- local worker processes -------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
#: The parent-death signal of the local workers. Linux sends it when the *thread* that
#: started the worker ends (the one iterating ``map``), not only when the parent process
#: does, so it is a signal of its own whose handler checks that the parent is really gone
#: (SIGTERM keeps its meaning: stop this worker and what it started).
_PARENT_DEATH_SIGNAL = signal.SIGUSR1


def _stop_own_group() -> None:
    """End this worker and everything it started (its process group), now; from any thread."""
    if os.getpgrp() == os.getpid():     # never the parent's group
        with contextlib.suppress(ValueError):   # only the main thread sets handlers; os._exit follows anyway
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:
            _stop_own_group()


def _worker_start(parent_pid: int) -> None:
    """Initializer of every local worker: its own process group, and leave with the parent."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, lambda signum, frame: _stop_own_group())
    signal.signal(_PARENT_DEATH_SIGNAL,
                  lambda signum, frame: _stop_own_group() if os.getppid() != parent_pid else None)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL), 0, 0, 0)
    if os.getppid() != parent_pid:      # died before the death signal was armed
        _stop_own_group()
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()


def _signal_group(pid: int, signum: int) -> None:
    """``signum`` to a worker's process group (the worker and what it started), else to the worker."""
    for send in (os.killpg, os.kill):
        try:
            send(pid, signum)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's workers now, their running jobs with them, instead of waiting for the jobs."""
    # ProcessPoolExecutor has no public way to stop running workers before Python 3.14
    # (terminate_workers), which would not reach the workers' children either.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    alive = {process.sentinel: process for process in processes}
    while alive and time.monotonic() < deadline:
        for sentinel in multiprocessing.connection.wait(list(alive), deadline - time.monotonic()):
            alive.pop(sentinel)
    for process in alive.values():
        _log.warning("worker process %d did not exit on SIGTERM; killing it", process.pid)
        _signal_group(process.pid, signal.SIGKILL)


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
    that kills its worker is reported as failed. Leaving :meth:`map` before it
    is exhausted, or the ``with`` block on an exception, stops the running jobs
    (see the module docstring).
    """

    name = "local"

    def __init__(self, workers: int | None = None):
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise TuneError(f"workers must be a positive integer, not {workers!r}")
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._running: set[Future] = set()     # submitted by map() and not yet collected

    @property
    def workers(self) -> int:
        return self._workers

    def _current_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start, initargs=(os.getpid(),))
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)

    def _stop(self) -> None:
        """Stop the workers and the jobs they are running."""
        pool, self._pool = self._pool, None
        self._running.clear()
        if pool is not None:
            _stop_workers(pool)

    def map(self, fn: Callable, jobs: Iterable) -> Iterator[Outcome]:
        numbered = enumerate(jobs)
        pending = {}            # future -> (index, job, pool, isolated)
        suspects = deque()      # (index, job) running when a worker died: rerun alone

        def submit(index, job, isolated):
            pool = self._current_pool()
            future = pool.submit(_call, fn, job)
            pending[future] = (index, job, pool, isolated)
            self._running.add(future)

        exhausted = False
        with _sigterm_raises_exit():
            try:
                while True:
                    if suspects:
                        if not pending:
                            submit(*suspects.popleft(), True)
                    else:
                        while not exhausted and len(pending) < JOBS_AHEAD_PER_WORKER * self._workers:
                            item = next(numbered, None)
                            if item is None:
                                exhausted = True
                                break
                            submit(*item, False)
                    if not pending:
                        return
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index, job, pool, isolated = pending.pop(future)
                        self._running.discard(future)
                        lost = ["the worker process died running this job with others"] if isolated else []
                        try:
                            returned = future.result()
                        except BrokenProcessPool as error:
                            self._discard(pool)
                            if isolated:
                                yield Outcome(index, job, error=f"the worker process died running this job ({error})",
                                              attempts=2, lost=lost)
                            else:
                                suspects.append((index, job))
                            continue
                        except Exception as error:  # the job or its result could not be pickled
                            yield Outcome(index, job, error=f"{type(error).__name__}: {error}")
                            continue
                        yield _outcome(index, job, returned, lost)
            finally:
                running = [future for future in pending if not future.cancel() and not future.done()]
                self._running.difference_update(pending)
                if running:     # left early (interrupted, terminated, or closed): do not wait for them
                    self._stop()

    def close(self) -> None:
        if any(not future.done() for future in self._running):
            self._stop()       # a map() was abandoned mid-run (an exception passed through its caller)
        elif self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __exit__(self, exc_type, exc_value, exc_traceback):
        if exc_type is not None:
            self._stop()
        self.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


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
    max_retries : int
        Runs of a job after the first when its worker process or node is lost
        (:data:`RAY_LOSSES`); a job that raises is never run again.

    Notes
    -----
    Each task asks for one CPU (an RTL simulation is single-threaded). Lost tasks
    are resubmitted here rather than by Ray's own ``max_retries`` (set to 0), which
    retries silently: this way every retry is logged and counted in the outcome.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = RAY_MAX_RETRIES):
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise TuneError(f"max_retries must be a non-negative integer, not {max_retries!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
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
        losses = tuple(getattr(ray.exceptions, name) for name in RAY_LOSSES if hasattr(ray.exceptions, name))
        numbered = itertools.chain([first], numbered)
        ahead = JOBS_AHEAD_PER_WORKER * self.workers
        pending = {}            # ObjectRef -> (index, job, why earlier attempts were lost)
        exhausted = False
        with _sigterm_raises_exit():
            try:
                while True:
                    while not exhausted and len(pending) < ahead:
                        item = next(numbered, None)
                        if item is None:
                            exhausted = True
                            break
                        pending[remote.remote(fn, item[1])] = (*item, [])
                    if not pending:
                        return
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        index, job, lost = pending.pop(ref)
                        try:
                            returned = ray.get(ref)
                        except losses as error:
                            lost = [*lost, f"{type(error).__name__}: {_first_line(error)}"]
                            if len(lost) <= self.max_retries:
                                _log.warning("job %d: its Ray worker was lost (%s); running it again (retry %d of %d)",
                                             index, lost[-1], len(lost), self.max_retries)
                                pending[remote.remote(fn, job)] = (index, job, lost)
                                continue
                            _log.warning("job %d: its Ray worker was lost on all %d attempt(s); giving up",
                                         index, len(lost))
                            yield Outcome(index, job, error=f"lost on all {len(lost)} attempt(s), last: {lost[-1]}",
                                          attempts=len(lost), lost=lost)
                            continue
                        except ray.exceptions.RayError as error:  # arguments could not be loaded, cancelled...
                            yield Outcome(index, job, error=f"{type(error).__name__}: {error}",
                                          attempts=len(lost) + 1, lost=lost)
                            continue
                        if lost:
                            _log.info("job %d: done on attempt %d", index, len(lost) + 1)
                        yield _outcome(index, job, returned, lost)
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
