"""The shared DRAM port: fair arbitration, bandwidth and latency.

All requesters (the instruction fetch and the DMA of every core) share one
port. A credit counter gains ``dram_bytes_per_cycle`` credits per cycle and a
line transfer costs ``L`` credits, so the port moves at most
``dram_bytes_per_cycle`` bytes per cycle on average and at most one line per
cycle. Requests are granted round-robin. Writes land in the backing store when
granted; reads sample the store when granted and their data comes back
``dram_latency`` cycles later, in order, tagged for the requester.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig

__all__ = ["TAG_BITS", "MemRequest", "MemResponse", "BackingStoreSignature", "MemorySystem"]

TAG_BITS = 20


def MemRequest(hw: HwConfig):
    """Payload of a DRAM request: line address, write enable, write data, tag."""
    return data.StructLayout({
        "addr": 32, "write": 1, "wdata": 8 * hw.line_bytes, "tag": TAG_BITS,
    })


def MemResponse(hw: HwConfig):
    return data.StructLayout({"data": 8 * hw.line_bytes, "tag": TAG_BITS})


def RequestSignature(hw):
    return stream.Signature(MemRequest(hw))


def ResponseSignature(hw):
    # Requesters always accept responses (they own a free scratchpad write port).
    return stream.Signature(MemResponse(hw), always_ready=True)


def BackingStoreSignature(hw):
    """Synchronous single-port memory: ``rdata`` holds ``dram[addr]`` the cycle after ``re``."""
    return wiring.Signature({
        "addr": Out(32), "re": Out(1), "we": Out(1),
        "wdata": Out(8 * hw.line_bytes), "rdata": In(8 * hw.line_bytes),
    })


class MemorySystem(wiring.Component):
    """Round-robin arbiter, bandwidth credits and read latency for ``requesters`` ports.

    Parameters
    ----------
    hw : HwConfig
    requesters : int

    Members
    -------
    req : list of ``In(stream.Signature(MemRequest))``
    resp : list of ``Out(stream.Signature(MemResponse))``
    mem : ``Out(BackingStoreSignature)``
    busy : ``Out(1)``, a transfer was granted this cycle
    """

    def __init__(self, hw: HwConfig, requesters: int):
        if requesters < 1:
            raise ValueError(f"requesters must be at least 1, not {requesters!r}")
        self.hw = hw
        self.requesters = requesters
        members = {"mem": Out(BackingStoreSignature(hw)), "busy": Out(1)}
        for i in range(requesters):
            members[f"req{i}"] = In(RequestSignature(hw))
            members[f"resp{i}"] = Out(ResponseSignature(hw))
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

        request = Signal(MemRequest(hw))
        with m.Switch(chosen):
            for i, r in enumerate(reqs):
                with m.Case(i):
                    m.d.comb += request.eq(r.payload)
        m.d.comb += [
            self.mem.addr.eq(request.addr),
            self.mem.wdata.eq(request.wdata),
            self.mem.we.eq(grant & request.write),
            self.mem.re.eq(grant & ~request.write),
        ]

        # Latency pipeline: stage 0 holds the metadata while the store reads; the data is
        # captured at stage 1 and delayed to stage ``dram_latency - 1``.
        meta = data.StructLayout({"valid": 1, "requester": range(n), "tag": TAG_BITS})
        stage0 = Signal(meta)
        m.d.sync += [
            stage0.valid.eq(grant & ~request.write),
            stage0.requester.eq(chosen),
            stage0.tag.eq(request.tag),
        ]
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
                r.payload.tag.eq(previous.meta.tag),
            ]
        return m

