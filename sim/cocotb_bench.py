"""cocotb test module that runs one job on the Verilated ``tb_top`` (see sim/tb_top.sv).

Started by :class:`dlfusion.sim.rtl.RtlSimulator` (never imported by it). The job
is a JSON file named by the environment variable ``DLFUSION_RTL_JOB``::

    {"prog_addr": [line per core], "core_mask": int, "max_cycles": int,
     "regions": [[start_line, line_count], ...], "result": "<path>",
     "dump_dir": "<the +DUMP_DIR directory>", "sv_clock": true, "clock_period_ns": 10}

The bench resets the accelerator, pulses ``start``, sleeps until ``done`` rises
(Python is woken once, not per cycle) or ``max_cycles`` simulated cycles pass
(then it records a harness timeout instead of hanging), reads the status and
counters, has the testbench write each region to ``region_<i>.hex`` in its
``+DUMP_DIR`` (only after a clean end: no error, no timeout) and writes the
result JSON atomically::

    {"status": "done" | "timeout", "cycles", "error_code", "error_core", "error_pc",
     "counters": [[7 ints] per core], "regions": [file per region], "tb_cycles",
     "sim_cycles", "sim_seconds", "dump_seconds", "bench_seconds", "dram_oob",
     "dram_read_lines", "dram_write_lines"}

``dram_read_lines`` / ``dram_write_lines`` are the memory-port reads (instruction
fetch and DMA loads) and writes (DMA stores) from the start pulse to the readout,
counted by the testbench. Barrier passages are not read here (that would wake Python
per cycle): ``tb_top.sv`` appends them to its ``+BARRIER_LOG`` file.

``sim_seconds`` is the wall-clock time from the start pulse to ``done`` (or the
watchdog), ``sim_cycles`` the clock cycles simulated meanwhile; ``bench_seconds``
covers the whole test (reset, run, dumps), ``dump_seconds`` the region dumps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, SimTimeoutError, Timer, with_timeout

JOB_ENV = "DLFUSION_RTL_JOB"
COUNTERS_PER_CORE = 7
COUNTER_BITS = 48
RESET_CYCLES = 4


def _write_json_atomic(path: Path, value: dict) -> None:
    # Not dlfusion.sim.binary.atomic_write: this module runs inside the simulator's
    # embedded Python and imports nothing heavier than cocotb.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


class AccelTestbench:
    """Clock, reset, start, status readout and region dumps of ``tb_top``."""

    def __init__(self, dut, job: dict):
        self.dut = dut
        self.job = job
        self.period_ns = int(job.get("clock_period_ns", 10))
        self.sv_clock = bool(job.get("sv_clock", True))
        self.cores = len(job["prog_addr"])

    def start_clock(self) -> None:
        if not self.sv_clock:
            # cocotb 2 uses its C++ (GPI) clock when COCOTB_TRUST_INERTIAL_WRITES is set,
            # as the runner does for Verilator; still a VPI write per edge.
            Clock(self.dut.clk, self.period_ns, unit="ns").start()

    def idle_inputs(self) -> None:
        dut = self.dut
        dut.start.value = 0
        dut.core_mask.value = 0
        dut.prog_addr.value = 0
        dut.dump_trigger.value = 0
        dut.dump_start.value = 0
        dut.dump_count.value = 0
        dut.dump_index.value = 0

    async def reset(self) -> None:
        self.idle_inputs()
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, RESET_CYCLES)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 1)

    async def start(self, prog_addr: list[int], core_mask: int) -> None:
        value = 0
        for core, line in enumerate(prog_addr):
            value |= (int(line) & 0xFFFF_FFFF) << (32 * core)
        self.dut.prog_addr.value = value
        self.dut.core_mask.value = core_mask
        self.dut.start.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.start.value = 0

    async def wait_done(self, max_cycles: int) -> bool:
        """Sleep until ``done``; ``False`` if it did not rise within ``max_cycles`` cycles."""
        if str(self.dut.done.value) == "1":
            return True
        try:
            await with_timeout(RisingEdge(self.dut.done), max_cycles * self.period_ns, "ns")
        except SimTimeoutError:
            return False
        return True

    def status(self) -> dict:
        dut = self.dut
        counters = dut.counters.value.to_unsigned()
        mask = (1 << COUNTER_BITS) - 1
        per_core = [[(counters >> (COUNTER_BITS * (COUNTERS_PER_CORE * core + k))) & mask
                     for k in range(COUNTERS_PER_CORE)] for core in range(self.cores)]
        return {
            "cycles": dut.cycles.value.to_unsigned(),
            "error_code": dut.error_code.value.to_unsigned(),
            "error_core": dut.error_core.value.to_unsigned(),
            "error_pc": dut.error_pc.value.to_unsigned(),
            "counters": per_core,
            "tb_cycles": dut.tb_cycles.value.to_unsigned(),
            "dram_oob": dut.tb_oob.value.to_unsigned(),
            "dram_read_lines": dut.tb_dram_reads.value.to_unsigned(),
            "dram_write_lines": dut.tb_dram_writes.value.to_unsigned(),
        }

    async def dump_region(self, index: int, start: int, count: int) -> None:
        dut = self.dut
        dut.dump_start.value = start
        dut.dump_count.value = count
        dut.dump_index.value = index
        await Timer(1, unit="ns")
        dut.dump_trigger.value = 1
        await Timer(1, unit="ns")
        dut.dump_trigger.value = 0
        await Timer(1, unit="ns")


@cocotb.test()
async def run_job(dut):
    test_start = time.perf_counter()
    job_path = Path(os.environ[JOB_ENV])
    job = json.loads(job_path.read_text())
    tb = AccelTestbench(dut, job)
    tb.start_clock()
    await tb.reset()
    cycles_before = dut.tb_cycles.value.to_unsigned()
    wall = time.perf_counter()
    await tb.start(job["prog_addr"], job["core_mask"])
    finished = await tb.wait_done(int(job["max_cycles"]))
    sim_seconds = time.perf_counter() - wall
    result = tb.status()
    result["status"] = "done" if finished else "timeout"
    result["sim_cycles"] = result["tb_cycles"] - cycles_before
    result["sim_seconds"] = sim_seconds
    dump_start = time.perf_counter()
    dump_dir = Path(job["dump_dir"])
    regions = []
    # Outputs are only meaningful after a clean end (the backends report none on error).
    wanted = job.get("regions", []) if finished and result["error_code"] == 0 else []
    for index, (start, count) in enumerate(wanted):
        await tb.dump_region(index, int(start), int(count))
        regions.append(str(dump_dir / f"region_{index}.hex"))
    result["regions"] = regions
    result["dump_seconds"] = time.perf_counter() - dump_start
    result["bench_seconds"] = time.perf_counter() - test_start
    _write_json_atomic(Path(job["result"]), result)
