"""The shared DRAM port: fair arbitration, bandwidth and latency.

All requesters (the instruction fetch and the DMA of every core) share one
port. A credit counter gains ``dram_bytes_per_cycle`` credits per cycle and a
line transfer costs ``L`` credits, so the port moves at most
``dram_bytes_per_cycle`` bytes per cycle on average and at most one line per
cycle. Requests are granted round-robin. Writes land in the backing store when
granted; reads sample the store when granted and their data comes back
``dram_latency`` cycles later, in order, tagged for the requester. A requester
that needs no tag (the instruction fetch, whose responses arrive in request
order) has a port without one.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig

__all__ = ["TAG_BITS", "MemRequest", "MemResponse", "BackingStoreSignature", "MemorySystem"]

#: The widest tag a requester may have (the DMA's on a sparse array, :func:`dlfusion.hw.dma.dma_tag_layout`).
TAG_BITS = 21


def MemRequest(hw: HwConfig, tag_bits: int = TAG_BITS):
    """Payload of a DRAM request: line address, write enable, write data and (if ``tag_bits``) a tag."""
    fields = {"addr": 32, "write": 1, "wdata": 8 * hw.line_bytes}
    return data.StructLayout({**fields, "tag": tag_bits} if tag_bits else fields)


def MemResponse(hw: HwConfig, tag_bits: int = TAG_BITS):
    """Payload of a read response: the line and (if ``tag_bits``) the request's tag."""
    fields = {"data": 8 * hw.line_bytes}
    return data.StructLayout({**fields, "tag": tag_bits} if tag_bits else fields)


def RequestSignature(hw, tag_bits: int = TAG_BITS):
    return stream.Signature(MemRequest(hw, tag_bits))


def ResponseSignature(hw, tag_bits: int = TAG_BITS):
    # Requesters always accept responses (they own a free scratchpad write port).
    return stream.Signature(MemResponse(hw, tag_bits), always_ready=True)


def BackingStoreSignature(hw):
    """Synchronous single-port memory: ``rdata`` holds ``dram[addr]`` the cycle after ``re``."""
    return wiring.Signature({
        "addr": Out(32), "re": Out(1), "we": Out(1),
        "wdata": Out(8 * hw.line_bytes), "rdata": In(8 * hw.line_bytes),
    })


class MemorySystem(wiring.Component):
    """Round-robin arbiter, bandwidth credits and read latency for ``len(tag_bits)`` ports.

    Parameters
    ----------
    hw : HwConfig
    tag_bits : sequence of int
        The tag width of each requester's port, at most :data:`TAG_BITS`; 0 for an
        untagged port.

    Members
    -------
    req0, req1, ... : ``In(RequestSignature(hw, tag_bits[i]))``
    resp0, resp1, ... : ``Out(ResponseSignature(hw, tag_bits[i]))``
    mem : ``Out(BackingStoreSignature)``
    busy : ``Out(1)``, a transfer was granted this cycle
    """

    def __init__(self, hw: HwConfig, tag_bits):
        tag_bits = tuple(tag_bits)
        if not tag_bits:
            raise ValueError("a memory system needs at least one requester")
        if not all(0 <= bits <= TAG_BITS for bits in tag_bits):
            raise ValueError(f"tag widths must be between 0 and {TAG_BITS}, not {tag_bits!r}")
        self.hw = hw
        self.tag_bits = tag_bits
        self.requesters = len(tag_bits)
        members = {"mem": Out(BackingStoreSignature(hw)), "busy": Out(1)}
        for i, bits in enumerate(tag_bits):
            members[f"req{i}"] = In(RequestSignature(hw, bits))
            members[f"resp{i}"] = Out(ResponseSignature(hw, bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        hw, n = self.hw, self.requesters
        reqs = [getattr(self, f"req{i}") for i in range(n)]
        resps = [getattr(self, f"resp{i}") for i in range(n)]
        line = hw.line_bytes

        # Bandwidth: credits in bytes, capped at one line.
        credits = Signal(range(line + 1), init=line)
        can_grant = Signal()
        m.d.comb += can_grant.eq(credits >= line)

        # Round-robin: lowest valid index at or above the pointer, else lowest overall.
        valid = Signal(n)
        m.d.comb += valid.eq(Cat(r.valid for r in reqs))
        pointer = Signal(range(n), init=0)
        at_or_above = Signal(n)
        m.d.comb += at_or_above.eq(valid & ~((1 << pointer) - 1))
        pick_from = Signal(n)
        m.d.comb += pick_from.eq(Mux(at_or_above.any(), at_or_above, valid))
        one_hot = Signal(n)
        m.d.comb += one_hot.eq(pick_from & (~pick_from + 1))
        chosen = Signal(range(n))
        for i in range(n):
            with m.If(one_hot[i]):
                m.d.comb += chosen.eq(i)

        grant = Signal()
        m.d.comb += grant.eq(can_grant & valid.any())
        m.d.comb += self.busy.eq(grant)
        for i, r in enumerate(reqs):
            m.d.comb += r.ready.eq(grant & one_hot[i])

        with m.If(grant):
            m.d.sync += credits.eq(Mux(credits - line + hw.dram_bytes_per_cycle > line,
                                        line, credits - line + hw.dram_bytes_per_cycle))
            m.d.sync += pointer.eq(Mux(chosen == n - 1, 0, chosen + 1))
        with m.Elif(credits < line):
            m.d.sync += credits.eq(Mux(credits + hw.dram_bytes_per_cycle > line,
                                        line, credits + hw.dram_bytes_per_cycle))

        tag_bits = max(self.tag_bits)      # what the widest tag needs, carried for every read
        request = Signal(MemRequest(hw, tag_bits))
        with m.Switch(chosen):
            for i, r in enumerate(reqs):
                with m.Case(i):
                    m.d.comb += [request.addr.eq(r.payload.addr), request.write.eq(r.payload.write),
                                 request.wdata.eq(r.payload.wdata)]
                    if self.tag_bits[i]:
                        m.d.comb += request.tag.eq(r.payload.tag)
        m.d.comb += [
            self.mem.addr.eq(request.addr),
            self.mem.wdata.eq(request.wdata),
            self.mem.we.eq(grant & request.write),
            self.mem.re.eq(grant & ~request.write),
        ]

        # Latency pipeline: stage 0 holds the metadata while the store reads; the data is
        # captured at stage 1 and delayed to stage ``dram_latency - 1``.
        meta = data.StructLayout({"valid": 1, "requester": range(n), **({"tag": tag_bits} if tag_bits else {})})
        stage0 = Signal(meta)
        m.d.sync += [
            stage0.valid.eq(grant & ~request.write),
            stage0.requester.eq(chosen),
        ]
        if tag_bits:
            m.d.sync += stage0.tag.eq(request.tag)
        staged = data.StructLayout({"meta": meta, "data": 8 * line})
        previous = Signal(staged)
        m.d.comb += [previous.meta.eq(stage0), previous.data.eq(self.mem.rdata)]
        for k in range(1, hw.dram_latency):
            stage = Signal(staged, name=f"stage{k}")
            m.d.sync += stage.eq(previous)
            previous = stage
        for i, r in enumerate(resps):
            m.d.comb += [
                r.valid.eq(previous.meta.valid & (previous.meta.requester == i)),
                r.payload.data.eq(previous.data),
            ]
            if self.tag_bits[i]:
                m.d.comb += r.payload.tag.eq(previous.meta.tag)
        return m

