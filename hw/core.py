"""One accelerator core: fetch, dispatch, semaphores, scratchpads and three units.

:class:`InstructionFetch` prefetches instruction lines through the shared DRAM
port into a line FIFO. The :class:`Dispatcher` assembles them into 256-bit
instructions, decodes each, rejects bad opcodes and reserved field values, and
appends it to the queue of its unit (DMA, PE, PPU), stalling while that queue
is full; END and BARRIER wait for every queue and unit to drain.
:class:`Semaphores` checks the heads of the queues: it lets at most one unit
acquire per cycle (fixed priority DMA, PE, PPU) and applies all completions of
the cycle. :class:`Core` joins them with the scratchpads and the
units and keeps the first error and the counters.
"""

from amaranth.hdl import Array, Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Module, Mux, ResetSignal, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .config import HwConfig
from .dma import DmaUnit, dma_tag_layout
from .isa import INSTRUCTION, NUM_SEMAPHORES, SEMAPHORE_MAX, Buffer, ErrorCode, MatmulMode, Opcode, Sparsity, Unit
from .memsys import RequestSignature, ResponseSignature
from .pe_array import PeArray
from .ppu import Ppu
from .unit import queue_slot

__all__ = ["Core", "InstructionFetch", "Dispatcher", "Semaphores", "SemaphoreClientSignature", "UNITS",
           "COUNTER_NAMES", "COUNTER_BITS", "COUNTERS"]

COUNTER_NAMES = ("instructions", "dma_busy", "dma_stall", "pe_busy", "ppu_busy", "sem_wait", "barrier_wait")
COUNTER_BITS = 48
#: The counters of one core, in ``COUNTER_NAMES`` order (the first in the low bits).
COUNTERS = data.StructLayout({name: COUNTER_BITS for name in COUNTER_NAMES})

#: The units of a core, in the order of their semaphore priority (and of their queues).
UNITS = (Unit.DMA, Unit.PE, Unit.PPU)


