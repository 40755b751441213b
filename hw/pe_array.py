"""The PE array: an ``L x L`` grid of int8 multipliers with int32 accumulation.

One loop iteration per cycle, in a three-stage pipeline:

* issue: generate the act / weight / accumulator addresses of the iteration,
  check them, and start the three scratchpad reads;
* multiply: ``x[r] - zp`` (9-bit signed) times the int8 weight block, reduced
  over the rows (MATMUL: ``L*L`` MACs), or one row (DEPTHWISE), or passed
  through (MAX);
* accumulate: add to (or max with, or overwrite) the old accumulator and write
  it back. The old value read at issue misses only the write of the previous
  cycle, which is forwarded, so iterations that hit the same accumulator back
  to back (fully connected layers, global pooling) are exact.

The next instruction starts issuing in the cycle after the last iteration of
the previous one, so a stream of instructions keeps the array busy.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In
from amaranth.utils import exact_log2

from .config import HwConfig
from .isa import MATMUL_PAYLOAD, ErrorCode, MatmulMode, Opcode
from .unit import unit_members

__all__ = ["PeArray"]


def _tree_sum(values):
    values = list(values)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


class PeArray(wiring.Component):
    """The compute unit of one core.

    Members
    -------
    act_read : In(ReadPort.Signature), an activation scratchpad read port.
    weight_read : In(ReadPort.Signature), a weight scratchpad read port (a whole ``L x L`` block).
    acc_read : In(ReadPort.Signature), an accumulator read port (transparent for ``acc_write``).
    acc_write : In(WritePort.Signature), the accumulator write port.

    The issue stage computes addresses wider than the scratchpads' and checks them against the
    depth before it reads or writes.
    """

    #: The unit's view of the instruction payload (MATMUL; SYNC reads it as an empty loop).
    PAYLOAD = MATMUL_PAYLOAD

    def __init__(self, hw: HwConfig):
        self.hw = hw
        lanes = hw.lanes
        act_bits, w_bits, acc_bits = (exact_log2(depth) for depth in
                                      (hw.act_lines, hw.weight_blocks, hw.acc_entries))
        super().__init__({
            **unit_members(self.PAYLOAD),
            "act_read": In(memory.ReadPort.Signature(addr_width=act_bits, shape=8 * lanes)),
            "weight_read": In(memory.ReadPort.Signature(addr_width=w_bits, shape=8 * lanes * lanes)),
            "acc_read": In(memory.ReadPort.Signature(addr_width=acc_bits, shape=32 * lanes)),
            "acc_write": In(memory.WritePort.Signature(addr_width=acc_bits, shape=32 * lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        lanes = hw.lanes
        head = self.queue.payload

        # -- issue stage ---------------------------------------------------------------------
        active = Signal()
        instr = Signal(MATMUL_PAYLOAD)
        is_sync = Signal()
        signal_mask = Signal(8)
        pc = Signal(32)
        i0, i1 = Signal(12), Signal(12)
        act, act_row = Signal(32), Signal(32)
        weight, weight_row = Signal(32), Signal(32)
        acc, acc_row = Signal(32), Signal(32)
        stopped = Signal()

        last0 = i0 == instr.n0 - 1
        last1 = i1 == instr.n1 - 1
        last = Signal()
        m.d.comb += last.eq(is_sync | (last0 & last1))

        bad = Signal()
        m.d.comb += bad.eq(~is_sync & ((act >= hw.act_lines) | (weight >= hw.weight_blocks)
                                       | (acc >= hw.acc_entries)
                                       | ((instr.mode == MatmulMode.DEPTHWISE) & (instr.w_row >= lanes))))
        issue = Signal()
        m.d.comb += issue.eq(active & ~bad & ~self.halt & ~stopped)
        with m.If(active & bad & ~self.halt & ~stopped):
            m.d.sync += [self.error.eq(1), self.error_code.eq(ErrorCode.SRAM_RANGE), self.error_pc.eq(pc),
                         stopped.eq(1)]

        m.d.comb += [
            self.act_read.addr.eq(act), self.act_read.en.eq(issue & ~is_sync),
            self.weight_read.addr.eq(weight), self.weight_read.en.eq(issue & ~is_sync),
            self.acc_read.addr.eq(acc), self.acc_read.en.eq(issue & ~is_sync),
        ]

        with m.If(issue):
            with m.If(last):
                m.d.sync += active.eq(0)
            with m.Elif(~last0):
                m.d.sync += [i0.eq(i0 + 1), act.eq(act + instr.act_s0), weight.eq(weight + instr.w_s0),
                             acc.eq(acc + instr.acc_s0)]
            with m.Else():
                m.d.sync += [
                    i0.eq(0), i1.eq(i1 + 1),
                    act_row.eq(act_row + instr.act_s1), act.eq(act_row + instr.act_s1),
                    weight_row.eq(weight_row + instr.w_s1), weight.eq(weight_row + instr.w_s1),
                    acc_row.eq(acc_row + instr.acc_s1), acc.eq(acc_row + instr.acc_s1),
                ]

        free = Signal()
        m.d.comb += free.eq(~stopped & ~self.halt & (~active | (issue & last)))
        m.d.comb += [self.can_start.eq(free), self.queue.ready.eq(free & self.sem_ok)]
        with m.If(self.queue.valid & self.queue.ready):
            payload = head.payload
            empty = (payload.n0 == 0) | (payload.n1 == 0)
            sync = head.opcode == Opcode.SYNC
            # SYNC and empty instructions pass one no-op through the pipeline, so that they
            # complete (and signal) after every earlier instruction of this unit.
            m.d.sync += [
                active.eq(1), is_sync.eq(sync | empty),
                instr.eq(payload), signal_mask.eq(head.signal), pc.eq(head.pc),
                i0.eq(0), i1.eq(0),
                act.eq(payload.act_addr), act_row.eq(payload.act_addr),
                weight.eq(payload.w_addr), weight_row.eq(payload.w_addr),
                acc.eq(payload.acc_addr), acc_row.eq(payload.acc_addr),
            ]

        # -- multiply stage ------------------------------------------------------------------
        # The control of an iteration travels beside its data; the input format (sign, zero
        # point) and the depthwise weight row are only needed by the multiply stage.
        control = data.StructLayout({
            "valid": 1, "write": 1, "last": 1, "mode": MatmulMode, "accumulate": 1,
            "acc": 16, "signal": 8, "pc": 32,
        })
        multiply = data.StructLayout({"control": control, "in_signed": 1, "in_zp": 8, "w_row": 5})
        stage1 = Signal(multiply)
        control1 = stage1.control
        m.d.sync += [
            control1.valid.eq(issue), control1.write.eq(~is_sync), control1.last.eq(last),
            control1.mode.eq(instr.mode), control1.accumulate.eq(instr.accumulate),
            control1.acc.eq(acc), control1.signal.eq(signal_mask), control1.pc.eq(pc),
            stage1.in_signed.eq(instr.in_signed), stage1.in_zp.eq(instr.in_zp), stage1.w_row.eq(instr.w_row),
        ]

        def widen(byte, is_signed):
            return Mux(is_signed, byte.as_signed(), Cat(byte, 0).as_signed())

        zero_point = widen(stage1.in_zp, stage1.in_signed)
        x = []
        for r in range(lanes):
            value = Signal(signed(10), name=f"x{r}")
            m.d.comb += value.eq(widen(self.act_read.data[8 * r:8 * r + 8], stage1.in_signed) - zero_point)
            x.append(value)
        w = [[self.weight_read.data[8 * (r * lanes + c):8 * (r * lanes + c) + 8].as_signed() for c in range(lanes)]
             for r in range(lanes)]
        selected_row = Signal(8 * lanes)
        with m.Switch(stage1.w_row):
            for r in range(lanes):
                with m.Case(r):
                    m.d.comb += selected_row.eq(self.weight_read.data[8 * lanes * r:8 * lanes * (r + 1)])

        product = [Signal(signed(32), name=f"v{c}") for c in range(lanes)]
        for c in range(lanes):
            with m.Switch(control1.mode):
                with m.Case(MatmulMode.MATMUL):
                    m.d.comb += product[c].eq(_tree_sum(x[r] * w[r][c] for r in range(lanes)))
                with m.Case(MatmulMode.DEPTHWISE):
                    m.d.comb += product[c].eq(x[c] * selected_row[8 * c:8 * c + 8].as_signed())
                with m.Default():
                    m.d.comb += product[c].eq(x[c])

        stage2 = Signal(control)
        stage2_values = Signal(32 * lanes)
        stage2_old = Signal(32 * lanes)
        m.d.sync += [stage2.eq(control1), stage2_values.eq(Cat(product)), stage2_old.eq(self.acc_read.data)]

        # -- accumulate stage ----------------------------------------------------------------
        forward_valid = Signal()
        forward_addr = Signal(16)
        forward_data = Signal(32 * lanes)
        old = Signal(32 * lanes)
        m.d.comb += old.eq(Mux(forward_valid & (forward_addr == stage2.acc), forward_data, stage2_old))
        result = []
        for c in range(lanes):
            v = stage2_values[32 * c:32 * c + 32].as_signed()
            o = old[32 * c:32 * c + 32].as_signed()
            lane = Signal(32, name=f"acc_new{c}")
            with m.If(~stage2.accumulate):
                m.d.comb += lane.eq(v)
            with m.Elif(stage2.mode == MatmulMode.MAX):
                m.d.comb += lane.eq(Mux(v > o, v, o))
            with m.Else():
                m.d.comb += lane.eq(v + o)
            result.append(lane)
        write = stage2.valid & stage2.write
        m.d.comb += [self.acc_write.addr.eq(stage2.acc), self.acc_write.en.eq(write),
                     self.acc_write.data.eq(Cat(result))]
        m.d.sync += [forward_valid.eq(write), forward_addr.eq(stage2.acc), forward_data.eq(Cat(result))]
        with m.If(stage2.valid & stage2.last):
            m.d.comb += [self.done.eq(1), self.done_signal.eq(stage2.signal), self.done_pc.eq(stage2.pc)]

        m.d.comb += [
            self.busy.eq(active | control1.valid | stage2.valid),
            self.progress.eq(issue | stage2.valid),
        ]
        return m
