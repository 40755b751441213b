"""One accelerator core: fetch, dispatch, semaphores, scratchpads and three units.

The fetch unit prefetches instruction lines through the shared DRAM port into
a line FIFO and assembles 256-bit instructions. The dispatcher decodes each
instruction, rejects bad opcodes and reserved field values, and appends it to
the queue of its unit (DMA, PE, PPU), stalling while that queue is full. END
and BARRIER wait for every queue and unit to drain. The semaphore block lets
at most one unit acquire per cycle (fixed priority DMA, PE, PPU) and applies
all completions of the cycle.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .config import HwConfig
from .dma import DmaUnit
from .isa import INSTRUCTION, NUM_SEMAPHORES, SEMAPHORE_MAX, Buffer, ErrorCode, Opcode, Unit
from .memsys import RequestSignature, ResponseSignature
from .pe_array import PeArray
from .ppu import Ppu
from .unit import queue_entry

__all__ = ["Core", "COUNTER_NAMES", "COUNTER_BITS"]

COUNTER_NAMES = ("instructions", "dma_busy", "dma_stall", "pe_busy", "ppu_busy", "sem_wait", "barrier_wait")
COUNTER_BITS = 48


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
    error, error_code, error_pc : the first error of this core.
    pc : Out(32), the instruction index the dispatcher holds.
    progress : Out(1), something moved this cycle (for the watchdog).
    barrier_arrive, barrier_mask, barrier_go : the barrier handshake (``barrier_mask`` has a
        bit per core; an instruction naming a core that does not exist is a BAD_FIELD error).
    counters : Out(48 * 7), in ``COUNTER_NAMES`` order.
    """

    def __init__(self, hw: HwConfig, index: int):
        self.hw = hw
        self.index = index
        super().__init__({
            "start": In(1), "enable": In(1), "prog_addr": In(32), "halt": In(1),
            "fetch": Out(RequestSignature(hw, 0)), "fetch_resp": In(ResponseSignature(hw, 0)),
            "dma": Out(RequestSignature(hw)), "dma_resp": In(ResponseSignature(hw)),
            "finished": Out(1), "error": Out(1), "error_code": Out(4), "error_pc": Out(32),
            "pc": Out(32), "progress": Out(1),
            "barrier_arrive": Out(1), "barrier_mask": Out(hw.cores), "barrier_go": In(1),
            "counters": Out(COUNTER_BITS * len(COUNTER_NAMES)),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        lanes = hw.lanes
        line_bits = 8 * lanes
        running = Signal()
        finished = Signal()

        # -- scratchpads ---------------------------------------------------------------------
        m.submodules.act = act = memory.Memory(shape=line_bits, depth=hw.act_lines, init=[])
        m.submodules.weight = weight = memory.Memory(shape=line_bits * lanes, depth=hw.weight_blocks, init=[])
        m.submodules.acc = acc = memory.Memory(shape=32 * lanes, depth=hw.acc_entries, init=[])
        m.submodules.param = param = memory.Memory(shape=32 * lanes, depth=hw.param_entries, init=[])

        m.submodules.dma = dma = DmaUnit(hw)
        m.submodules.pe = pe = PeArray(hw)
        m.submodules.ppu = ppu = Ppu(hw)
        units = [dma, pe, ppu]

        act_dma_w = act.write_port()
        act_ppu_w = act.write_port()
        act_pe_r = act.read_port()
        act_ppu_a = act.read_port()
        act_ppu_b = act.read_port()
        act_dma_r = act.read_port()
        weight_w = weight.write_port(granularity=line_bits)
        weight_r = weight.read_port()
        acc_w = acc.write_port()
        acc_pe_r = acc.read_port(transparent_for=(acc_w,))
        acc_ppu_r = acc.read_port()
        param_w = param.write_port(granularity=line_bits)
        param_r = param.read_port()

        # DMA line writes decoded to the three DMA-writable scratchpads.
        row_bits = exact_log2(lanes)
        chunk_bits = exact_log2(hw.param_lines_per_entry)
        m.d.comb += [
            act_dma_w.addr.eq(dma.line_addr), act_dma_w.data.eq(dma.line_data),
            act_dma_w.en.eq(dma.line_we & (dma.line_buffer == Buffer.ACT)),
            weight_w.addr.eq(dma.line_addr >> row_bits),
            weight_w.data.eq(Cat([dma.line_data] * lanes)),
            weight_w.en.eq(Mux(dma.line_we & (dma.line_buffer == Buffer.WEIGHT),
                               Const(1, lanes) << dma.line_addr[:row_bits], 0)),
            param_w.addr.eq(dma.line_addr >> chunk_bits),
            param_w.data.eq(Cat([dma.line_data] * hw.param_lines_per_entry)),
            param_w.en.eq(Mux(dma.line_we & (dma.line_buffer == Buffer.PARAM),
                              Const(1, hw.param_lines_per_entry) << dma.line_addr[:chunk_bits], 0)),
            act_dma_r.addr.eq(dma.act_raddr), act_dma_r.en.eq(dma.act_ren), dma.act_rdata.eq(act_dma_r.data),
            act_pe_r.addr.eq(pe.act_raddr), act_pe_r.en.eq(pe.act_ren), pe.act_rdata.eq(act_pe_r.data),
            weight_r.addr.eq(pe.w_raddr), weight_r.en.eq(pe.w_ren), pe.w_rdata.eq(weight_r.data),
            acc_pe_r.addr.eq(pe.acc_raddr), acc_pe_r.en.eq(pe.acc_ren), pe.acc_rdata.eq(acc_pe_r.data),
            acc_w.addr.eq(pe.acc_waddr), acc_w.en.eq(pe.acc_we), acc_w.data.eq(pe.acc_wdata),
            acc_ppu_r.addr.eq(ppu.acc_raddr), acc_ppu_r.en.eq(ppu.acc_ren), ppu.acc_rdata.eq(acc_ppu_r.data),
            act_ppu_a.addr.eq(ppu.a_raddr), act_ppu_a.en.eq(ppu.a_ren), ppu.a_rdata.eq(act_ppu_a.data),
            act_ppu_b.addr.eq(ppu.b_raddr), act_ppu_b.en.eq(ppu.b_ren), ppu.b_rdata.eq(act_ppu_b.data),
            param_r.addr.eq(ppu.param_raddr), param_r.en.eq(ppu.param_ren), ppu.param_rdata.eq(param_r.data),
            act_ppu_w.addr.eq(ppu.act_waddr), act_ppu_w.en.eq(ppu.act_we), act_ppu_w.data.eq(ppu.act_wdata),
        ]
        wiring.connect(m, wiring.flipped(self.dma), dma.req)
        wiring.connect(m, wiring.flipped(self.dma_resp), dma.resp)

        # -- fetch ---------------------------------------------------------------------------
        instr_lines = hw.instr_lines
        m.submodules.fetch_fifo = lines = fifo.SyncFIFO(width=line_bits, depth=hw.fetch_lines)
        fetch_addr = Signal(33)
        outstanding = Signal(range(hw.fetch_lines + 1))
        fetching = Signal()
        requested = self.fetch.valid & self.fetch.ready
        m.d.comb += [
            self.fetch.valid.eq(fetching & ~self.halt & (fetch_addr < hw.dram_lines)
                                & (outstanding + lines.level < hw.fetch_lines)),
            self.fetch.payload.addr.eq(fetch_addr),
            self.fetch.payload.write.eq(0),
            lines.w_data.eq(self.fetch_resp.payload.data),
            lines.w_en.eq(self.fetch_resp.valid),
        ]
        with m.If(requested):
            m.d.sync += fetch_addr.eq(fetch_addr + 1)
        m.d.sync += outstanding.eq(outstanding + requested - self.fetch_resp.valid)

        word = Signal(INSTRUCTION.size)
        have = Signal(range(instr_lines + 1))
        consumed = Signal()
        m.d.comb += lines.r_en.eq((have < instr_lines) & running)
        with m.If(consumed):
            m.d.sync += have.eq(0)
        with m.Elif(lines.r_en & lines.r_rdy):
            m.d.sync += [have.eq(have + 1),
                         word.eq(Cat(word[line_bits:], lines.r_data) if instr_lines > 1 else lines.r_data)]
        if line_bits > INSTRUCTION.size:
            raise ValueError("lines wider than an instruction are not supported")

        # -- dispatch ------------------------------------------------------------------------
        instr = INSTRUCTION(word)
        pc = Signal(32)
        m.d.comb += self.pc.eq(pc)
        # A unit's queue holds the head's semaphore wait mask (checked here, see below) and the
        # unit's entry: the header fields, the unit's view of the payload and the pc.
        queues = []
        for index, unit in enumerate(units):
            entry = Signal(queue_entry(unit.PAYLOAD), name=f"entry_{index}")
            queue = fifo.SyncFIFO(width=NUM_SEMAPHORES + len(entry.as_value()), depth=hw.queue_depth)
            m.submodules[f"queue_{index}"] = queue
            queues.append(queue)
            m.d.comb += [
                entry.opcode.eq(instr.opcode), entry.signal.eq(instr.signal),
                entry.payload.eq(instr.payload.as_value()[:unit.PAYLOAD.size]), entry.pc.eq(pc),
                queue.w_data.eq(Cat(instr.wait, entry)),
                unit.queue.valid.eq(queue.r_rdy), unit.queue.payload.eq(queue.r_data[NUM_SEMAPHORES:]),
                queue.r_en.eq(unit.queue.ready), unit.halt.eq(self.halt),
            ]

        idle = Signal()
        m.d.comb += idle.eq(Cat(~q.r_rdy for q in queues).all() & ~Cat(u.busy for u in units).any())

        opcode = instr.opcode
        ready = (have == instr_lines) & running & ~self.halt & ~finished
        target = Signal(range(3))
        dispatchable = Signal()
        bad_opcode = Signal()
        bad_field = Signal()
        with m.Switch(opcode):
            with m.Case(Opcode.LOAD):
                m.d.comb += [target.eq(Unit.DMA), dispatchable.eq(1),
                             bad_field.eq(instr.payload.dma.buffer.as_value() == 3)]
            with m.Case(Opcode.STORE):
                m.d.comb += [target.eq(Unit.DMA), dispatchable.eq(1),
                             bad_field.eq(instr.payload.dma.buffer != Buffer.ACT)]
            with m.Case(Opcode.MATMUL):
                m.d.comb += [target.eq(Unit.PE), dispatchable.eq(1),
                             bad_field.eq(instr.payload.matmul.mode.as_value() == 3)]
            with m.Case(Opcode.REQUANT, Opcode.ADD):
                m.d.comb += [target.eq(Unit.PPU), dispatchable.eq(1)]
            with m.Case(Opcode.SYNC):
                m.d.comb += [target.eq(instr.payload.sync.unit.as_value()), dispatchable.eq(1),
                             bad_field.eq(instr.payload.sync.unit.as_value() == 3)]
            with m.Case(Opcode.BARRIER):
                mask = instr.payload.barrier.core_mask
                m.d.comb += bad_field.eq(~mask[self.index] | (mask >> hw.cores).any())
            with m.Case(Opcode.END):
                pass
            with m.Default():
                m.d.comb += bad_opcode.eq(1)

        dispatched = Signal()
        dispatch_error = Signal()
        barrier_waiting = Signal()
        with m.If(ready & (bad_opcode | bad_field)):
            m.d.comb += dispatch_error.eq(1)
        with m.Elif(ready & dispatchable):
            with m.Switch(target):
                for index, queue in enumerate(queues):
                    with m.Case(index):
                        m.d.comb += [queue.w_en.eq(queue.w_rdy), dispatched.eq(queue.w_rdy)]
        with m.Elif(ready & (opcode == Opcode.END) & idle):
            m.d.comb += dispatched.eq(1)
            m.d.sync += [finished.eq(1), fetching.eq(0)]
        with m.Elif(ready & (opcode == Opcode.BARRIER) & idle):
            m.d.comb += [barrier_waiting.eq(1), self.barrier_arrive.eq(1),
                         # Bits of cores that do not exist are zero here (a BAD_FIELD error otherwise).
                         self.barrier_mask.eq(instr.payload.barrier.core_mask[:hw.cores]),
                         dispatched.eq(self.barrier_go)]
        m.d.comb += consumed.eq(dispatched)
        with m.If(dispatched):
            m.d.sync += pc.eq(pc + 1)

        # FETCH_RANGE: an instruction is needed but nothing more can arrive.
        fetch_exhausted = Signal()
        m.d.comb += fetch_exhausted.eq(running & ~finished & (have < instr_lines) & ~lines.r_rdy
                                       & (outstanding == 0) & (fetch_addr >= hw.dram_lines))

        # -- semaphores ----------------------------------------------------------------------
        semaphores = [Signal(8, name=f"sem{i}") for i in range(NUM_SEMAPHORES)]
        sem_error = Signal()
        sem_error_pc = Signal(32)
        higher_wants = Const(0)
        waiting = []
        for unit, queue in zip(units, queues, strict=True):
            wait = queue.r_data[:NUM_SEMAPHORES]
            available = Cat((~wait[i]) | (semaphores[i] != 0) for i in range(NUM_SEMAPHORES)).all()
            uses = wait.any()
            m.d.comb += unit.sem_ok.eq(available & ~(uses & higher_wants))
            wants = queue.r_rdy & unit.can_start & available & uses
            higher_wants = higher_wants | wants
            waiting.append(queue.r_rdy & unit.can_start & ~unit.sem_ok)
        for i, semaphore in enumerate(semaphores):
            taken = Cat((q.r_rdy & u.queue.ready & q.r_data[i])
                        for u, q in zip(units, queues, strict=True)).any()
            given = [u.done & u.done_signal[i] for u in units]
            total = Signal(range(2 * SEMAPHORE_MAX + 4), name=f"sem{i}_next")
            m.d.comb += total.eq(semaphore - taken + sum(given))
            with m.If(total > SEMAPHORE_MAX):
                m.d.comb += sem_error.eq(1)
                for u in reversed(units):
                    with m.If(u.done & u.done_signal[i]):
                        m.d.comb += sem_error_pc.eq(u.done_pc)
            with m.Else():
                m.d.sync += semaphore.eq(total)

        # -- status --------------------------------------------------------------------------
        with m.If(self.start):
            m.d.sync += [running.eq(1), finished.eq(~self.enable), fetching.eq(self.enable),
                         fetch_addr.eq(self.prog_addr), pc.eq(0)]
        m.d.comb += self.finished.eq(finished)

        error = Signal()
        error_code = Signal(4)
        error_pc = Signal(32)
        with m.If(~error):
            with m.If(dispatch_error):
                m.d.sync += [error.eq(1), error_pc.eq(pc),
                             error_code.eq(Mux(bad_opcode, ErrorCode.BAD_OPCODE, ErrorCode.BAD_FIELD))]
            with m.Elif(fetch_exhausted):
                m.d.sync += [error.eq(1), error_pc.eq(pc), error_code.eq(ErrorCode.FETCH_RANGE)]
            with m.Elif(sem_error):
                m.d.sync += [error.eq(1), error_pc.eq(sem_error_pc), error_code.eq(ErrorCode.SEM_OVERFLOW)]
        unit_error = Cat(u.error for u in units).any()
        m.d.comb += [self.error.eq(error | unit_error), self.error_code.eq(error_code),
                     self.error_pc.eq(error_pc)]
        with m.If(~error):
            for u in reversed(units):
                with m.If(u.error):
                    m.d.comb += [self.error_code.eq(u.error_code), self.error_pc.eq(u.error_pc)]

        m.d.comb += self.progress.eq(dispatched | self.fetch_resp.valid | requested
                                     | Cat(u.progress for u in units).any())

        counting = running & ~finished & ~self.halt
        increments = [dispatched, dma.busy, dma.stall, pe.busy, ppu.busy, Cat(waiting).any(), barrier_waiting]
        for k, increment in enumerate(increments):
            counter = Signal(COUNTER_BITS, name=f"count_{COUNTER_NAMES[k]}")
            with m.If(self.start):
                m.d.sync += counter.eq(0)
            with m.Elif(counting & increment):
                m.d.sync += counter.eq(counter + 1)
            m.d.comb += self.counters[COUNTER_BITS * k:COUNTER_BITS * (k + 1)].eq(counter)
        return m
