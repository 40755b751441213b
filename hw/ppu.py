"""The post-processing unit: requantization and quantized elementwise add.

Per cycle it turns one vector of ``L`` lanes into one activation line, in a
five-stage pipeline with real binary32 arithmetic (no lookup tables):

1. read: accumulators (REQUANT) or two activation lines (ADD);
2. int32 to float32 (REQUANT adds the int32 bias first);
3. first fused multiply-add: ``fma(x, mult, 0)`` or ``fma(b, rb, fixed)``;
4. second fused multiply-add (ADD only): ``fma(a, ra, t)``;
5. round half to even, add the zero point, clamp, write the byte.

Per-lane parameters (bias and multiplier, or ``ra, rb, fixed``) are read from
the parameter scratchpad when an instruction starts. The unit drains its
pipeline before the next instruction, so an instruction may read what the
previous one wrote (a residual add after a requantization).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .config import HwConfig
from .fp import FloatToInt, FusedMultiplyAdd, IntToFloat
from .isa import ADD_PAYLOAD, REQUANT_PAYLOAD, ErrorCode, Opcode
from .unit import unit_members

__all__ = ["Ppu"]


class Ppu(wiring.Component):
    """The post-processing unit of one core.

    Members
    -------
    acc_raddr, acc_ren, acc_rdata : accumulator read port.
    a_raddr, a_ren, a_rdata, b_raddr, b_ren, b_rdata : two activation read ports (ADD).
    param_raddr, param_ren, param_rdata : parameter scratchpad read port.
    act_waddr, act_we, act_wdata : activation write port.

    The addresses are as wide as the scratchpad's address: the unit checks the full-width
    address against the depth before it reads or writes.
    """

    #: The unit's view of the instruction payload (REQUANT or ADD; SYNC reads it as an empty loop).
    PAYLOAD = data.UnionLayout({"requant": REQUANT_PAYLOAD, "add": ADD_PAYLOAD})

    def __init__(self, hw: HwConfig):
        self.hw = hw
        lanes = hw.lanes
        act_bits, acc_bits, param_bits = (exact_log2(depth) for depth in
                                          (hw.act_lines, hw.acc_entries, hw.param_entries))
        super().__init__({
            **unit_members(self.PAYLOAD),
            "acc_raddr": Out(acc_bits), "acc_ren": Out(1), "acc_rdata": In(32 * lanes),
            "a_raddr": Out(act_bits), "a_ren": Out(1), "a_rdata": In(8 * lanes),
            "b_raddr": Out(act_bits), "b_ren": Out(1), "b_rdata": In(8 * lanes),
            "param_raddr": Out(param_bits), "param_ren": Out(1), "param_rdata": In(32 * lanes),
            "act_waddr": Out(act_bits), "act_we": Out(1), "act_wdata": Out(8 * lanes),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        lanes = hw.lanes
        head = self.queue.payload

        is_add = Signal()
        signal_mask = Signal(8)
        pc = Signal(32)
        n0, n1 = Signal(12), Signal(12)
        i0, i1 = Signal(12), Signal(12)
        src, src_row, src_s0, src_s1 = Signal(32), Signal(32), Signal(16), Signal(16)
        srcb, srcb_row, srcb_s0, srcb_s1 = Signal(32), Signal(32), Signal(16), Signal(16)
        out, out_row, out_s0, out_s1 = Signal(32), Signal(32), Signal(16), Signal(16)
        param_addr = Signal(12)
        in_signed, out_signed = Signal(), Signal()
        out_zp, clamp_lo, clamp_hi = Signal(8), Signal(8), Signal(8)
        params = [Signal(32 * lanes, name=f"param{k}") for k in range(3)]
        param_step = Signal(range(4))
        sync_op = Signal()

        last0 = i0 == n0 - 1
        last1 = i1 == n1 - 1

        control = data.StructLayout({"valid": 1, "write": 1, "last": 1, "out": len(self.act_waddr)})
        stage = [Signal(control, name=f"stage{k}") for k in range(1, 6)]
        pipeline_busy = Cat(s.valid for s in stage).any()

        issue = Signal()
        with m.FSM(name="ppu"):
            with m.State("IDLE"):
                free = ~self.halt & ~pipeline_busy
                m.d.comb += [self.can_start.eq(free), self.queue.ready.eq(free & self.sem_ok)]
                with m.If(self.queue.valid & self.queue.ready):
                    add = head.opcode == Opcode.ADD
                    requant = head.payload.requant
                    addp = head.payload.add
                    m.d.sync += [
                        is_add.eq(add), signal_mask.eq(head.signal), pc.eq(head.pc),
                        i0.eq(0), i1.eq(0), param_step.eq(0),
                        sync_op.eq(head.opcode == Opcode.SYNC),
                    ]
                    with m.If(add):
                        m.d.sync += [
                            n0.eq(addp.n0), n1.eq(addp.n1),
                            src.eq(addp.a_addr), src_row.eq(addp.a_addr), src_s0.eq(addp.a_s0),
                            src_s1.eq(addp.a_s1),
                            srcb.eq(addp.b_addr), srcb_row.eq(addp.b_addr), srcb_s0.eq(addp.b_s0),
                            srcb_s1.eq(addp.b_s1),
                            out.eq(addp.out_addr), out_row.eq(addp.out_addr), out_s0.eq(addp.out_s0),
                            out_s1.eq(addp.out_s1),
                            param_addr.eq(addp.param_addr), in_signed.eq(addp.in_signed),
                            out_signed.eq(addp.out_signed), out_zp.eq(addp.out_zp),
                            clamp_lo.eq(addp.clamp_lo), clamp_hi.eq(addp.clamp_hi),
                        ]
                    with m.Else():
                        m.d.sync += [
                            n0.eq(requant.n0), n1.eq(requant.n1),
                            src.eq(requant.acc_addr), src_row.eq(requant.acc_addr),
                            src_s0.eq(requant.acc_s0), src_s1.eq(requant.acc_s1),
                            out.eq(requant.out_addr), out_row.eq(requant.out_addr),
                            out_s0.eq(requant.out_s0), out_s1.eq(requant.out_s1),
                            param_addr.eq(requant.param_addr),
                            out_signed.eq(requant.out_signed), out_zp.eq(requant.out_zp),
                            clamp_lo.eq(requant.clamp_lo), clamp_hi.eq(requant.clamp_hi),
                        ]
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += self.busy.eq(1)
                count = Mux(is_add, 3, 2)
                empty = (n0 == 0) | (n1 == 0)
                with m.If(self.halt):
                    m.next = "HALT"
                with m.Elif(sync_op | empty):
                    m.next = "DONE"
                with m.Elif(param_addr + count > hw.param_entries):
                    m.d.sync += [self.error.eq(1), self.error_code.eq(ErrorCode.SRAM_RANGE),
                                 self.error_pc.eq(pc)]
                    m.next = "HALT"
                with m.Else():
                    m.d.comb += [self.param_raddr.eq(param_addr + param_step), self.param_ren.eq(1)]
                    m.d.sync += param_step.eq(param_step + 1)
                    for k in range(3):
                        with m.If(param_step == k + 1):
                            m.d.sync += params[k].eq(self.param_rdata)
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
                    m.d.comb += issue.eq(1)
                    with m.If(~last0):
                        m.d.sync += [i0.eq(i0 + 1), src.eq(src + src_s0), srcb.eq(srcb + srcb_s0),
                                     out.eq(out + out_s0)]
                    with m.Elif(~last1):
                        m.d.sync += [
                            i0.eq(0), i1.eq(i1 + 1),
                            src_row.eq(src_row + src_s1), src.eq(src_row + src_s1),
                            srcb_row.eq(srcb_row + srcb_s1), srcb.eq(srcb_row + srcb_s1),
                            out_row.eq(out_row + out_s1), out.eq(out_row + out_s1),
                        ]
                    with m.Else():
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
            self.acc_raddr.eq(src), self.acc_ren.eq(issue & ~is_add),
            self.a_raddr.eq(src), self.a_ren.eq(issue & is_add),
            self.b_raddr.eq(srcb), self.b_ren.eq(issue & is_add),
        ]

        # Control travels beside the data; stage k is valid in the cycle that computes stage k.
        m.d.sync += [
            stage[0].valid.eq(issue), stage[0].write.eq(1), stage[0].last.eq(issue & last0 & last1),
            stage[0].out.eq(out),
        ]
        for k in range(1, 5):
            m.d.sync += stage[k].eq(stage[k - 1])

        def widen(byte, is_signed):
            return Mux(is_signed, byte.as_signed(), Cat(byte, 0).as_signed())

        lo = widen(clamp_lo, out_signed)
        hi = widen(clamp_hi, out_signed)
        zero_point = widen(out_zp, out_signed)
        out_bytes = []
        for lane in range(lanes):
            word = slice(32 * lane, 32 * lane + 32)
            byte = slice(8 * lane, 8 * lane + 8)
            # stage 1 (data from the scratchpads): to float
            to_float_x = IntToFloat(32)
            to_float_a = IntToFloat(32)
            m.submodules[f"to_float_x{lane}"] = to_float_x
            m.submodules[f"to_float_a{lane}"] = to_float_a
            acc_plus_bias = Signal(signed(32), name=f"acc_plus_bias{lane}")
            m.d.comb += acc_plus_bias.eq(self.acc_rdata[word].as_signed() + params[0][word].as_signed())
            m.d.comb += [
                to_float_x.value.eq(Mux(is_add, widen(self.b_rdata[byte], in_signed), acc_plus_bias)),
                to_float_a.value.eq(widen(self.a_rdata[byte], in_signed)),
            ]
            x_float, a_float = Signal(32, name=f"x_float{lane}"), Signal(32, name=f"a_float{lane}")
            m.d.sync += [x_float.eq(to_float_x.result), a_float.eq(to_float_a.result)]
            # stage 2: t = fma(x, mult, 0) | fma(b, rb, fixed)
            fma1 = FusedMultiplyAdd()
            m.submodules[f"fma1_{lane}"] = fma1
            m.d.comb += [fma1.a.eq(x_float), fma1.b.eq(Mux(is_add, params[1][word], params[1][word])),
                         fma1.c.eq(Mux(is_add, params[2][word], 0))]
            t, a_float2 = Signal(32, name=f"t{lane}"), Signal(32, name=f"a_float2_{lane}")
            m.d.sync += [t.eq(fma1.result), a_float2.eq(a_float)]
            # stage 3: r = fma(a, ra, t) | t
            fma2 = FusedMultiplyAdd()
            m.submodules[f"fma2_{lane}"] = fma2
            m.d.comb += [fma2.a.eq(a_float2), fma2.b.eq(params[0][word]), fma2.c.eq(t)]
            r = Signal(32, name=f"r{lane}")
            m.d.sync += r.eq(Mux(is_add, fma2.result, t))
            # stage 4: round, zero point, clamp
            to_int = FloatToInt()
            m.submodules[f"to_int{lane}"] = to_int
            m.d.comb += to_int.value.eq(r)
            shifted = Signal(signed(34), name=f"shifted{lane}")
            m.d.comb += shifted.eq(to_int.result + zero_point)
            # min(max(shifted, lo), hi): the comparisons are wide, only the low byte of the result
            # is kept (the low byte of lo / hi is clamp_lo / clamp_hi whatever the signedness).
            at_least_lo = Mux(shifted < lo, lo, shifted)
            clamped = Signal(8, name=f"clamped{lane}")
            m.d.comb += clamped.eq(Mux(at_least_lo > hi, clamp_hi, Mux(shifted < lo, clamp_lo, shifted[:8])))
            y = Signal(8, name=f"y{lane}")
            m.d.sync += y.eq(clamped)
            out_bytes.append(y)

        write_stage = stage[4]
        m.d.comb += [
            self.act_waddr.eq(write_stage.out), self.act_we.eq(write_stage.valid & write_stage.write),
            self.act_wdata.eq(Cat(out_bytes)),
        ]
        with m.If(write_stage.valid & write_stage.last):
            m.d.comb += [self.done.eq(1), self.done_signal.eq(signal_mask), self.done_pc.eq(pc)]
        m.d.comb += self.progress.eq(issue | pipeline_busy | self.done)
        return m
