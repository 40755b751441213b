"""The golden simulator: the executable definition of ``docs/isa.md``.

:class:`GoldenSimulator` runs a :class:`~dlfusion.hw.binary.Binary` bit-exactly
as the ISA document describes, with vectorized numpy (one instruction is a few
numpy calls, never a Python loop per element), and estimates the cycle count
with a simple discrete-event model of the cores.

Functional model
----------------
Every core has its activation, weight, accumulator and parameter scratchpads,
8 semaphores, a dispatcher and three units (DMA, PE, PPU) with in-order queues
of ``hw.queue_depth`` entries. DRAM is shared. The dispatcher decodes the
core's stream from DRAM (``hw.instr_lines`` lines per instruction) when it
reaches an instruction, and appends it to its unit's queue (stalling while the
queue is full). A unit starts its queue head once every semaphore of the head's
``wait`` mask is non-zero (decrementing them); the instruction's whole
functional effect is applied atomically at that start time, and its ``signal``
mask is applied at its completion time. ``END`` and ``BARRIER`` run in the
dispatcher once every queue is empty and every unit idle (their ``wait`` and
``signal`` masks are ignored: draining the units is their synchronisation). A
``BARRIER`` then waits until every core in ``core_mask`` (which must include
the own core) waits at a barrier with the same mask; they all leave together.
Events are processed in time order; at equal times completions
come first, then starts by core and unit (DMA < PE < PPU), the dispatcher
last. For a race-free program (every cross-unit dependency through a
semaphore) the result equals that of any legal interleaving, hence of the RTL.

Errors are raised exactly where docs/isa.md puts them: ``BAD_OPCODE``,
``BAD_FIELD`` and ``FETCH_RANGE`` when the dispatcher reaches the instruction;
``SRAM_RANGE`` / ``DRAM_RANGE`` for the whole instruction when it starts,
before any effect (the code is that of the first offending iteration in loop
order, ``SRAM_RANGE`` first within one DMA line, as the RTL's address checks
run); ``SEM_OVERFLOW`` at completion; ``WATCHDOG`` when nothing can ever make
progress again. The first error stops the simulation.

Points the ISA document leaves open, settled here (and in the RTL alike):

* An instruction with a zero count accesses nothing: no range check at all
  (not even REQUANT/ADD's ``param_addr`` or ``lut_table``).
* MATMUL checks the weight block address in every mode (the PE reads the block
  even in MAX mode); ``w_row`` only matters, and is only checked, in DEPTHWISE.
* STORE skips pad iterations (nothing read or written) but their scratchpad
  address is still range-checked, as for LOAD.
* Within one instruction, repeated destination addresses are written in loop
  order (the last write wins; MATMUL accumulation is sequential). For a LOAD
  writing a line twice this is one choice among the results docs/isa.md
  leaves unspecified (the RTL writes pad lines at issue, data lines later).
* ADD reads its inputs as they were when it started, which is one of the
  results allowed when an output line is read by a later iteration (also
  unspecified in docs/isa.md; in-place ADD with output = input A is exact).
* A BARRIER's ``core_mask`` naming a core at or beyond ``hw.cores``, or not
  naming the own core, is ``BAD_FIELD``; a core that never arrives (one
  without a stream, or one that ended) makes it a ``WATCHDOG``.
* The reserved header bits 6..7 are ignored.
* A sparse MATMUL range-checks every line of every iteration's window; its
  metadata entry is the weight block's (the weight block check covers it).
  Metadata indices naming the same activation twice are legal: both products
  count.

Cycle model (an estimate; the RTL gives the real count)
-------------------------------------------------------
* Fetch: the dispatcher can issue instruction ``k`` once it has been fetched.
  Fetch requests go out one per ``ceil(32 / dram_bytes_per_cycle)`` cycles
  (an instruction is 32 bytes) into a prefetch buffer of
  ``fetch_lines / instr_lines`` instructions (a slot frees when its
  instruction is dispatched) and return ``dram_latency`` cycles later. The
  dispatcher issues at most one instruction per cycle. Fetches are not
  counted against the DMA's share of the DRAM port.
* DMA: a transfer with ``d`` DRAM lines and ``p`` pad lines occupies the
  DRAM port (shared by all cores, first come first served) for
  ``ceil(d * L / dram_bytes_per_cycle)`` cycles from its grant; a LOAD
  completes ``dram_latency`` cycles after its last request, a STORE with its
  last request, and never before one scratchpad line per cycle (``d + p``
  cycles) has elapsed. Pad-only transfers take ``p`` cycles. The wait for the
  port is counted as ``dma_stall``.
* PE: ``MATMUL`` takes ``n1 * n0 + 2`` cycles (one iteration per cycle plus
  the pipeline), sparse or dense alike (a sparse iteration reads its window of
  ``M/N`` lines from as many activation banks in one cycle).
* PPU: ``REQUANT`` takes ``n1 * n0 + 6 + 2`` cycles, ``ADD``
  ``n1 * n0 + 6 + 3`` (pipeline plus parameter reads); with ``lut`` set, two
  more (the table read and the byte select).
* ``SYNC`` and empty instructions (a zero count) take 1 cycle; ``END`` and
  ``BARRIER`` take 1 cycle after draining (and, for a barrier, after the last
  core in its mask arrived).
* The run takes until the last core's ``END`` completes. After an error the
  cycle count is the time of the error; after a deadlock it is the time of
  the last event plus ``hw.watchdog_cycles``.

DRAM traffic and barrier events (same model): ``dram_read_lines`` counts the
lines the DMA loads (counted when the LOAD starts) plus the instruction lines the
prefetcher requests (at their request times above, including the requests past
``END`` that go out before ``END`` is dispatched, as in the RTL);
``dram_write_lines`` the lines the DMA stores. Padding is not traffic. Every
cycle in which a barrier passes gives one entry of ``RunResult.barriers``:
``{"cycle": <the release cycle>, "cores": <mask of the cores passing>,
"dram_read_lines", "dram_write_lines"}`` with the counts so far (instruction
requests strictly before the release cycle). Across a barrier of all the
program's cores the DMA counts are exact, since the barrier drains every DMA;
the instruction fetch share follows the fetch model and differs from the RTL
by a few prefetched instructions per core.

Counters (per core) follow the same model: ``instructions`` (dispatched,
including ``END``/``BARRIER``), ``dma_busy``/``pe_busy``/``ppu_busy`` (sum of
instruction durations), ``dma_stall`` (port waits), ``sem_wait`` (cycles a
queue head was ready but for its semaphores, summed over units) and
``barrier_wait`` (from reaching a ``BARRIER`` to leaving it).

Floating point
--------------
The PPU's float arithmetic is defined once, in :mod:`dlfusion.hw.numerics`.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..hw.binary import Binary
from ..hw.config import HwConfig
from ..hw.isa import (
    INSTR_BITS,
    NUM_SEMAPHORES,
    SEMAPHORE_MAX,
    Buffer,
    ErrorCode,
    IsaError,
    MatmulMode,
    Opcode,
    Sparsity,
    Unit,
    decode,
)
from ..hw.numerics import qlinear_add, requantize, wrap32
from ..hw.sparse import expand, meta_indices
from .image import build_dram_image, read_outputs
from .result import COUNTER_NAMES, ErrorInfo, RunResult

__all__ = ["GoldenSimulator", "CoreState"]

_INSTR_BYTES = INSTR_BITS // 8


# --------------------------------------------------------------------------- state

class CoreState:
    """Architectural state of one core after (or during) a run.

    Attributes
    ----------
    act : numpy.ndarray of uint8, shape (act_lines, L)
    weight : numpy.ndarray of int8, shape (weight_blocks, L, L)
        ``weight[b, r, c]``: block ``b``, input lane ``r``, output lane ``c``.
    acc : numpy.ndarray of int32, shape (acc_entries, L)
    param : numpy.ndarray of uint32, shape (param_entries, L)
        Raw 32-bit words (view as int32 or float32).
    meta_lines : numpy.ndarray of uint8, shape (meta_lines, L)
        The metadata store (the 2-bit indices of sparse weight blocks; empty on a dense array).
    sems : list of int
        The 8 semaphores.
    """

    def __init__(self, hw: HwConfig, index: int):
        lanes = hw.lanes
        self.index = index
        self.act = np.zeros((hw.act_lines, lanes), np.uint8)
        self.weight_lines = np.zeros((hw.weight_lines, lanes), np.uint8)
        self.weight = self.weight_lines.view(np.int8).reshape(hw.weight_blocks, lanes, lanes)
        self.param_lines = np.zeros((hw.param_lines, lanes), np.uint8)
        self.param = self.param_lines.reshape(-1).view("<u4").reshape(hw.param_entries, lanes)
        self.acc = np.zeros((hw.acc_entries, lanes), np.int32)
        self.lut_lines = np.zeros((hw.lut_lines, lanes), np.uint8)
        self.meta_lines = np.zeros((hw.meta_lines, lanes), np.uint8)
        self.sems = [0] * NUM_SEMAPHORES
        # dispatcher and units
        self.state = "run"          # run | barrier | ending | done
        self.pc = 0
        self.queues = [deque(), deque(), deque()]
        self.busy = [False] * 3
        self.free_at = [0] * 3
        self.last_dispatch = -1
        self.fetch_request: list[int] = []   # request time of instruction k
        self.dispatched_at: list[int] = []   # dispatch time of instruction k
        self.barrier_arrivals: list[int] = []
        self.barrier_reached = 0
        self.fetch_stop: int | None = None   # when END was dispatched (the prefetcher stops)
        self.finish = 0
        self.decoded: dict[int, object] = {}
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)

    def buffer_lines(self, buffer: Buffer, meta: bool = False) -> np.ndarray:
        """The DMA's line view of a scratchpad (``meta``: the weight buffer's metadata store)."""
        if meta:
            return self.meta_lines
        views = {Buffer.ACT: self.act, Buffer.WEIGHT: self.weight_lines, Buffer.PARAM: self.param_lines,
                 Buffer.LUT: self.lut_lines}
        return views[buffer]

    def sems_ok(self, mask: int) -> bool:
        return all(self.sems[i] > 0 for i in range(NUM_SEMAPHORES) if mask >> i & 1)


@dataclass
class _Entry:
    pc: int
    instr: dict
    enq: int


class _Stop(Exception):
    def __init__(self, code: ErrorCode, core: int, pc: int, time: int):
        super().__init__(code)
        self.info = ErrorInfo(code, core, pc)
        self.time = time


def _last_occurrence(index: np.ndarray):
    """Positions that win when ``index`` is written in order (the last write of each address)."""
    if len(index) <= 1:
        return slice(None)
    _, first_reversed = np.unique(index[::-1], return_index=True)
    if len(first_reversed) == len(index):
        return slice(None)
    return np.sort(len(index) - 1 - first_reversed)


def _byte(value: int, signed: bool) -> int:
    return value - 256 if signed and value >= 128 else value


def _grid2(n1, n0, base, s1, s0):
    i1 = np.arange(n1, dtype=np.int64)[:, None]
    i0 = np.arange(n0, dtype=np.int64)[None, :]
    return (base + i1 * s1 + i0 * s0).reshape(-1)


_UNIT_INDEX = {Unit.DMA: 0, Unit.PE: 1, Unit.PPU: 2}
_OPCODE_UNIT = {Opcode.LOAD: 0, Opcode.STORE: 0, Opcode.MATMUL: 1, Opcode.REQUANT: 2, Opcode.ADD: 2}
_COUNTER_BUSY = ("dma_busy", "pe_busy", "ppu_busy")
_EINSUM_CHUNK = 1 << 14
_LUT_LATENCY = 2     # PPU pipeline stages a table look-up adds (read, byte select)


# --------------------------------------------------------------------------- simulator

class GoldenSimulator:
    """Bit-exact reference model of the accelerator.

    Parameters
    ----------
    hw : HwConfig
        The accelerator configuration; binaries built for another one are rejected.

    Attributes
    ----------
    dram : numpy.ndarray of uint8
        DRAM after the last :meth:`run` (``None`` before).
    cores : list of CoreState
        Per-core scratchpads and semaphores after the last :meth:`run`.
    """

    backend = "golden"

    def __init__(self, hw: HwConfig):
        if not isinstance(hw, HwConfig):
            raise TypeError(f"GoldenSimulator needs a HwConfig, not {type(hw).__name__}")
        self.hw = hw
        self.dram = None
        self.cores: list[CoreState] = []

    # -- public -----------------------------------------------------------------------------

    def run(self, binary: Binary, inputs: dict[str, np.ndarray] | None = None) -> RunResult:
        """Run ``binary`` with the named input arrays.

        Parameters
        ----------
        binary : Binary
        inputs : dict of str to numpy.ndarray
            Every input of the binary, as logical arrays.

        Returns
        -------
        RunResult
            ``backend="golden"``; ``cycles`` and ``counters`` are estimates (see the
            module docstring); ``outputs`` is empty and ``error`` set if the program
            stopped with an error.

        Raises
        ------
        BinaryError
            The binary was built for another HwConfig, or an input is missing,
            unknown or has the wrong shape or dtype.
        """
        hw = self.hw
        binary.check_hw(hw)
        self.dram = build_dram_image(binary, inputs or {})
        self._dram_lines = self.dram.reshape(hw.dram_lines, hw.lanes)
        self.cores = [CoreState(hw, i) for i in range(hw.cores)]
        self._streams = {s.core: s for s in binary.streams}
        for core in self.cores:
            if core.index not in self._streams:
                core.state = "done"
        self._port_free = 0
        self._dma_read_lines = 0
        self._dma_write_lines = 0
        self._barriers: list[dict] = []
        self._fetch_cycles = max(1, -(-_INSTR_BYTES // hw.dram_bytes_per_cycle))
        self._fetch_slots = max(1, hw.fetch_lines // hw.instr_lines)
        error = None
        try:
            cycles = self._simulate()
        except _Stop as stop:
            error, cycles = stop.info, stop.time
        counters = [dict(core.counters) for core in self.cores]
        outputs = {} if error else read_outputs(binary, self.dram)
        return RunResult(backend=self.backend, outputs=outputs, cycles=int(cycles), counters=counters,
                         error=error, barriers=self._barriers,
                         dram_read_lines=self._dma_read_lines + self._fetched_lines(int(cycles)),
                         dram_write_lines=self._dma_write_lines)

    # -- instruction fetch and decode -----------------------------------------------------------

    def _instruction(self, core: CoreState, k: int):
        """Decoded instruction ``k`` of ``core`` (a dict), or an ErrorCode."""
        if k in core.decoded:
            return core.decoded[k]
        hw = self.hw
        stream = self._streams[core.index]
        if stream.dram_line + (k + 1) * hw.instr_lines > hw.dram_lines:
            result = ErrorCode.FETCH_RANGE
        else:
            start = stream.dram_line * hw.line_bytes + k * _INSTR_BYTES
            word = int.from_bytes(self.dram[start:start + _INSTR_BYTES].tobytes(), "little")
            try:
                result = decode(word)
            except IsaError:
                raw = word & 0x3F
                valid = raw in {op.value for op in Opcode}
                result = ErrorCode.BAD_FIELD if valid else ErrorCode.BAD_OPCODE
            else:
                op = result["opcode"]
                if op is Opcode.STORE and (result["buffer"] is not Buffer.ACT or result["meta"]):
                    result = ErrorCode.BAD_FIELD
                elif op is Opcode.LOAD and result["buffer"] is Buffer.LUT and hw.lut_tables == 0:
                    result = ErrorCode.BAD_FIELD
                elif op is Opcode.LOAD and result["meta"] and (result["buffer"] is not Buffer.WEIGHT
                                                               or not hw.sparse_patterns):
                    result = ErrorCode.BAD_FIELD
                elif op is Opcode.MATMUL and result["sparse"] is not Sparsity.DENSE and (
                        result["sparse"].label not in hw.sparse_patterns or result["mode"] is not MatmulMode.MATMUL
                        or result["act_sg"] % 2 == 0):
                    result = ErrorCode.BAD_FIELD
                elif op is Opcode.BARRIER and (result["core_mask"] >> hw.cores
                                               or not result["core_mask"] >> core.index & 1):
                    result = ErrorCode.BAD_FIELD
        core.decoded[k] = result
        return result

    def _fetch_ready(self, core: CoreState, k: int) -> int:
        """When instruction ``k`` is in the prefetch buffer (cycle model only)."""
        requests = core.fetch_request
        while len(requests) <= k:
            j = len(requests)
            t = requests[-1] + self._fetch_cycles if requests else 0
            if j >= self._fetch_slots:
                t = max(t, core.dispatched_at[j - self._fetch_slots])
            requests.append(t)
        return requests[k] + self.hw.dram_latency

    def _fetched_lines(self, before: int) -> int:
        """Instruction lines requested by every core's prefetcher before cycle ``before``.

        Extends each core's request times (:meth:`_fetch_ready`'s recurrence) as far as
        they are determined: request ``j`` needs the dispatch of instruction
        ``j - fetch_slots``; a core's requests stop once its ``END`` was dispatched.
        """
        slots = self._fetch_slots
        total = 0
        for core in self.cores:
            if core.index not in self._streams:
                continue
            limit = before if core.fetch_stop is None else min(before, core.fetch_stop + 1)
            requests = core.fetch_request
            while True:
                j = len(requests)
                if j >= slots and j - slots >= len(core.dispatched_at):
                    break
                t = requests[-1] + self._fetch_cycles if requests else 0
                if j >= slots:
                    t = max(t, core.dispatched_at[j - slots])
                if t >= limit:
                    break
                requests.append(t)
            total += bisect.bisect_left(requests, limit)
        return total * self.hw.instr_lines

    def _record_barrier(self, mask: int, now: int) -> None:
        """One barrier event per cycle: barriers passing in the same cycle share one entry."""
        event = {"cycle": now, "cores": mask, "dram_read_lines": self._dma_read_lines + self._fetched_lines(now),
                 "dram_write_lines": self._dma_write_lines}
        if self._barriers and self._barriers[-1]["cycle"] == now:
            event["cores"] |= self._barriers[-1]["cores"]
            self._barriers[-1] = event
        else:
            self._barriers.append(event)

    # -- the event loop ------------------------------------------------------------------------

    def _simulate(self) -> int:
        hw = self.hw
        cores = self.cores
        completions: list = []   # (time, seq, core, unit, pc, signal); unit 3 = dispatcher (END)
        seq = 0
        now = 0
        while True:
            best = None
            if completions:
                best = ((completions[0][0], -1, completions[0][1]), "complete", None)
            for core in cores:
                if core.state in ("done", "ending"):
                    continue
                for u in range(3):
                    if core.busy[u] or not core.queues[u]:
                        continue
                    head = core.queues[u][0]
                    if not core.sems_ok(head.instr["wait"]):
                        continue
                    key = (max(now, head.enq, core.free_at[u]), core.index, u)
                    if best is None or key < best[0]:
                        best = (key, "start", core)
                candidate = self._dispatcher_candidate(core, now)
                if candidate is not None:
                    key = (candidate[0], core.index, 3)
                    if best is None or key < best[0]:
                        best = (key, candidate[1], core)
            if best is None:
                unfinished = [core for core in cores if core.state != "done"]
                if not unfinished:
                    return max((core.finish for core in cores), default=0)
                core = unfinished[0]
                raise _Stop(ErrorCode.WATCHDOG, core.index, core.pc, now + hw.watchdog_cycles)
            (now, _, _), action, core = best
            if action == "complete":
                _, _, c, unit, pc, signal = heapq.heappop(completions)
                done_core = cores[c]
                self._signal(done_core, signal, pc, now)
                if unit == 3:
                    done_core.state = "done"
                    done_core.finish = now
                else:
                    done_core.busy[unit] = False
                    done_core.free_at[unit] = now
            elif action == "start":
                u = best[0][2]
                entry = core.queues[u].popleft()
                ready = max(entry.enq, core.free_at[u])
                core.counters["sem_wait"] += now - ready
                self._acquire(core, entry.instr["wait"])
                duration = self._execute(core, entry, now)
                core.counters[_COUNTER_BUSY[u]] += duration
                core.busy[u] = True
                heapq.heappush(completions, (now + duration, seq, core.index, u, entry.pc,
                                             entry.instr["signal"]))
                seq += 1
            elif action == "error":
                raise _Stop(self._instruction(core, core.pc), core.index, core.pc, now)
            elif action == "dispatch":
                k = core.pc
                instr = self._instruction(core, k)
                op = instr["opcode"]
                u = _UNIT_INDEX[instr["unit"]] if op is Opcode.SYNC else _OPCODE_UNIT[op]
                core.queues[u].append(_Entry(k, instr, now))
                self._dispatched(core, now)
            elif action == "drain":
                k = core.pc
                instr = self._instruction(core, k)
                core.counters["instructions"] += 1
                if instr["opcode"] is Opcode.END:
                    core.state = "ending"
                    core.fetch_stop = now
                    heapq.heappush(completions, (now + 1, seq, core.index, 3, k, 0))
                    seq += 1
                else:
                    core.state = "barrier"
                    core.barrier_arrivals.append(now)
                    core.barrier_reached = max(self._fetch_ready(core, k), core.last_dispatch + 1)
            elif action == "release":
                # Every core of the rendezvous leaves in the same cycle.
                mask = self._instruction(core, core.pc)["core_mask"]
                for other in self.cores:
                    if mask >> other.index & 1:
                        other.counters["barrier_wait"] += now - other.barrier_reached
                        other.state = "run"
                        other.pc += 1
                        other.last_dispatch = now
                        other.dispatched_at.append(now)
                self._record_barrier(mask, now)

    def _dispatched(self, core: CoreState, now: int) -> None:
        core.pc += 1
        core.last_dispatch = now
        core.dispatched_at.append(now)
        core.counters["instructions"] += 1

    def _dispatcher_candidate(self, core: CoreState, now: int):
        """(time, action) of the dispatcher's next step, or None while it is blocked."""
        if core.state == "barrier":
            # A rendezvous, as in the RTL's barrier unit: every core named in the mask is
            # waiting at a barrier with the very same mask; they all leave together.
            mask = self._instruction(core, core.pc)["core_mask"]
            times = []
            for j in range(self.hw.cores):
                if mask >> j & 1:
                    other = self.cores[j]
                    if other.state != "barrier" or self._instruction(other, other.pc)["core_mask"] != mask:
                        return None
                    times.append(other.barrier_arrivals[-1])
            return max(now, max(times) + 1), "release"
        k = core.pc
        instr = self._instruction(core, k)
        reach = max(now, self._fetch_ready(core, k), core.last_dispatch + 1)
        if isinstance(instr, ErrorCode):
            return reach, "error"
        op = instr["opcode"]
        if op in (Opcode.END, Opcode.BARRIER):
            if any(core.queues) or any(core.busy):
                return None
            return max(reach, *core.free_at), "drain"
        u = _UNIT_INDEX[instr["unit"]] if op is Opcode.SYNC else _OPCODE_UNIT[op]
        if len(core.queues[u]) >= self.hw.queue_depth:
            return None
        return reach, "dispatch"

    @staticmethod
    def _acquire(core: CoreState, mask: int) -> None:
        for i in range(NUM_SEMAPHORES):
            if mask >> i & 1:
                core.sems[i] -= 1

    @staticmethod
    def _signal(core: CoreState, mask: int, pc: int, now: int) -> None:
        for i in range(NUM_SEMAPHORES):
            if mask >> i & 1:
                if core.sems[i] >= SEMAPHORE_MAX:
                    raise _Stop(ErrorCode.SEM_OVERFLOW, core.index, pc, now)
                core.sems[i] += 1

    # -- instruction semantics -------------------------------------------------------------------

    def _execute(self, core: CoreState, entry: _Entry, now: int) -> int:
        """Apply one instruction's effect; return its duration in cycles."""
        f = entry.instr
        op = f["opcode"]
        try:
            if op is Opcode.SYNC:
                return 1
            if op in (Opcode.LOAD, Opcode.STORE):
                return self._dma(core, f, op is Opcode.STORE, now)
            if op is Opcode.MATMUL:
                return self._matmul(core, f)
            return self._ppu(core, f)
        except _Stop as stop:
            raise _Stop(stop.info.code, core.index, entry.pc, now) from None

    def _dma(self, core: CoreState, f: dict, store: bool, now: int) -> int:
        hw = self.hw
        n0, n1, n2 = f["n0"], f["n1"], f["n2"]
        count = n0 * n1 * n2
        if count == 0:
            return 1
        i2 = np.arange(n2, dtype=np.int64)[:, None, None]
        i1 = np.arange(n1, dtype=np.int64)[None, :, None]
        i0 = np.arange(n0, dtype=np.int64)[None, None, :]
        sram = (f["sram_addr"] + i2 * f["sram_s2"] + i1 * f["sram_s1"] + i0).reshape(-1)
        pad2 = ((i1 < f["pad_top"]) | (i1 >= n1 - f["pad_bottom"])
                | (i0 < f["pad_left"]) | (i0 >= n0 - f["pad_right"]))
        pad = np.broadcast_to(pad2, (n2, n1, n0)).reshape(-1)
        dram = (f["dram_addr"] + i2 * f["dram_s2"] + (i1 - f["pad_top"]) * f["dram_s1"]
                + (i0 - f["pad_left"])).reshape(-1)
        buffer = f["buffer"]
        lines = core.buffer_lines(buffer, bool(f["meta"]))
        sram_bad = sram >= len(lines)
        dram_bad = ~pad & (dram >= hw.dram_lines)
        bad = sram_bad | dram_bad
        if bad.any():
            first = int(np.argmax(bad))
            raise _Stop(ErrorCode.SRAM_RANGE if sram_bad[first] else ErrorCode.DRAM_RANGE, 0, 0, 0)
        real = ~pad
        if store:
            src, dst = sram[real], dram[real]
            keep = _last_occurrence(dst)
            self._dram_lines[dst[keep]] = core.act[src[keep]]
        else:
            values = np.empty((count, hw.lanes), np.uint8)
            values[pad] = f["pad_value"]
            values[real] = self._dram_lines[dram[real]]
            keep = _last_occurrence(sram)
            lines[sram[keep]] = values[keep]
        # timing
        dram_count = int(real.sum())
        if store:
            self._dma_write_lines += dram_count
        else:
            self._dma_read_lines += dram_count
        if dram_count == 0:
            return max(1, count)
        transfer = -(-dram_count * hw.line_bytes // hw.dram_bytes_per_cycle)
        grant = max(now, self._port_free)
        self._port_free = grant + transfer
        core.counters["dma_stall"] += grant - now
        done = grant + transfer + (0 if store else hw.dram_latency)
        return max(done, now + count) - now

    def _matmul(self, core: CoreState, f: dict) -> int:
        hw = self.hw
        lanes = hw.lanes
        n1, n0 = f["n1"], f["n0"]
        count = n1 * n0
        if count == 0:
            return 1
        mode = f["mode"]
        sparse = f["sparse"]
        window = sparse.window
        act_i = _grid2(n1, n0, f["act_addr"], f["act_s1"], f["act_s0"])
        # The activation lines of each iteration: one, or the M/N lines of a sparse window.
        lines_i = act_i[:, None] + np.arange(window, dtype=np.int64)[None, :] * f["act_sg"]
        w_i = _grid2(n1, n0, f["w_addr"], f["w_s1"], f["w_s0"])
        acc_i = _grid2(n1, n0, f["acc_addr"], f["acc_s1"], f["acc_s0"])
        if ((lines_i >= hw.act_lines).any() or (w_i >= hw.weight_blocks).any()
                or (acc_i >= hw.acc_entries).any() or (mode is MatmulMode.DEPTHWISE and f["w_row"] >= lanes)):
            raise _Stop(ErrorCode.SRAM_RANGE, 0, 0, 0)
        signed = bool(f["in_signed"])
        x = core.act[lines_i].reshape(count, window * lanes)
        x = (x.view(np.int8) if signed else x).astype(np.int32) - _byte(f["in_zp"], signed)
        if sparse is not Sparsity.DENSE:
            v = self._matmul_values(x, w_i, count, lambda block: self.expanded_weight(core, block, sparse))
        elif mode is MatmulMode.MATMUL:
            v = self._matmul_values(x, w_i, count, lambda block: core.weight[block])
        elif mode is MatmulMode.DEPTHWISE:
            v = x * core.weight[w_i, f["w_row"], :].astype(np.int32)
        else:
            v = x
        v = v.astype(np.int64)
        acc = core.acc
        if not f["accumulate"]:
            keep = _last_occurrence(acc_i)
            acc[acc_i[keep]] = wrap32(v[keep])
        else:
            order = np.argsort(acc_i, kind="stable")
            sorted_i = acc_i[order]
            starts = np.flatnonzero(np.r_[True, sorted_i[1:] != sorted_i[:-1]])
            targets = sorted_i[starts]
            if mode is MatmulMode.MAX:
                reduced = np.maximum.reduceat(v[order], starts, axis=0)
                acc[targets] = np.maximum(acc[targets], reduced)
            else:
                reduced = np.add.reduceat(v[order], starts, axis=0)
                acc[targets] = wrap32(acc[targets].astype(np.int64) + reduced)
        return count + 2

    def expanded_weight(self, core: CoreState, block: int, sparse: Sparsity) -> np.ndarray:
        """The ``(M/N * L, L)`` dense weight a sparse block stands for: value ``W[r][c]`` sits at window
        channel ``(r // N) * M + index[r][c]``, the index from the block's metadata entry."""
        per_block = self.hw.meta_lines_per_block
        entry = core.meta_lines[block * per_block:(block + 1) * per_block]
        return expand(core.weight[block], meta_indices(entry, self.hw.lanes), sparse)

    @staticmethod
    def _matmul_values(x: np.ndarray, w_i: np.ndarray, count: int, weight_of) -> np.ndarray:
        """v[n, c] = sum_r x[n, r] * weight_of(w_i[n])[r, c] (exact: |v| < 2**23)."""
        blocks, inverse = np.unique(w_i, return_inverse=True)
        weights = [weight_of(block) for block in blocks]
        v = np.empty((count, weights[0].shape[1]), np.int64)
        if len(blocks) * 8 <= count:
            # Few distinct blocks (typical): one float64 matmul per block, exact for |v| < 2**53.
            xf = x.astype(np.float64)
            for j, weight in enumerate(weights):
                sel = inverse == j
                v[sel] = (xf[sel] @ weight.astype(np.float64)).astype(np.int64)
            return v
        weights = np.stack(weights).astype(np.int32)
        for start in range(0, count, _EINSUM_CHUNK):
            stop = min(count, start + _EINSUM_CHUNK)
            w = weights[inverse[start:stop]]
            v[start:stop] = np.einsum("nr,nrc->nc", x[start:stop], w)
        return v

    def _ppu(self, core: CoreState, f: dict) -> int:
        hw = self.hw
        add = f["opcode"] is Opcode.ADD
        n1, n0 = f["n1"], f["n0"]
        count = n1 * n0
        if count == 0:
            return 1
        params = 3 if add else 2
        lut = bool(f["lut"])
        if f["param_addr"] + params > hw.param_entries or (lut and f["lut_table"] >= hw.lut_tables):
            raise _Stop(ErrorCode.SRAM_RANGE, 0, 0, 0)
        out_i = _grid2(n1, n0, f["out_addr"], f["out_s1"], f["out_s0"])
        if add:
            a_i = _grid2(n1, n0, f["a_addr"], f["a_s1"], f["a_s0"])
            b_i = _grid2(n1, n0, f["b_addr"], f["b_s1"], f["b_s0"])
            bad = (a_i >= hw.act_lines) | (b_i >= hw.act_lines)
        else:
            acc_i = _grid2(n1, n0, f["acc_addr"], f["acc_s1"], f["acc_s0"])
            bad = acc_i >= hw.acc_entries
        if (bad | (out_i >= hw.act_lines)).any():
            raise _Stop(ErrorCode.SRAM_RANGE, 0, 0, 0)
        out_signed = bool(f["out_signed"])
        rounding = dict(out_zp=_byte(f["out_zp"], out_signed), clamp_lo=_byte(f["clamp_lo"], out_signed),
                        clamp_hi=_byte(f["clamp_hi"], out_signed), out_signed=out_signed)
        p = f["param_addr"]
        if add:
            in_type = np.int8 if f["in_signed"] else np.uint8
            # Reads see the scratchpad as it was when the instruction started.
            a = core.act[a_i].view(in_type)
            b = core.act[b_i].view(in_type)
            words = core.param[p:p + 3].view(np.float32)
            y = qlinear_add(a, b, words[0], words[1], words[2], **rounding)
        else:
            bias = core.param[p].view(np.int32)
            mult = core.param[p + 1].view(np.float32)
            y = requantize(core.acc[acc_i], bias, mult, **rounding)
        y = y.view(np.uint8)
        if lut:
            first = f["lut_table"] * hw.lut_lines_per_table
            table = core.lut_lines[first:first + hw.lut_lines_per_table].reshape(-1)
            y = table[y]
        keep = _last_occurrence(out_i)
        core.act[out_i[keep]] = y[keep]
        return count + 6 + params + (_LUT_LATENCY if lut else 0)