class InstructionFetch(wiring.Component):
    """Instruction prefetch: DRAM lines from ``prog_addr`` on, into a line FIFO.

    Lines are requested while the core runs and has not finished, as long as the FIFO has
    room for every line in flight (the response port is always ready).

    Parameters
    ----------
    hw : HwConfig

    Members
    -------
    start : In(1), a pulse: fetch from ``prog_addr``.
    running, finished : In(1), the core's status (lines are fetched while running and not finished).
    halt : In(1), stop requesting.
    fetch, fetch_resp : the untagged port on the shared DRAM system.
    lines : Out(stream.Signature(8 * line_bytes)), the fetched lines in order.
    drained : Out(1), nothing is in flight and the next line would be beyond the DRAM.
    progress : Out(1), a line was requested or arrived this cycle.
    """

    def __init__(self, hw: HwConfig):
        self.hw = hw
        super().__init__({
            "start": In(1), "prog_addr": In(32), "running": In(1), "finished": In(1), "halt": In(1),
            "fetch": Out(RequestSignature(hw, 0)), "fetch_resp": In(ResponseSignature(hw, 0)),
            "lines": Out(stream.Signature(8 * hw.line_bytes)),
            "drained": Out(1), "progress": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        m.submodules.lines = lines = fifo.SyncFIFO(width=8 * hw.line_bytes, depth=hw.fetch_lines)
        wiring.connect(m, lines.r_stream, wiring.flipped(self.lines))

        fetch_addr = Signal(33)
        outstanding = Signal(range(hw.fetch_lines + 1))
        requested = self.fetch.valid & self.fetch.ready
        m.d.comb += [
            self.fetch.valid.eq(self.running & ~self.finished & ~self.halt & (fetch_addr < hw.dram_lines)
                                & (outstanding + lines.level < hw.fetch_lines)),
            self.fetch.payload.addr.eq(fetch_addr),
            self.fetch.payload.write.eq(0),
            # The always-ready response port has no ready to join to the FIFO's: the request
            # condition above keeps room in the FIFO for every line in flight.
            lines.w_stream.payload.eq(self.fetch_resp.payload.data),
            lines.w_stream.valid.eq(self.fetch_resp.valid),
        ]
        with m.If(self.start):
            m.d.sync += fetch_addr.eq(self.prog_addr)
        with m.Elif(requested):
            m.d.sync += fetch_addr.eq(fetch_addr + 1)
        m.d.sync += outstanding.eq(outstanding + requested - self.fetch_resp.valid)
        m.d.comb += [
            self.drained.eq((outstanding == 0) & (fetch_addr >= hw.dram_lines)),
            self.progress.eq(self.fetch_resp.valid | requested),
        ]
        return m


class Dispatcher(wiring.Component):
    """Assembly, decode and dispatch: each instruction goes to its unit's queue, END and BARRIER
    wait for the core to drain.

    ``instr_lines`` fetched lines make one instruction, the first in its low bits. A malformed
    instruction (a bad opcode, a reserved field value, a barrier that does not name this core
    or names a core that does not exist, a ``meta`` LOAD of another buffer than weight or on a
    dense array, a STORE with ``meta``, a sparse MATMUL of a pattern the array lacks, of another
    mode than MATMUL or with an even ``act_sg``) is reported, not dispatched, as is a stream that
    runs past the end of DRAM.

    Parameters
    ----------
    hw : HwConfig
    index : int
        The core's number.
    payloads : dict of Unit to data.Layout
        Each unit's view of the instruction payload (its queue carries ``queue_slot(payload)``).

    Members
    -------
    start, enable : In(1), a start pulse and whether this core runs a stream.
    halt : In(1), stop dispatching (an error somewhere).
    idle : In(1), every queue is empty and no unit is busy.
    lines : In(stream.Signature(8 * line_bytes)), fetched lines; fetch_drained : In(1), no more will come.
    dma_queue, pe_queue, ppu_queue : Out(stream.Signature(queue_slot(payload))), to the queues.
    running, finished : Out(1), started; reached END (or not enabled).
    pc : Out(32), the index of the instruction at the head.
    dispatched : Out(1), the head instruction left this cycle.
    error : Out(1), the head is malformed or cannot be fetched (this cycle); error_code : Out(ErrorCode).
    barrier_arrive, barrier_mask, barrier_go : the barrier handshake.
    barrier_waiting : Out(1), waiting at a barrier this cycle.
    """

    def __init__(self, hw: HwConfig, index: int, payloads: dict):
        if 8 * hw.line_bytes > INSTRUCTION.size:
            raise ValueError(f"lines wider than an instruction ({INSTRUCTION.size} bits) are not supported, "
                             f"not {8 * hw.line_bytes} bits")
        if not 0 <= index < hw.cores:
            raise ValueError(f"core index must be between 0 and {hw.cores - 1}, not {index!r}")
        if set(payloads) != set(UNITS):
            raise ValueError(f"payloads must name the units {', '.join(u.name for u in UNITS)}, "
                             f"not {', '.join(str(u) for u in payloads)}")
        self.hw = hw
        self.index = index
        self.payloads = dict(payloads)
        super().__init__({
            "start": In(1), "enable": In(1), "halt": In(1), "idle": In(1),
            "lines": In(stream.Signature(8 * hw.line_bytes)), "fetch_drained": In(1),
            **{f"{unit.name.lower()}_queue": Out(stream.Signature(queue_slot(payloads[unit]))) for unit in UNITS},
            "running": Out(1), "finished": Out(1), "pc": Out(32), "dispatched": Out(1),
            "error": Out(1), "error_code": Out(ErrorCode),
            "barrier_arrive": Out(1), "barrier_mask": Out(hw.cores), "barrier_go": In(1),
            "barrier_waiting": Out(1),
        })

    def queue(self, unit: Unit):
        return getattr(self, f"{unit.name.lower()}_queue")

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        line_bits = 8 * hw.line_bytes
        instr_lines = hw.instr_lines
        running, finished, pc = self.running, self.finished, self.pc

        # -- assembly ------------------------------------------------------------------------
        word = Signal(INSTRUCTION.size)
        have = Signal(range(instr_lines + 1))
        line = self.lines
        m.d.comb += line.ready.eq((have < instr_lines) & running)
        with m.If(self.dispatched):
            m.d.sync += have.eq(0)
        with m.Elif(line.valid & line.ready):
            m.d.sync += [have.eq(have + 1),
                         word.eq(Cat(word[line_bits:], line.payload) if instr_lines > 1 else line.payload)]

        # -- decode --------------------------------------------------------------------------
        instr = INSTRUCTION(word)
        opcode = instr.opcode
        for unit in UNITS:
            slot = self.queue(unit).payload
            m.d.comb += [
                slot.wait.eq(instr.wait),
                slot.entry.opcode.eq(opcode), slot.entry.signal.eq(instr.signal),
                slot.entry.payload.eq(instr.payload.as_value()[:self.payloads[unit].size]),
                slot.entry.pc.eq(pc),
            ]

        target = Signal(Unit)
        dispatchable = Signal()
        bad_opcode = Signal()
        bad_field = Signal()
        dma, matmul = instr.payload.dma, instr.payload.matmul
        # The metadata store is the weight buffer's, on a sparse array only.
        bad_meta = dma.meta & ((dma.buffer != Buffer.WEIGHT) if hw.sparse_patterns else 1)
        # A sparse pattern the array has (3 is reserved), in MATMUL mode, with an odd window stride.
        supported = Cat(matmul.sparse == Sparsity.from_label(label) for label in hw.sparse_patterns)
        bad_sparse = (matmul.sparse != Sparsity.DENSE) & (
            ~supported.any() | (matmul.mode != MatmulMode.MATMUL) | ~matmul.act_sg[0])
        with m.Switch(opcode):
            with m.Case(Opcode.LOAD):
                # Buffer lut (3) exists only with lookup tables.
                m.d.comb += [target.eq(Unit.DMA), dispatchable.eq(1),
                             bad_field.eq((0 if hw.lut_tables else dma.buffer == Buffer.LUT) | bad_meta)]
            with m.Case(Opcode.STORE):
                m.d.comb += [target.eq(Unit.DMA), dispatchable.eq(1),
                             bad_field.eq((dma.buffer != Buffer.ACT) | dma.meta)]
            with m.Case(Opcode.MATMUL):
                m.d.comb += [target.eq(Unit.PE), dispatchable.eq(1),
                             bad_field.eq((matmul.mode.as_value() == 3) | bad_sparse)]
            with m.Case(Opcode.REQUANT, Opcode.ADD):
                m.d.comb += [target.eq(Unit.PPU), dispatchable.eq(1)]
            with m.Case(Opcode.SYNC):
                m.d.comb += [target.eq(instr.payload.sync.unit), dispatchable.eq(1),
                             bad_field.eq(instr.payload.sync.unit.as_value() == 3)]
            with m.Case(Opcode.BARRIER):
                mask = instr.payload.barrier.core_mask
                m.d.comb += bad_field.eq(~mask[self.index] | (mask >> hw.cores).any())
            with m.Case(Opcode.END):
                pass
            with m.Default():
                m.d.comb += bad_opcode.eq(1)

        # -- dispatch ------------------------------------------------------------------------
        ready = (have == instr_lines) & running & ~self.halt & ~finished
        with m.If(ready & (bad_opcode | bad_field)):
            m.d.comb += [self.error.eq(1),
                         self.error_code.eq(Mux(bad_opcode, ErrorCode.BAD_OPCODE, ErrorCode.BAD_FIELD))]
        with m.Elif(ready & dispatchable):
            with m.Switch(target):
                for unit in UNITS:
                    with m.Case(unit):
                        queue = self.queue(unit)
                        m.d.comb += [queue.valid.eq(1), self.dispatched.eq(queue.ready)]
        with m.Elif(ready & (opcode == Opcode.END) & self.idle):
            m.d.comb += self.dispatched.eq(1)
            m.d.sync += finished.eq(1)
        with m.Elif(ready & (opcode == Opcode.BARRIER) & self.idle):
            m.d.comb += [self.barrier_waiting.eq(1), self.barrier_arrive.eq(1),
                         # Bits of cores that do not exist are zero here (a BAD_FIELD error otherwise).
                         self.barrier_mask.eq(instr.payload.barrier.core_mask[:hw.cores]),
                         self.dispatched.eq(self.barrier_go)]
        with m.If(self.dispatched):
            m.d.sync += pc.eq(pc + 1)

        # FETCH_RANGE: an instruction is needed but nothing more can arrive.
        with m.If(running & ~finished & (have < instr_lines) & ~line.valid & self.fetch_drained):
            m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.FETCH_RANGE)]

        with m.If(self.start):
            m.d.sync += [running.eq(1), finished.eq(~self.enable), pc.eq(0)]
        return m


