"""The DMA engine: strided, padded line transfers between DRAM and the scratchpads.

LOAD walks three nested loops over lines; padding lines are written with the
pad value without touching DRAM, every other line is a read request on the
shared DRAM port whose response is written to the scratchpad named in its tag.
Up to ``dram_latency`` reads are in flight, so a long load streams at the
port's bandwidth. STORE reads act lines one cycle ahead of the write request
and holds the line while the port is busy. An instruction completes (and
signals its semaphores) when its last line has landed: all read responses for
a LOAD, the last granted write for a STORE.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .config import HwConfig
from .isa import DMA_PAYLOAD, Buffer, ErrorCode, Opcode
from .memsys import RequestSignature, ResponseSignature
from .unit import unit_members

__all__ = ["DmaUnit", "TransferLoops", "LOOP_FIELDS", "line_write_layout", "dma_tag_layout"]


def _meta_field(hw: HwConfig) -> dict:
    """The metadata-store bit of a line write or tag: only a sparse array has the store."""
    return {"meta": 1} if hw.sparse_patterns else {}


def line_write_layout(hw: HwConfig) -> data.StructLayout:
    """One scratchpad line written by the DMA: the buffer, its line address and the line (and, on a
    sparse array, ``meta``: the line is of the weight buffer's metadata store)."""
    return data.StructLayout({"buffer": Buffer, "addr": 18, "data": 8 * hw.line_bytes, **_meta_field(hw)})


def dma_tag_layout(hw: HwConfig) -> data.StructLayout:
    """The tag of a DMA read request: where its response is written (20 bits; 21 on a sparse array)."""
    return data.StructLayout({"addr": 18, "buffer": Buffer, **_meta_field(hw)})


#: The fields of a DMA instruction that shape its loops.
LOOP_FIELDS = data.StructLayout({name: DMA_PAYLOAD[name].shape for name in (
    "n0", "n1", "n2", "sram_s1", "sram_s2", "dram_s1", "dram_s2", "pad_top", "pad_bottom", "pad_left", "pad_right")})


class TransferLoops(wiring.Component):
    """The three nested loops of a transfer: the scratchpad and DRAM line of each iteration.

    ``start`` sets the loops to their first iteration at ``sram_addr`` / ``dram_addr``; each
    ``advance`` moves to the next one. The innermost loop steps one line, the outer two by
    their strides. Padding lines (the first ``pad_top`` and last ``pad_bottom`` rows, the first
    ``pad_left`` and last ``pad_right`` lines of a row) have no DRAM line and do not move the
    DRAM address: the data rows and lines are contiguous in DRAM.

    Members
    -------
    fields : In(LOOP_FIELDS), the loop fields of the transfer (held while it runs).
    start : In(1), sram_addr : In(16), dram_addr : In(32).
    advance : In(1).
    sram : Out(32), dram : Out(48), the lines of this iteration.
    pad : Out(1), this iteration is a padding line.
    last : Out(1), this is the last iteration.
    """

    fields: In(LOOP_FIELDS)
    start: In(1)
    sram_addr: In(16)
    dram_addr: In(32)
    advance: In(1)
    sram: Out(32)
    dram: Out(48)
    pad: Out(1)
    last: Out(1)

    def elaborate(self, platform):
        m = Module()
        f = self.fields
        i0, i1, i2 = Signal(12), Signal(12), Signal(12)
        sram, sram_row, sram_plane = self.sram, Signal(32), Signal(32)
        dram, dram_row, dram_plane = self.dram, Signal(48), Signal(48)

        row_pad = Signal()
        col_pad = Signal()
        m.d.comb += [
            row_pad.eq((i1 < f.pad_top) | (i1 >= f.n1 - f.pad_bottom)),
            col_pad.eq((i0 < f.pad_left) | (i0 >= f.n0 - f.pad_right)),
            self.pad.eq(row_pad | col_pad),
        ]
        last0 = Signal()
        last1 = Signal()
        last2 = Signal()
        m.d.comb += [last0.eq(i0 == f.n0 - 1), last1.eq(i1 == f.n1 - 1), last2.eq(i2 == f.n2 - 1),
                     self.last.eq(last0 & last1 & last2)]

        with m.If(self.start):
            m.d.sync += [
                i0.eq(0), i1.eq(0), i2.eq(0),
                sram.eq(self.sram_addr), sram_row.eq(self.sram_addr), sram_plane.eq(self.sram_addr),
                dram.eq(self.dram_addr), dram_row.eq(self.dram_addr), dram_plane.eq(self.dram_addr),
            ]
        with m.Elif(self.advance):
            with m.If(~last0):
                m.d.sync += [i0.eq(i0 + 1), sram.eq(sram + 1)]
                with m.If(~self.pad):
                    m.d.sync += dram.eq(dram + 1)
            with m.Elif(~last1):
                next_row = dram_row + Mux(row_pad, 0, f.dram_s1)
                m.d.sync += [i0.eq(0), i1.eq(i1 + 1),
                             sram_row.eq(sram_row + f.sram_s1), sram.eq(sram_row + f.sram_s1),
                             dram_row.eq(next_row), dram.eq(next_row)]
            with m.Elif(~last2):
                m.d.sync += [i0.eq(0), i1.eq(0), i2.eq(i2 + 1),
                             sram_plane.eq(sram_plane + f.sram_s2),
                             sram_row.eq(sram_plane + f.sram_s2),
                             sram.eq(sram_plane + f.sram_s2),
                             dram_plane.eq(dram_plane + f.dram_s2),
                             dram_row.eq(dram_plane + f.dram_s2),
                             dram.eq(dram_plane + f.dram_s2)]
        return m


class DmaUnit(wiring.Component):
    """DMA unit of one core.

    Members
    -------
    req, resp : the core's port on the shared DRAM system.
    line_write : Out(stream.Signature(line_write_layout(hw), always_ready=True)), at most one
        scratchpad line per cycle (the core decodes the buffer into the act / weight / param /
        lookup-table write ports).
    act_read : In(ReadPort.Signature), an activation read port for STORE.
    stall : Out(1), a request is waiting for the DRAM port this cycle.
    """

    #: The unit's view of the instruction payload (LOAD, STORE; SYNC reads it as an empty transfer).
    PAYLOAD = DMA_PAYLOAD

    def __init__(self, hw: HwConfig):
        self.hw = hw
        line_bits = 8 * hw.line_bytes
        super().__init__({
            **unit_members(self.PAYLOAD),
            "req": Out(RequestSignature(hw, dma_tag_layout(hw).size)),
            "resp": In(ResponseSignature(hw, dma_tag_layout(hw).size)),
            "line_write": Out(stream.Signature(line_write_layout(hw), always_ready=True)),
            "act_read": In(memory.ReadPort.Signature(addr_width=exact_log2(hw.act_lines), shape=line_bits)),
            "stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        head = self.queue.payload
        instr = Signal(DMA_PAYLOAD)
        is_store = Signal()
        signal_mask = Signal(8)
        pc = Signal(32)

        outstanding = Signal(range(hw.dram_latency + 4))
        store_valid = Signal()      # a store line is held waiting for the port
        store_addr = Signal(48)

        depth = Signal(32)
        with m.Switch(instr.buffer):
            with m.Case(Buffer.ACT):
                m.d.comb += depth.eq(hw.act_lines)
            with m.Case(Buffer.WEIGHT):
                m.d.comb += depth.eq(hw.weight_lines)
            if hw.lut_tables:
                with m.Case(Buffer.LUT):
                    m.d.comb += depth.eq(hw.lut_lines)
            with m.Default():       # param (without tables the dispatcher rejects buffer lut)
                m.d.comb += depth.eq(hw.param_lines)
        if hw.sparse_patterns:
            # The metadata store (the dispatcher lets meta through with buffer weight only).
            with m.If(instr.meta):
                m.d.comb += depth.eq(hw.meta_lines)

        m.submodules.loops = loops = TransferLoops()
        sram, dram, pad = loops.sram, loops.dram, loops.pad
        m.d.comb += [getattr(loops.fields, name).eq(getattr(instr, name)) for name, _ in LOOP_FIELDS]

        advance = loops.advance     # the current line is handled this cycle
        response_write = Signal()
        m.d.comb += response_write.eq(self.resp.valid)

        # Scratchpad line writes: read responses have priority, pad lines use free cycles.
        tag = dma_tag_layout(hw)(self.resp.payload.tag)
        pad_line = Cat([instr.pad_value] * hw.line_bytes)
        line = self.line_write
        with m.If(response_write):
            m.d.comb += [line.valid.eq(1), line.payload.buffer.eq(tag.buffer), line.payload.addr.eq(tag.addr),
                         line.payload.data.eq(self.resp.payload.data)]
            if hw.sparse_patterns:
                m.d.comb += line.payload.meta.eq(tag.meta)
        with m.Elif(advance & pad & ~is_store):
            m.d.comb += [line.valid.eq(1), line.payload.buffer.eq(instr.buffer), line.payload.addr.eq(sram),
                         line.payload.data.eq(pad_line)]
            if hw.sparse_patterns:
                m.d.comb += line.payload.meta.eq(instr.meta)

        with m.If(self.req.valid & self.req.ready & ~self.req.payload.write):
            with m.If(~response_write):
                m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(response_write):
            m.d.sync += outstanding.eq(outstanding - 1)

        m.d.comb += [
            self.stall.eq(self.req.valid & ~self.req.ready),
            self.progress.eq(advance | response_write | (self.req.valid & self.req.ready)),
            self.done_signal.eq(signal_mask),
            self.done_pc.eq(pc),
        ]

        # Store pipeline: the held line goes out when the port grants it.
        act_raddr = Signal.like(self.act_read.addr)
        act_ren = Signal()
        m.d.comb += [self.act_read.addr.eq(act_raddr), self.act_read.en.eq(act_ren)]
        with m.If(store_valid):
            m.d.comb += [
                self.req.valid.eq(1),
                self.req.payload.addr.eq(store_addr),
                self.req.payload.write.eq(1),
                self.req.payload.wdata.eq(self.act_read.data),
            ]

        opcode = head.opcode
        with m.FSM(name="dma"):
            with m.State("IDLE"):
                m.d.comb += self.can_start.eq(~self.halt)
                m.d.comb += self.queue.ready.eq(self.sem_ok & ~self.halt)
                with m.If(self.queue.valid & self.queue.ready):
                    payload = head.payload
                    m.d.sync += [
                        instr.eq(payload),
                        is_store.eq(opcode == Opcode.STORE),
                        signal_mask.eq(head.signal),
                        pc.eq(head.pc),
                    ]
                    m.d.comb += [loops.start.eq(1), loops.sram_addr.eq(payload.sram_addr),
                                 loops.dram_addr.eq(payload.dram_addr)]
                    empty = (payload.n0 == 0) | (payload.n1 == 0) | (payload.n2 == 0)
                    with m.If((opcode == Opcode.SYNC) | empty):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                sram_bad = sram >= depth
                dram_bad = ~pad & (dram >= hw.dram_lines)
                with m.If(self.halt):
                    m.next = "HALT"
                with m.Elif(sram_bad | dram_bad):
                    m.d.sync += [self.error.eq(1), self.error_pc.eq(pc),
                                 self.error_code.eq(Mux(sram_bad, ErrorCode.SRAM_RANGE, ErrorCode.DRAM_RANGE))]
                    m.next = "HALT"
                with m.Elif(is_store):
                    can_issue = ~store_valid | self.req.ready
                    with m.If(can_issue):
                        m.d.comb += advance.eq(1)
                        with m.If(~pad):
                            m.d.comb += [act_ren.eq(1), act_raddr.eq(sram)]
                            m.d.sync += [store_valid.eq(1), store_addr.eq(dram)]
                        with m.Else():
                            m.d.sync += store_valid.eq(0)
                with m.Else():
                    with m.If(pad):
                        m.d.comb += advance.eq(~response_write)
                    with m.Else():
                        m.d.comb += [
                            self.req.valid.eq(1),
                            self.req.payload.addr.eq(dram),
                            self.req.payload.write.eq(0),
                            self.req.payload.tag.eq(Cat(sram[:18], instr.buffer,
                                                        *([instr.meta] if hw.sparse_patterns else []))),
                            advance.eq(self.req.ready),
                        ]
                with m.If(advance & loops.last):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.halt):
                    m.next = "HALT"
                with m.Elif(is_store):
                    with m.If(~store_valid | self.req.ready):
                        m.next = "DONE"
                with m.Else():
                    with m.If((outstanding == 0) | ((outstanding == 1) & response_write)):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1), self.progress.eq(1)]
                m.next = "IDLE"
            with m.State("HALT"):
                m.d.comb += self.busy.eq(1)
        # IDLE with no line held and no response due, only an instruction arriving changes anything.
        m.d.comb += self.awake.eq(self.busy | self.queue.valid | store_valid | (outstanding != 0)
                                  | self.resp.valid)
        # A store line granted in RUN while no new line replaces it.
        with m.If(store_valid & self.req.ready & ~(advance & is_store & ~pad)):
            m.d.sync += store_valid.eq(0)
        return m
