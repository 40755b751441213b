"""What every execution unit of a core shares: its queue port and its status.

A unit receives instructions in program order from its queue (a stream of
:func:`queue_entry` of its payload layout). It pops the head when it
``can_start`` and the core's semaphore block says the head's semaphores are
available (``sem_ok``). When an instruction has completed it pulses ``done`` with the
instruction's ``signal`` mask; an error stops it with a code and the
instruction index.

A unit says when it is ``awake``: in a cycle where ``awake`` is low, the unit's next state is
its present state in everything that can ever be observed (its outputs, the scratchpad ports
it drives, and the state that decides them), so the core may stop its clock for that cycle
(:class:`dlfusion.hw.core.Core` does: an idle unit then costs nothing in simulation, and would
cost no clock power in silicon). Registers whose values are read only under a valid bit that
is low (pipeline data behind an empty stage) may differ from an ungated run; nothing else may.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import INSTRUCTION, NUM_SEMAPHORES, ErrorCode

__all__ = ["queue_entry", "queue_slot", "UnitSignature", "unit_members", "PointerSignature", "StridedLoops"]


def queue_entry(payload: data.Layout) -> data.StructLayout:
    """What a unit receives for one instruction: the header fields it acts on, its view of the payload
    and the instruction's index in the core's stream.

    The semaphore ``wait`` mask is not part of it: the core checks it before the unit pops the head
    (see :func:`queue_slot`). ``payload`` is the unit's view of the instruction payload (its low
    ``payload.size`` bits), so a unit's queue stores and the unit receives only the bits it reads.
    """
    return data.StructLayout({
        "opcode": INSTRUCTION["opcode"].shape,
        "signal": NUM_SEMAPHORES,
        "payload": payload,
        "pc": 32,
    })


def queue_slot(payload: data.Layout) -> data.StructLayout:
    """What a unit's queue holds for one instruction: the semaphore ``wait`` mask of the instruction
    and the unit's :func:`queue_entry`."""
    return data.StructLayout({"wait": NUM_SEMAPHORES, "entry": queue_entry(payload)})


def unit_members(payload: data.Layout) -> dict:
    """Signature members common to the DMA, PE and PPU units; ``payload`` as in :func:`queue_entry`."""
    return {
        "queue": In(stream.Signature(queue_entry(payload))),
        "sem_ok": In(1),        # the head's wait mask is satisfied and this unit may acquire
        "can_start": Out(1),    # the unit would pop the head this cycle if sem_ok
        "halt": In(1),          # an error somewhere: stop issuing
        "done": Out(1),         # an instruction completed this cycle
        "done_signal": Out(NUM_SEMAPHORES),
        "done_pc": Out(32),
        "error": Out(1),
        "error_code": Out(ErrorCode),
        "error_pc": Out(32),
        "busy": Out(1),         # executing an instruction (for idle detection and counters)
        "progress": Out(1),     # did useful work this cycle (for the watchdog)
        "awake": Out(1),        # the unit's state may change at the next clock edge (see below)
    }


class UnitSignature(wiring.Signature):
    """:func:`unit_members` of ``payload`` plus the unit's own members ``extra``."""

    def __init__(self, payload: data.Layout, extra: dict):
        super().__init__({**unit_members(payload), **extra})


#: One pointer of :class:`StridedLoops` (members as seen from the loops).
PointerSignature = wiring.Signature({
    "base": In(16), "s0": In(16), "s1": In(16),     # latched at start
    "value": Out(32),                               # this iteration's address
})


class StridedLoops(wiring.Component):
    """Two nested loops walking scratchpad pointers, as the PE array and the PPU run them.

    ``start`` latches the loop counts and, per pointer, its base and strides, and sets every
    pointer to its base. Each ``advance`` steps every pointer by its ``s0`` within a row, or,
    after the row's last iteration, sets it to the row's start plus ``s1``. Advancing past the
    last iteration leaves the loops where they are.

    Parameters
    ----------
    pointers : sequence of str
        The pointers' names (each a member of :data:`PointerSignature`).

    Members
    -------
    n0, n1 : In(12), the inner and outer counts (latched at ``start``).
    start, advance : In(1).
    last0, last1 : Out(1), this iteration is the last of its row, this row is the last.
    <pointer> : Out(PointerSignature) for each name.
    """

    def __init__(self, pointers):
        self.pointers = tuple(pointers)
        if not self.pointers or len(set(self.pointers)) != len(self.pointers):
            raise ValueError(f"pointers must be distinct names, not {pointers!r}")
        super().__init__({
            "n0": In(12), "n1": In(12), "start": In(1), "advance": In(1),
            "last0": Out(1), "last1": Out(1),
            **{name: Out(PointerSignature) for name in self.pointers},
        })

    def elaborate(self, platform):
        m = Module()
        n0, n1 = Signal(12), Signal(12)
        i0, i1 = Signal(12), Signal(12)
        m.d.comb += [self.last0.eq(i0 == n0 - 1), self.last1.eq(i1 == n1 - 1)]
        with m.If(self.start):
            m.d.sync += [n0.eq(self.n0), n1.eq(self.n1), i0.eq(0), i1.eq(0)]
        with m.Elif(self.advance & ~self.last0):
            m.d.sync += i0.eq(i0 + 1)
        with m.Elif(self.advance & ~self.last1):
            m.d.sync += [i0.eq(0), i1.eq(i1 + 1)]
        for name in self.pointers:
            pointer = getattr(self, name)
            s0, s1 = Signal(16, name=f"{name}_s0"), Signal(16, name=f"{name}_s1")
            row = Signal(32, name=f"{name}_row")
            with m.If(self.start):
                m.d.sync += [s0.eq(pointer.s0), s1.eq(pointer.s1), row.eq(pointer.base),
                             pointer.value.eq(pointer.base)]
            with m.Elif(self.advance & ~self.last0):
                m.d.sync += pointer.value.eq(pointer.value + s0)
            with m.Elif(self.advance & ~self.last1):
                m.d.sync += [row.eq(row + s1), pointer.value.eq(row + s1)]
        return m
