"""Shared pieces of the Amaranth-simulator unit tests of the hardware blocks (not collected by pytest).

Small configurations, values packed into scratchpad lines, queue entries made from encoded
instructions, and a driver that feeds a unit's queue and records what it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import INSTRUCTION, ErrorCode
from dlfusion.hw.unit import queue_entry

#: A 4-lane core with the smallest memories the configuration accepts.
TINY = HwConfig(cores=1, pe_rows=4, pe_cols=4, act_lines=64, weight_blocks=8, acc_entries=16, param_entries=8,
                dram_bytes=4096, dram_bytes_per_cycle=4, dram_latency=4, queue_depth=4, fetch_lines=16,
                watchdog_cycles=200)

PAYLOAD_OFFSET = INSTRUCTION["payload"].offset


def simulate(dut, bench, *, processes=(), vcd: str | None = None) -> None:
    """Run the async testbench ``bench(ctx)`` on ``dut`` with a clock, beside background ``processes``
    (monitors that run until the testbench returns)."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    for process in processes:
        sim.add_process(process)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def pack(values, bits: int) -> int:
    """Little-endian lanes of ``bits`` bits each (two's complement) as one integer."""
    mask = (1 << bits) - 1
    result = 0
    for lane, value in enumerate(np.asarray(values).reshape(-1).tolist()):
        result |= (int(value) & mask) << (bits * lane)
    return result


def unpack(word: int, lanes: int, bits: int, signed: bool = False) -> np.ndarray:
    mask = (1 << bits) - 1
    values = [(int(word) >> (bits * lane)) & mask for lane in range(lanes)]
    if signed:
        values = [v - (1 << bits) if v >> (bits - 1) else v for v in values]
    return np.array(values, dtype=np.int64)


def entry(payload_layout, word: int, pc: int) -> int:
    """The queue entry (as bits) a unit with ``payload_layout`` receives for instruction ``word``."""
    layout = queue_entry(payload_layout)
    values = {
        "opcode": word & ((1 << INSTRUCTION["opcode"].width) - 1),
        "wait": (word >> INSTRUCTION["wait"].offset) & ((1 << INSTRUCTION["wait"].width) - 1),
        "signal": (word >> INSTRUCTION["signal"].offset) & ((1 << INSTRUCTION["signal"].width) - 1),
        "payload": (word >> PAYLOAD_OFFSET) & ((1 << payload_layout.size) - 1),
        "pc": pc,
    }
    bits = 0
    for name, member in layout:
        bits |= (values[name] & ((1 << member.width) - 1)) << member.offset
    return bits


def backing_store(m, port, lines):
    """A DRAM backing store of ``len(lines)`` lines behind ``port`` (a ``BackingStoreSignature``
    interface driven by the memory system); returns the memory (read it with ``ctx.get(mem.data[i])``)."""
    from amaranth.lib import memory
    dram = memory.Memory(shape=len(port.wdata), depth=len(lines), init=[int(line) for line in lines])
    m.submodules.dram = dram
    address_bits = (len(lines) - 1).bit_length()
    read = dram.read_port()
    write = dram.write_port()
    m.d.comb += [
        read.addr.eq(port.addr[:address_bits]), read.en.eq(port.re), port.rdata.eq(read.data),
        write.addr.eq(port.addr[:address_bits]), write.en.eq(port.we), write.data.eq(port.wdata),
    ]
    return dram


@dataclass
class UnitRun:
    """What a unit reported while :func:`drive` fed it."""
    done: list = field(default_factory=list)      #: (cycle, signal mask, pc) per completion
    popped: list = field(default_factory=list)    #: cycle at which each entry was taken
    error: tuple | None = None                    #: (ErrorCode, pc) of the first error
    cycles: int = 0


async def drive(ctx, unit, entries, *, max_cycles: int = 2000, sem_ok=1, tail: int = 4) -> UnitRun:
    """Offer ``entries`` to ``unit.queue`` in order and run until each has completed (or an error).

    ``sem_ok`` is held at the given value (the semaphore block's grant). Runs ``tail`` cycles more
    after the last completion so that late writes would be seen.
    """
    run = UnitRun()
    ctx.set(unit.sem_ok, sem_ok)
    index = 0
    for cycle in range(max_cycles):
        if index < len(entries):
            ctx.set(Value.cast(unit.queue.payload), entries[index])
            ctx.set(unit.queue.valid, 1)
        else:
            ctx.set(unit.queue.valid, 0)
        _, _, valid, ready, done, signal, pc, error, code, error_pc = await ctx.tick().sample(
            unit.queue.valid, unit.queue.ready, unit.done, unit.done_signal, unit.done_pc, unit.error,
            Value.cast(unit.error_code), unit.error_pc)
        if valid and ready:
            run.popped.append(cycle)
            index += 1
        if done:
            run.done.append((cycle, signal, pc))
        if error and run.error is None:
            run.error = (ErrorCode(code), error_pc)
        if run.error is not None or len(run.done) == len(entries):
            break
    else:
        raise AssertionError(f"the unit did not complete {len(entries)} entries in {max_cycles} cycles "
                             f"(done {len(run.done)})")
    ctx.set(unit.queue.valid, 0)
    for _ in range(tail):
        await ctx.tick()
    run.cycles = cycle + 1
    if run.error is None:
        # The error output is registered: one more cycle shows an error raised by the last edge.
        if ctx.get(unit.error):
            run.error = (ErrorCode(ctx.get(Value.cast(unit.error_code))), ctx.get(unit.error_pc))
    return run