#: A unit and the head of its queue as the semaphore block sees them (members as seen from the block).
SemaphoreClientSignature = wiring.Signature({
    "head": In(1),                  # the unit's queue has a head
    "wait": In(NUM_SEMAPHORES),     # the head's wait mask
    "take": In(1),                  # the unit takes the head this cycle
    "can_start": In(1),             # the unit would take the head this cycle if sem_ok
    "sem_ok": Out(1),               # the head's semaphores are available to this unit
    "stalled": Out(1),              # the unit could start but waits for a semaphore
    "done": In(1), "done_signal": In(NUM_SEMAPHORES), "done_pc": In(32),
})


class Semaphores(wiring.Component):
    """``NUM_SEMAPHORES`` counting semaphores of 0 to ``SEMAPHORE_MAX``.

    A unit may take the head of its queue when every semaphore of the head's wait mask is
    non-zero (``sem_ok``); taking it decrements them. At most one unit with a non-empty wait
    mask acquires per cycle, in client order (fixed priority). Every completion of the cycle
    increments the semaphores of its signal mask; a semaphore that would pass
    ``SEMAPHORE_MAX`` is not updated and raises ``overflow`` with the signalling
    instruction's pc.

    Parameters
    ----------
    clients : int
        Number of units, in priority order.

    Members
    -------
    client0, client1, ... : Out(SemaphoreClientSignature), one per unit.
    overflow : Out(1), overflow_pc : Out(32)
    stalled : Out(1), some unit waits for a semaphore this cycle.
    """

    def __init__(self, clients: int):
        if clients < 1:
            raise ValueError(f"a semaphore block needs at least one client, not {clients!r}")
        self.clients = clients
        super().__init__({
            **{f"client{k}": Out(SemaphoreClientSignature) for k in range(clients)},
            "overflow": Out(1), "overflow_pc": Out(32), "stalled": Out(1),
        })

    def client(self, index: int):
        return getattr(self, f"client{index}")

    def elaborate(self, platform):
        m = Module()
        clients = [self.client(k) for k in range(self.clients)]
        semaphores = [Signal(8, name=f"sem{i}") for i in range(NUM_SEMAPHORES)]

        higher_wants = Const(0)
        for client in clients:
            wait = client.wait
            available = Cat((~wait[i]) | (semaphores[i] != 0) for i in range(NUM_SEMAPHORES)).all()
            uses = wait.any()
            m.d.comb += [client.sem_ok.eq(available & ~(uses & higher_wants)),
                         client.stalled.eq(client.head & client.can_start & ~client.sem_ok)]
            higher_wants = higher_wants | (client.head & client.can_start & available & uses)
        m.d.comb += self.stalled.eq(Cat(c.stalled for c in clients).any())

        for i, semaphore in enumerate(semaphores):
            taken = Cat(c.take & c.wait[i] for c in clients).any()
            given = [c.done & c.done_signal[i] for c in clients]
            total = Signal(range(2 * SEMAPHORE_MAX + 4), name=f"sem{i}_next")
            m.d.comb += total.eq(semaphore - taken + sum(given))
            with m.If(total > SEMAPHORE_MAX):
                m.d.comb += self.overflow.eq(1)
                for c in reversed(clients):
                    with m.If(c.done & c.done_signal[i]):
                        m.d.comb += self.overflow_pc.eq(c.done_pc)
            with m.Else():
                m.d.sync += semaphore.eq(total)
        return m


