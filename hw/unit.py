"""What every execution unit of a core shares: its queue port and its status.

A unit receives instructions in program order from its queue (a stream of
:data:`QUEUE_ENTRY`). It pops the head when it ``can_start`` and the core says
the head's semaphores are available (``sem_ok``). When an instruction has
completed it pulses ``done`` with the instruction's ``signal`` mask; an error
stops it with a code and the instruction index.
"""

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import INSTRUCTION, NUM_SEMAPHORES

__all__ = ["QUEUE_ENTRY", "UnitSignature", "unit_members"]

#: An instruction word and its index in the core's stream.
QUEUE_ENTRY = data.StructLayout({"instr": INSTRUCTION, "pc": 32})


def unit_members() -> dict:
    """Signature members common to the DMA, PE and PPU units."""
    return {
        "queue": In(stream.Signature(QUEUE_ENTRY)),
        "sem_ok": In(1),        # the head's wait mask is satisfied and this unit may acquire
        "can_start": Out(1),    # the unit would pop the head this cycle if sem_ok
        "halt": In(1),          # an error somewhere: stop issuing
        "done": Out(1),         # an instruction completed this cycle
        "done_signal": Out(NUM_SEMAPHORES),
        "done_pc": Out(32),
        "error": Out(1),
        "error_code": Out(4),
        "error_pc": Out(32),
        "busy": Out(1),         # executing an instruction (for idle detection and counters)
        "progress": Out(1),     # did useful work this cycle (for the watchdog)
    }


class UnitSignature(wiring.Signature):
    def __init__(self, extra: dict):
        super().__init__({**unit_members(), **extra})
