"""The post-processing unit: requantization and quantized elementwise add.

Per cycle it turns one vector of ``L`` lanes into one activation line, in a
five-stage pipeline with real binary32 arithmetic:

1. read: accumulators (REQUANT) or two activation lines (ADD);
2. int32 to float32 (REQUANT adds the int32 bias first);
3. first fused multiply-add: ``fma(x, mult, 0)`` or ``fma(b, rb, fixed)``;
4. second fused multiply-add (ADD only): ``fma(a, ra, t)``;
5. round half to even, add the zero point, clamp, write the byte.

An instruction with ``lut`` set (on a HwConfig with lookup tables) goes through
two more stages instead of writing at stage 5:

6. each lane reads its own copy of the table store at line
   ``lut_table * 256/L + y // L``;
7. the lane selects byte ``y % L`` of that line, write the byte.

The extra stages are valid only for a look-up instruction, so an instruction
without one drains and completes exactly when it would without tables.

Per-lane parameters (bias and multiplier, or ``ra, rb, fixed``) are read from
the parameter scratchpad when an instruction starts. The unit drains its
pipeline before the next instruction, so an instruction may read what the
previous one wrote (a residual add after a requantization).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .config import HwConfig
from .fp import FloatToInt, FusedMultiplyAdd, IntToFloat
from .isa import ADD_PAYLOAD, REQUANT_PAYLOAD, ErrorCode, Opcode
from .unit import StridedLoops, unit_members

__all__ = ["Ppu", "PpuLane"]


class Ppu(wiring.Component):
    """The post-processing unit of one core.

    Members
    -------
    acc_read : In(ReadPort.Signature), an accumulator read port (REQUANT).
    a_read, b_read : In(ReadPort.Signature), two activation read ports (ADD).
    param_read : In(ReadPort.Signature), a parameter scratchpad read port.
    act_write : In(WritePort.Signature), an activation write port.
    lut_read : In(ReadPort.Signature).array(L), one read port per lane on that lane's copy of the
        lookup-table store (lines of ``L`` bytes; only with ``hw.lut_tables > 0``).
    add_awake : Out(1), the ADD-only half of the lanes may change state at the next edge.

    ``add_domain`` is the clock domain of that half (the second converter, the second FMA and
    their operand registers; ``a_read`` belongs with it): the core clocks it with a gate on
    ``add_awake``, so a REQUANT never ticks it (operand isolation); ``"sync"`` by default.

    The unit computes addresses wider than the scratchpads' and checks them against the depth
    before it reads or writes.
    """

    #: The unit's view of the instruction payload (REQUANT or ADD; SYNC reads it as an empty loop).
    #: Without lookup tables an instance's ``PAYLOAD`` leaves out ``lut_table``, which it never reads.
    PAYLOAD = data.UnionLayout({"requant": REQUANT_PAYLOAD, "add": ADD_PAYLOAD})

    def __init__(self, hw: HwConfig, *, add_domain: str = "sync"):
        self.hw = hw
        self.add_domain = add_domain
        if not hw.lut_tables:
            # lut_table is the last field of both payloads: the other fields keep their offsets.
            self.PAYLOAD = data.UnionLayout({
                name: data.StructLayout({field: member.shape for field, member in layout if field != "lut_table"})
                for name, layout in (("requant", REQUANT_PAYLOAD), ("add", ADD_PAYLOAD))})
        lanes = hw.lanes
        act_bits, acc_bits, param_bits = (exact_log2(depth) for depth in
                                          (hw.act_lines, hw.acc_entries, hw.param_entries))
        def read(addr_width, shape):
            return In(memory.ReadPort.Signature(addr_width=addr_width, shape=shape))

        super().__init__({
            **unit_members(self.PAYLOAD),
            "add_awake": Out(1),
            "acc_read": read(acc_bits, 32 * lanes),
            "a_read": read(act_bits, 8 * lanes),
            "b_read": read(act_bits, 8 * lanes),
            "param_read": read(param_bits, 32 * lanes),
            "act_write": In(memory.WritePort.Signature(addr_width=act_bits, shape=8 * lanes)),
            **({"lut_read": read(ceil_log2(hw.lut_lines), 8 * lanes).array(lanes)} if hw.lut_tables else {}),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        lanes = hw.lanes
        head = self.queue.payload

        is_add = Signal()
        signal_mask = Signal(8)
        pc = Signal(32)
        # src: the accumulators (REQUANT) or input A (ADD); srcb: input B (ADD only).
        m.submodules.loops = loops = StridedLoops(("src", "srcb", "out"))
        src, srcb, out = loops.src.value, loops.srcb.value, loops.out.value
        param_addr = Signal(12)
        in_signed, out_signed = Signal(), Signal()
        out_zp, clamp_lo, clamp_hi = Signal(8), Signal(8), Signal(8)
        params = [Signal(32 * lanes, name=f"param{k}") for k in range(3)]
        param_step = Signal(range(4))
        sync_op = Signal()
        empty = Signal()            # a loop count is zero
        lut = Signal()              # the output bytes index table lut_table
        lut_table = Signal(REQUANT_PAYLOAD["lut_table"].shape) if hw.lut_tables else None

        def latch_lut(fields):
            return [lut.eq(fields.lut), *([lut_table.eq(fields.lut_table)] if hw.lut_tables else [])]

        last0, last1 = loops.last0, loops.last1

        control = data.StructLayout({"valid": 1, "write": 1, "last": 1, "out": len(self.act_write.addr)})
        # Stages 6 and 7 (the table read and the byte select) exist with lookup tables only.
        stage = [Signal(control, name=f"stage{k}") for k in range(1, 8 if hw.lut_tables else 6)]
        pipeline_busy = Cat(s.valid for s in stage).any()

        def start_loops(fields, **pointers):
            """Start the loops on the counts of ``fields`` and each pointer on the ``<prefix>_addr``,
            ``<prefix>_s0`` and ``<prefix>_s1`` fields its keyword names."""
            m.d.comb += [loops.start.eq(1), loops.n0.eq(fields.n0), loops.n1.eq(fields.n1)]
            m.d.sync += empty.eq((fields.n0 == 0) | (fields.n1 == 0))
            for pointer, prefix in pointers.items():
                port = getattr(loops, pointer)
                m.d.comb += [port.base.eq(getattr(fields, f"{prefix}_addr")),
                             port.s0.eq(getattr(fields, f"{prefix}_s0")), port.s1.eq(getattr(fields, f"{prefix}_s1"))]

        issue = Signal()
        param_raddr = Signal.like(self.param_read.addr)
        param_ren = Signal()
        with m.FSM(name="ppu"):
            with m.State("IDLE"):
                free = ~self.halt & ~pipeline_busy
                m.d.comb += [self.can_start.eq(free), self.queue.ready.eq(free & self.sem_ok)]
                with m.If(self.queue.valid & self.queue.ready):
                    add = head.opcode == Opcode.ADD
                    requant = head.payload.requant
                    addp = head.payload.add
                    m.d.sync += [
                        is_add.eq(add), signal_mask.eq(head.signal), pc.eq(head.pc), param_step.eq(0),
                        sync_op.eq(head.opcode == Opcode.SYNC),
                    ]
                    with m.If(add):
                        m.d.sync += [
                            param_addr.eq(addp.param_addr), in_signed.eq(addp.in_signed),
                            out_signed.eq(addp.out_signed), out_zp.eq(addp.out_zp),
                            clamp_lo.eq(addp.clamp_lo), clamp_hi.eq(addp.clamp_hi),
                            *latch_lut(addp),
                        ]
                        start_loops(addp, src="a", srcb="b", out="out")
                    with m.Else():
                        m.d.sync += [
                            param_addr.eq(requant.param_addr),
                            out_signed.eq(requant.out_signed), out_zp.eq(requant.out_zp),
                            clamp_lo.eq(requant.clamp_lo), clamp_hi.eq(requant.clamp_hi),
                            *latch_lut(requant),
                        ]
                        start_loops(requant, src="acc", out="out")
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += self.busy.eq(1)
                count = Mux(is_add, 3, 2)
                with m.If(self.halt):
                    m.next = "HALT"
                with m.Elif(sync_op | empty):
                    m.next = "DONE"
                with m.Elif((param_addr + count > hw.param_entries) | (lut & ~self._table_exists(lut_table))):
                    m.d.sync += [self.error.eq(1), self.error_code.eq(ErrorCode.SRAM_RANGE),
                                 self.error_pc.eq(pc)]
                    m.next = "HALT"
                with m.Else():
                    m.d.comb += [param_raddr.eq(param_addr + param_step), param_ren.eq(1)]
                    m.d.sync += param_step.eq(param_step + 1)
                    for k in range(3):
                        with m.If(param_step == k + 1):
                            m.d.sync += params[k].eq(self.param_read.data)
                    with m.If(param_step == count):
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                src_depth = Mux(is_add, hw.act_lines, hw.acc_entries)
                bad = (src >= src_depth) | (is_add & (srcb >= hw.act_lines)) | (out >= hw.act_lines)
                with m.If(self.halt):
                    m.next = "HALT"
                with m.Elif(bad):
                    m.d.sync += [self.error.eq(1), self.error_code.eq(ErrorCode.SRAM_RANGE),
                                 self.error_pc.eq(pc)]
                    m.next = "HALT"
                with m.Else():
                    m.d.comb += [issue.eq(1), loops.advance.eq(1)]
                    with m.If(last0 & last1):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.halt):
                    m.next = "HALT"
                with m.Elif(~pipeline_busy):
                    m.next = "IDLE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1), self.done_signal.eq(signal_mask),
                             self.done_pc.eq(pc)]
                m.next = "IDLE"
            with m.State("HALT"):
                m.d.comb += self.busy.eq(1)

        m.d.comb += [
            self.param_read.addr.eq(param_raddr), self.param_read.en.eq(param_ren),
            self.acc_read.addr.eq(src), self.acc_read.en.eq(issue & ~is_add),
            self.a_read.addr.eq(src), self.a_read.en.eq(issue & is_add),
            self.b_read.addr.eq(srcb), self.b_read.en.eq(issue & is_add),
        ]

        # Control travels beside the data; stage k is valid in the cycle that computes stage k.
        m.d.sync += [
            stage[0].valid.eq(issue), stage[0].write.eq(1), stage[0].last.eq(issue & last0 & last1),
            stage[0].out.eq(out),
        ]
        for k in range(1, len(stage)):
            m.d.sync += stage[k].eq(stage[k - 1])
        if hw.lut_tables:
            # Only a look-up instruction goes on from stage 5 (and only then waits for stages 6, 7).
            m.d.sync += stage[5].valid.eq(stage[4].valid & lut)

        out_bytes = []
        for lane in range(lanes):
            word = slice(32 * lane, 32 * lane + 32)
            byte = slice(8 * lane, 8 * lane + 8)
            datapath = PpuLane(add_domain=self.add_domain)
            m.submodules[f"lane{lane}"] = datapath
            m.d.comb += [
                datapath.acc.eq(self.acc_read.data[word]), datapath.a.eq(self.a_read.data[byte]),
                datapath.b.eq(self.b_read.data[byte]),
                datapath.param0.eq(params[0][word]), datapath.param1.eq(params[1][word]),
                datapath.param2.eq(params[2][word]),
                datapath.is_add.eq(is_add), datapath.in_signed.eq(in_signed),
                datapath.out_signed.eq(out_signed), datapath.out_zp.eq(out_zp),
                datapath.clamp_lo.eq(clamp_lo), datapath.clamp_hi.eq(clamp_hi),
            ]
            out_bytes.append(datapath.y)

        write_stage = Signal(control)
        write_data = Signal.like(self.act_write.data)
        if hw.lut_tables:
            looked_up = self._look_up(m, out_bytes, lut_table, read=stage[4].valid & lut)
            m.d.comb += [write_stage.eq(Mux(lut, stage[6], stage[4])),
                         write_data.eq(Mux(lut, Cat(looked_up), Cat(out_bytes)))]
        else:
            m.d.comb += [write_stage.eq(stage[4]), write_data.eq(Cat(out_bytes))]
        m.d.comb += [
            self.act_write.addr.eq(write_stage.out), self.act_write.en.eq(write_stage.valid & write_stage.write),
            self.act_write.data.eq(write_data),
        ]
        with m.If(write_stage.valid & write_stage.last):
            m.d.comb += [self.done.eq(1), self.done_signal.eq(signal_mask), self.done_pc.eq(pc)]
        m.d.comb += [
            self.progress.eq(issue | pipeline_busy | self.done),
            # IDLE with an empty pipeline, only an instruction arriving changes what is observed.
            self.awake.eq(self.busy | pipeline_busy | self.queue.valid),
            # The ADD-only half of the lanes works only while an ADD executes or drains.
            self.add_awake.eq(is_add & (self.busy | pipeline_busy)),
        ]
        return m

    def _table_exists(self, lut_table):
        """Whether ``lut_table`` names a configured table (spelt out so that no comparison is constant)."""
        tables = self.hw.lut_tables
        if tables in (0, 1 << REQUANT_PAYLOAD["lut_table"].width):
            return Const(tables > 0)    # none, or every value of the field
        return lut_table < tables

    def _look_up(self, m, out_bytes, lut_table, *, read):
        """Stages 6 and 7: each lane's byte ``y`` looked up in table ``lut_table`` of its own copy of
        the table store (read while ``read``); returns the looked-up bytes, one per lane, at stage 7."""
        hw = self.hw
        byte_bits = exact_log2(hw.lanes)
        looked_up = []
        for lane, y in enumerate(out_bytes):
            port = self.lut_read[lane]
            # Table t, entry i: byte i % L of line t * 256/L + i // L.
            m.d.comb += [port.addr.eq(Cat(y[byte_bits:], lut_table)), port.en.eq(read)]
            byte_select = Signal(byte_bits, name=f"lut_byte{lane}")
            value = Signal(8, name=f"lut_value{lane}")
            m.d.sync += [byte_select.eq(y[:byte_bits]), value.eq(port.data.word_select(byte_select, 8))]
            looked_up.append(value)
        return looked_up


def _widen(byte, is_signed):
    """An int8 (``is_signed``) or uint8 byte as a 9-bit signed value."""
    return Mux(is_signed, byte.as_signed(), Cat(byte, 0).as_signed())


class PpuLane(wiring.Component):
    """One lane of the PPU datapath: four pipeline stages from scratchpad data to an output byte.

    1. int32 to float32: ``acc + param0`` (REQUANT: the bias) or ``b`` (ADD), and ``a``;
    2. ``t = fma(x, param1, 0)`` (REQUANT: the multiplier) or ``fma(b, param1, param2)``
       (ADD: ``rb``, ``fixed``);
    3. ``r = t`` or ``fma(a, param0, t)`` (ADD: ``ra``);
    4. round half to even, add the zero point, clamp: the byte ``y``.

    The inputs of stage 1 are those of the cycle after the read; the instruction fields
    (``is_add``, signedness, zero point, clamps) and the parameters hold during an instruction.
    """

    def __init__(self, *, add_domain: str = "sync"):
        self.add_domain = add_domain
        super().__init__()

    acc: In(32)
    a: In(8)
    b: In(8)
    param0: In(32)
    param1: In(32)
    param2: In(32)
    is_add: In(1)
    in_signed: In(1)
    out_signed: In(1)
    out_zp: In(8)
    clamp_lo: In(8)
    clamp_hi: In(8)
    y: Out(8)

    def elaborate(self, platform):
        m = Module()
        is_add = self.is_add
        # stage 1 (data from the scratchpads): to float
        m.submodules.to_float_x = to_float_x = IntToFloat(32)
        m.submodules.to_float_a = to_float_a = IntToFloat(32)
        acc_plus_bias = Signal(signed(32))
        m.d.comb += [
            acc_plus_bias.eq(self.acc.as_signed() + self.param0.as_signed()),
            to_float_x.value.eq(Mux(is_add, _widen(self.b, self.in_signed), acc_plus_bias)),
            to_float_a.value.eq(_widen(self.a, self.in_signed)),
        ]
        add = m.d[self.add_domain]       # registers of the ADD-only half (see Ppu)
        x_float, a_float = Signal(32), Signal(32)
        m.d.sync += x_float.eq(to_float_x.result)
        add += a_float.eq(to_float_a.result)
        # stage 2: t = fma(x, mult, 0) | fma(b, rb, fixed)
        m.submodules.fma1 = fma1 = FusedMultiplyAdd()
        m.d.comb += [fma1.a.eq(x_float), fma1.b.eq(self.param1), fma1.c.eq(Mux(is_add, self.param2, 0))]
        t, t_add, a_float2, ra = Signal(32), Signal(32), Signal(32), Signal(32)
        m.d.sync += t.eq(fma1.result)
        # ra: param0 (ADD: ra) a cycle later, as the parameters hold for the whole instruction and
        # are read in stage 3 at least three cycles after they were loaded.
        add += [t_add.eq(fma1.result), a_float2.eq(a_float), ra.eq(self.param0)]
        # stage 3: r = fma(a, ra, t) | t
        m.submodules.fma2 = fma2 = FusedMultiplyAdd()
        m.d.comb += [fma2.a.eq(a_float2), fma2.b.eq(ra), fma2.c.eq(t_add)]
        r = Signal(32)
        m.d.sync += r.eq(Mux(is_add, fma2.result, t))
        # stage 4: round, zero point, clamp
        m.submodules.to_int = to_int = FloatToInt()
        m.d.comb += to_int.value.eq(r)
        lo = _widen(self.clamp_lo, self.out_signed)
        hi = _widen(self.clamp_hi, self.out_signed)
        shifted = Signal(signed(34))
        m.d.comb += shifted.eq(to_int.result + _widen(self.out_zp, self.out_signed))
        # min(max(shifted, lo), hi): the comparisons are wide, only the low byte of the result
        # is kept (the low byte of lo / hi is clamp_lo / clamp_hi whatever the signedness).
        at_least_lo = Mux(shifted < lo, lo, shifted)
        clamped = Signal(8)
        m.d.comb += clamped.eq(Mux(at_least_lo > hi, self.clamp_hi, Mux(shifted < lo, self.clamp_lo, shifted[:8])))
        m.d.sync += self.y.eq(clamped)
        return m