class Core(wiring.Component):
    """One core.

    Parameters
    ----------
    hw : HwConfig
    index : int
        This core's number (for the barrier mask check).

    Members
    -------
    start : In(1), a pulse; ``enable`` says whether this core runs a stream.
    prog_addr : In(32), DRAM line of the first instruction.
    halt : In(1), stop everything (an error somewhere).
    fetch, fetch_resp : untagged ports on the shared DRAM system (responses come in request order).
    dma, dma_resp : tagged ports on the shared DRAM system.
    finished : Out(1), the stream reached END (or the core is not enabled).
    error, error_code, error_pc : the first error of this core (``error_code`` an ``ErrorCode``).
    pc : Out(32), the instruction index the dispatcher holds.
    progress : Out(1), something moved this cycle (for the watchdog).
    barrier_arrive, barrier_mask, barrier_go : the barrier handshake (``barrier_mask`` has a
        bit per core; an instruction naming a core that does not exist is a BAD_FIELD error).
    counters : Out(COUNTERS), cycle and event counts since the last start.
    """

    def __init__(self, hw: HwConfig, index: int, *, clock_gating: bool = True):
        self.hw = hw
        self.index = index
        self.clock_gating = bool(clock_gating)
        super().__init__({
            "start": In(1), "enable": In(1), "prog_addr": In(32), "halt": In(1),
            "fetch": Out(RequestSignature(hw, 0)), "fetch_resp": In(ResponseSignature(hw, 0)),
            "dma": Out(RequestSignature(hw, dma_tag_layout(hw).size)),
            "dma_resp": In(ResponseSignature(hw, dma_tag_layout(hw).size)),
            "finished": Out(1), "error": Out(1), "error_code": Out(ErrorCode), "error_pc": Out(32),
            "pc": Out(32), "progress": Out(1),
            "barrier_arrive": Out(1), "barrier_mask": Out(hw.cores), "barrier_go": In(1),
            "counters": Out(COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw

        # The PPU's ADD-only half has a gate of its own (ppu_add_gated; with one clock, the PPU's).
        dma, pe = DmaUnit(hw), PeArray(hw)
        ppu = Ppu(hw, add_domain="ppu_add_gated" if self.clock_gating else "ppu_gated")
        units = dict(zip(UNITS, (dma, pe, ppu), strict=True))
        if self.clock_gating:
            # The clock gates' enables are sampled on the falling edge (see _clock_gate).
            m.domains.gate_latch = ClockDomain(clk_edge="neg", reset_less=True, local=True)
            m.d.comb += ClockSignal("gate_latch").eq(ClockSignal("sync"))
        if self.clock_gating:
            self._clock_gate(m, "ppu_add", ppu.add_awake)
        for kind, unit in units.items():
            name = kind.name.lower()
            if self.clock_gating:
                m.submodules[name] = DomainRenamer(self._clock_gate(m, name, unit.awake))(unit)
            else:
                # The domain names the scratchpad ports use, all on the core's clock.
                m.submodules[name] = DomainRenamer(f"{name}_gated")(unit)
                m.domains += ClockDomain(f"{name}_gated", local=True)
                m.d.comb += [ClockSignal(f"{name}_gated").eq(ClockSignal("sync")),
                             ResetSignal(f"{name}_gated").eq(ResetSignal("sync"))]
        self._scratchpads(m, dma, pe, ppu)
        wiring.connect(m, wiring.flipped(self.dma), dma.req)
        wiring.connect(m, wiring.flipped(self.dma_resp), dma.resp)

        m.submodules.fetch = fetch = InstructionFetch(hw)
        m.submodules.dispatch = dispatch = Dispatcher(hw, self.index, {u: units[u].PAYLOAD for u in UNITS})
        m.submodules.semaphores = semaphores = Semaphores(len(UNITS))
        wiring.connect(m, wiring.flipped(self.fetch), fetch.fetch)
        wiring.connect(m, wiring.flipped(self.fetch_resp), fetch.fetch_resp)
        wiring.connect(m, fetch.lines, dispatch.lines)
        m.d.comb += [
            fetch.start.eq(self.start), fetch.prog_addr.eq(self.prog_addr), fetch.halt.eq(self.halt),
            fetch.running.eq(dispatch.running), fetch.finished.eq(dispatch.finished),
            dispatch.fetch_drained.eq(fetch.drained),
            dispatch.start.eq(self.start), dispatch.enable.eq(self.enable), dispatch.halt.eq(self.halt),
            self.finished.eq(dispatch.finished), self.pc.eq(dispatch.pc),
            self.barrier_arrive.eq(dispatch.barrier_arrive), self.barrier_mask.eq(dispatch.barrier_mask),
            dispatch.barrier_go.eq(self.barrier_go),
        ]

        # A queue per unit between the dispatcher and the unit; the head's wait mask goes to the
        # semaphore block, the rest to the unit (so the FIFO's read stream is split by hand).
        queues = []
        for k, (kind, unit) in enumerate(units.items()):
            queue = fifo.SyncFIFO(width=queue_slot(unit.PAYLOAD).size, depth=hw.queue_depth)
            m.submodules[f"{kind.name.lower()}_queue"] = queue
            queues.append(queue)
            wiring.connect(m, dispatch.queue(kind), queue.w_stream)
            head = queue.r_stream
            slot = queue_slot(unit.PAYLOAD)(head.payload)
            client = semaphores.client(k)
            m.d.comb += [
                unit.queue.valid.eq(head.valid), unit.queue.payload.eq(slot.entry),
                head.ready.eq(unit.queue.ready),
                client.head.eq(head.valid), client.wait.eq(slot.wait), client.take.eq(head.valid & head.ready),
                client.can_start.eq(unit.can_start), unit.sem_ok.eq(client.sem_ok),
                client.done.eq(unit.done), client.done_signal.eq(unit.done_signal),
                client.done_pc.eq(unit.done_pc),
                unit.halt.eq(self.halt),
            ]
        m.d.comb += dispatch.idle.eq(Cat(~q.r_rdy for q in queues).all()
                                     & ~Cat(u.busy for u in units.values()).any())

        self._errors(m, dispatch, semaphores, list(units.values()))
        m.d.comb += self.progress.eq(dispatch.dispatched | fetch.progress
                                     | Cat(u.progress for u in units.values()).any())
        increments = {
            "instructions": dispatch.dispatched, "dma_busy": dma.busy, "dma_stall": dma.stall,
            "pe_busy": pe.busy, "ppu_busy": ppu.busy, "sem_wait": semaphores.stalled,
            "barrier_wait": dispatch.barrier_waiting,
        }
        counting = dispatch.running & ~dispatch.finished & ~self.halt
        for name in COUNTER_NAMES:
            counter = self.counters[name]
            with m.If(self.start):
                m.d.sync += counter.eq(0)
            with m.Elif(counting & increments[name]):
                m.d.sync += counter.eq(counter + 1)
        return m

    @staticmethod
    def _clock_gate(m, name, awake):
        """A clock domain ``<name>_gated`` whose clock ticks only at the edges after the cycles
        ``awake`` is high (a unit's ``awake``, see :mod:`dlfusion.hw.unit`); returns its name.

        A clock gate as silicon has it: the enable is sampled while the clock is low (here by a
        flip-flop on the falling edge, standing for the gate's latch), so the gated clock has no
        glitch and rises exactly with the core's clock. The cycles do not change: a unit that is not
        awake would have kept its state anyway. Verilator evaluates a domain's logic only when its
        clock ticks, so an idle unit costs no simulation time.
        """
        domain = f"{name}_gated"
        m.domains += ClockDomain(domain, local=True)
        enable = Signal(name=f"{name}_clock_enable", init=1)
        m.d.gate_latch += enable.eq(awake | ResetSignal("sync"))
        m.d.comb += [ClockSignal(domain).eq(ClockSignal("sync") & enable),
                     ResetSignal(domain).eq(ResetSignal("sync"))]
        return domain

    def _errors(self, m, dispatch, semaphores, units):
        """The first error of the core's own blocks, held; a unit's error shows through until then."""
        error = Signal()
        error_code = Signal(ErrorCode)
        error_pc = Signal(32)
        with m.If(~error):
            with m.If(dispatch.error):
                m.d.sync += [error.eq(1), error_pc.eq(dispatch.pc), error_code.eq(dispatch.error_code)]
            with m.Elif(semaphores.overflow):
                m.d.sync += [error.eq(1), error_pc.eq(semaphores.overflow_pc),
                             error_code.eq(ErrorCode.SEM_OVERFLOW)]
        unit_error = Cat(u.error for u in units).any()
        m.d.comb += [self.error.eq(error | unit_error), self.error_code.eq(error_code),
                     self.error_pc.eq(error_pc)]
        with m.If(~error):
            for u in reversed(units):
                with m.If(u.error):
                    m.d.comb += [self.error_code.eq(u.error_code), self.error_pc.eq(u.error_pc)]

    def _scratchpads(self, m, dma, pe, ppu):
        """The act (banked on a sparse array), weight, accumulator and parameter scratchpads, the
        lookup-table store, the metadata store (sparse array), and the units' ports on them."""
        hw = self.hw
        lanes = hw.lanes
        line_bits = 8 * lanes
        banked = hw.sparse_window > 1
        if not banked:
            m.submodules.act = act = memory.Memory(shape=line_bits, depth=hw.act_lines, init=[])
        m.submodules.weight = weight = memory.Memory(shape=line_bits * lanes, depth=hw.weight_blocks, init=[])
        m.submodules.acc = acc = memory.Memory(shape=32 * lanes, depth=hw.acc_entries, init=[])
        m.submodules.param = param = memory.Memory(shape=32 * lanes, depth=hw.param_entries, init=[])

        # The ports of each memory in the order the design has always created them (the order of
        # write ports is their priority); the units' ports joined through their signatures.
        # A unit's read ports (and the PE's accumulator write port) are clocked with the unit (see
        # _clock_gate): read data then changes only when the unit's clock ticks, so the logic behind
        # it is evaluated only then. The act write ports stay on the core's clock, in one domain,
        # so their priority stays defined.
        line = dma.line_write
        if banked:
            self._act_banks(m, dma, pe, ppu)
        else:
            act_dma_w = act.write_port()
            act_ppu_w = act.write_port()
            wiring.connect(m, ppu.act_write, act_ppu_w)
            wiring.connect(m, pe.act_read, act.read_port(domain="pe_gated"))
            wiring.connect(m, ppu.a_read, act.read_port(domain=ppu.add_domain))
            wiring.connect(m, ppu.b_read, act.read_port(domain="ppu_gated"))
            wiring.connect(m, dma.act_read, act.read_port(domain="dma_gated"))
        weight_w = weight.write_port(granularity=line_bits)
        wiring.connect(m, pe.weight_read, weight.read_port(domain="pe_gated"))
        acc_w = acc.write_port(domain="pe_gated")
        wiring.connect(m, pe.acc_write, acc_w)
        wiring.connect(m, pe.acc_read, acc.read_port(domain="pe_gated", transparent_for=(acc_w,)))
        wiring.connect(m, ppu.acc_read, acc.read_port(domain="ppu_gated"))
        param_w = param.write_port(granularity=line_bits)
        wiring.connect(m, ppu.param_read, param.read_port(domain="ppu_gated"))

        # DMA line writes decoded to the three DMA-writable scratchpads.
        row_bits = exact_log2(lanes)
        chunk_bits = exact_log2(hw.param_lines_per_entry)
        if not banked:
            m.d.comb += [
                act_dma_w.addr.eq(line.payload.addr), act_dma_w.data.eq(line.payload.data),
                act_dma_w.en.eq(line.valid & (line.payload.buffer == Buffer.ACT)),
            ]
        # (on a sparse array, a line of the metadata store is not one of the weight values)
        weight_line = line.valid & (line.payload.buffer == Buffer.WEIGHT)
        if banked:
            weight_line = weight_line & ~line.payload.meta
        m.d.comb += [
            weight_w.addr.eq(line.payload.addr >> row_bits),
            weight_w.data.eq(Cat([line.payload.data] * lanes)),
            weight_w.en.eq(Mux(weight_line, Const(1, lanes) << line.payload.addr[:row_bits], 0)),
            param_w.addr.eq(line.payload.addr >> chunk_bits),
            param_w.data.eq(Cat([line.payload.data] * hw.param_lines_per_entry)),
            param_w.en.eq(Mux(line.valid & (line.payload.buffer == Buffer.PARAM),
                              Const(1, hw.param_lines_per_entry) << line.payload.addr[:chunk_bits], 0)),
        ]
        if banked:
            self._metadata_store(m, pe, line)
        if hw.lut_tables:
            self._lookup_tables(m, ppu, line)

    def _act_banks(self, m, dma, pe, ppu):
        """The activation scratchpad of a sparse array: ``sparse_window`` banks by line address
        (line ``a`` is row ``a // G`` of bank ``a % G``), each with the ports of the one scratchpad of
        a dense array. A write goes to the bank its address names; a read reads there, and its data
        comes back from the bank the address named when it was read. The PE has a port per bank: the
        lines of a sparse window are in distinct banks (its stride is odd)."""
        hw = self.hw
        banks = hw.sparse_window
        bank_bits = exact_log2(banks)
        memories = []
        for bank in range(banks):
            m.submodules[f"act_bank{bank}"] = bank_memory = memory.Memory(
                shape=8 * hw.lanes, depth=hw.act_lines // banks, init=[])
            memories.append(bank_memory)

        def write(addr, data, en):
            for bank, bank_memory in enumerate(memories):
                port = bank_memory.write_port()
                m.d.comb += [port.addr.eq(addr[bank_bits:]), port.data.eq(data),
                             port.en.eq(en & (addr[:bank_bits] == bank))]

        def read(reader, domain, name):
            ports = [bank_memory.read_port(domain=domain) for bank_memory in memories]
            bank_read = Signal(bank_bits, name=f"{name}_bank")
            with m.If(reader.en):
                m.d[domain] += bank_read.eq(reader.addr[:bank_bits])
            for bank, port in enumerate(ports):
                m.d.comb += [port.addr.eq(reader.addr[bank_bits:]),
                             port.en.eq(reader.en & (reader.addr[:bank_bits] == bank))]
            m.d.comb += reader.data.eq(Array(port.data for port in ports)[bank_read])

        # Write ports in the order of their priority, as on the one scratchpad.
        line = dma.line_write
        write(line.payload.addr, line.payload.data, line.valid & (line.payload.buffer == Buffer.ACT))
        write(ppu.act_write.addr, ppu.act_write.data, ppu.act_write.en)
        for bank, bank_memory in enumerate(memories):
            wiring.connect(m, pe.act_read[bank], bank_memory.read_port(domain="pe_gated"))
        read(ppu.a_read, ppu.add_domain, "ppu_a")
        read(ppu.b_read, "ppu_gated", "ppu_b")
        read(dma.act_read, "dma_gated", "dma_act")

    def _metadata_store(self, m, pe, line):
        """The metadata store of a sparse array: an entry of ``L x L`` 2-bit indices per weight block,
        written by the DMA's line writes of a LOAD with ``meta`` (``L/4`` lines an entry, the first in
        the low bits), read by the PE beside the weight block."""
        hw = self.hw
        line_bits = 8 * hw.line_bytes
        per_entry = hw.meta_lines_per_block
        entry_bits = exact_log2(per_entry)
        m.submodules.meta = meta = memory.Memory(shape=line_bits * per_entry, depth=hw.weight_blocks, init=[])
        meta_w = meta.write_port(granularity=line_bits)
        meta_line = line.valid & (line.payload.buffer == Buffer.WEIGHT) & line.payload.meta
        m.d.comb += [
            meta_w.addr.eq(line.payload.addr >> entry_bits),
            meta_w.data.eq(Cat([line.payload.data] * per_entry)),
            meta_w.en.eq(Mux(meta_line, Const(1, per_entry) << line.payload.addr[:entry_bits], 0)),
        ]
        wiring.connect(m, pe.meta_read, meta.read_port(domain="pe_gated"))

    def _lookup_tables(self, m, ppu, line):
        """The lookup-table store: a copy per PPU lane (each lane looks up a byte per cycle), all
        written together by the DMA's line writes to buffer lut, each read by its lane."""
        hw = self.hw
        for lane in range(hw.lanes):
            copy = memory.Memory(shape=8 * hw.lanes, depth=hw.lut_lines, init=[])
            m.submodules[f"lut{lane}"] = copy
            write = copy.write_port()
            m.d.comb += [write.addr.eq(line.payload.addr), write.data.eq(line.payload.data),
                         write.en.eq(line.valid & (line.payload.buffer == Buffer.LUT))]
            wiring.connect(m, ppu.lut_read[lane], copy.read_port(domain="ppu_gated"))
