"""What every execution unit of a core shares: its queue port and its status.

A unit receives instructions in program order from its queue (a stream of
:func:`queue_entry` of its payload layout). It pops the head when it
``can_start`` and the core's semaphore block says the head's semaphores are
available (``sem_ok``). When an instruction has completed it pulses ``done`` with the
instruction's ``signal`` mask; an error stops it with a code and the
instruction index.
"""

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import INSTRUCTION, NUM_SEMAPHORES, ErrorCode

__all__ = ["queue_entry", "queue_slot", "UnitSignature", "unit_members"]


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
    }


class UnitSignature(wiring.Signature):
    """:func:`unit_members` of ``payload`` plus the unit's own members ``extra``."""

    def __init__(self, payload: data.Layout, extra: dict):
        super().__init__({**unit_members(payload), **extra})
