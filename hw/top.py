"""The accelerator top: cores, the shared DRAM system, the barrier unit, status.

Ports (Verilog names): ``start``, ``core_mask``, ``prog_addr`` (32 bits per
core), the backing-store port ``mem__addr/re/we/wdata/rdata``, and the status
``done``, ``error_code``, ``error_core``, ``error_pc``, ``cycles``,
``counters`` (48 bits x 7 per core, in ``COUNTER_NAMES`` order) and
``barrier_go`` (one bit per core, high in the cycle that core passes a barrier).
"""

from amaranth.back import rtlil, verilog
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .core import COUNTERS, Core
from .dma import dma_tag_layout
from .isa import ErrorCode
from .memsys import BackingStoreSignature, MemorySystem
from .netnames import strip_unused_aliases

__all__ = ["Accelerator", "generate_verilog", "TOP_NAME"]

TOP_NAME = "dlfusion_accel"


class Accelerator(wiring.Component):
    """A multicore dlfusion accelerator for one :class:`HwConfig`.

    Members
    -------
    start : In(1), a one-cycle pulse.
    core_mask : In(cores), cores that run a stream.
    prog_addr : In(32 * cores), each core's first instruction line.
    mem : Out(BackingStoreSignature), the DRAM backing store.
    done : Out(1), all enabled cores reached END, or an error stopped the run.
    error_code, error_core, error_pc : the first error (``error_code`` an ``ErrorCode``).
    cycles : Out(48), cycles from start to done.
    counters : Out(ArrayLayout(COUNTERS, cores)), per-core counters (48 bits x 7 per core).
    barrier_go : Out(cores), bit ``i`` is high in the one cycle core ``i`` passes a barrier
        (all cores of a barrier's mask pass in the same cycle); lets a testbench time
        fusion groups without probing the cores.
    """

    def __init__(self, hw: HwConfig, *, clock_gating: bool = True):
        self.hw = hw
        self.clock_gating = bool(clock_gating)
        super().__init__({
            "start": In(1), "core_mask": In(hw.cores), "prog_addr": In(32 * hw.cores),
            "mem": Out(BackingStoreSignature(hw)),
            "done": Out(1), "error_code": Out(ErrorCode), "error_core": Out(4), "error_pc": Out(32),
            "cycles": Out(48), "counters": Out(data.ArrayLayout(COUNTERS, hw.cores)),
            "barrier_go": Out(hw.cores),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        # Ports 2i (instruction fetch, untagged) and 2i + 1 (DMA, tagged) belong to core i.
        m.submodules.memsys = memsys = MemorySystem(hw, [0, dma_tag_layout(hw).size] * hw.cores)
        wiring.connect(m, wiring.flipped(self.mem), memsys.mem)

        running = Signal()
        error = Signal()
        halt = Signal()
        m.d.comb += halt.eq(error)
        cores = []
        for index in range(hw.cores):
            core = Core(hw, index, clock_gating=self.clock_gating)
            m.submodules[f"core{index}"] = core
            cores.append(core)
            wiring.connect(m, core.fetch, getattr(memsys, f"req{2 * index}"))
            wiring.connect(m, core.fetch_resp, getattr(memsys, f"resp{2 * index}"))
            wiring.connect(m, core.dma, getattr(memsys, f"req{2 * index + 1}"))
            wiring.connect(m, core.dma_resp, getattr(memsys, f"resp{2 * index + 1}"))
            m.d.comb += [
                core.start.eq(self.start), core.enable.eq(self.core_mask[index]),
                core.prog_addr.eq(self.prog_addr[32 * index:32 * index + 32]), core.halt.eq(halt),
                self.counters[index].eq(core.counters),
            ]

        # Barrier: a core passes when every core in its mask waits with the same mask.
        for core in cores:
            ready = Cat((~core.barrier_mask[j]) | (other.barrier_arrive & (other.barrier_mask == core.barrier_mask))
                        for j, other in enumerate(cores)).all()
            m.d.comb += core.barrier_go.eq(core.barrier_arrive & ready)
        m.d.comb += self.barrier_go.eq(Cat(core.barrier_go for core in cores))

        all_finished = Cat(core.finished for core in cores).all()
        done = Signal()
        m.d.comb += self.done.eq(done)
        with m.If(self.start):
            m.d.sync += [running.eq(1), done.eq(0), self.cycles.eq(0)]
        with m.Elif(running & ~done):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(all_finished | error):
                m.d.sync += done.eq(1)

        # First error wins; the lowest core wins a tie.
        with m.If(running & ~error):
            for index in reversed(range(hw.cores)):
                with m.If(cores[index].error):
                    m.d.sync += [error.eq(1), self.error_code.eq(cores[index].error_code),
                                 self.error_core.eq(index), self.error_pc.eq(cores[index].error_pc)]

        # Watchdog: no progress anywhere for watchdog_cycles.
        idle_cycles = Signal(range(hw.watchdog_cycles + 1))
        progress = Cat(core.progress for core in cores).any() | memsys.busy
        with m.If(self.start | progress | ~running | done):
            m.d.sync += idle_cycles.eq(0)
        with m.Else():
            m.d.sync += idle_cycles.eq(idle_cycles + 1)
        with m.If(running & ~done & ~error & ~Cat(core.error for core in cores).any()
                  & (idle_cycles == hw.watchdog_cycles)):
            m.d.sync += [error.eq(1), self.error_code.eq(ErrorCode.WATCHDOG)]
            for index in reversed(range(hw.cores)):
                with m.If(~cores[index].finished):
                    m.d.sync += [self.error_core.eq(index), self.error_pc.eq(cores[index].pc)]
        return m


def generate_verilog(hw: HwConfig, *, debug_names: bool = True, clock_gating: bool = True) -> str:
    """Verilog of the accelerator for ``hw``, top module ``dlfusion_accel``.

    Parameters
    ----------
    hw : HwConfig
    debug_names : bool
        Keep the alias wires Amaranth declares beside the logic: a wire per field of
        every ``data.Layout``-shaped signal, and the names a module gives to nets that
        have a canonical name elsewhere (a submodule's ports as seen by its parent,
        signals naming a slice of an operator result). They are read by nothing, so
        ``verilator --lint-only -Wall`` reports each as UNUSEDSIGNAL, but they make
        waveforms easier to read. ``False`` removes exactly these wires (see
        :mod:`dlfusion.hw.netnames`); the logic is the same. ``dlfusion verilog`` writes
        the Verilog without them, simulation builds keep them.
    clock_gating : bool
        Run each unit of a core on a clock gated by the unit's ``awake`` (the default; idle units
        cost no simulation time), or every unit on the one clock (``False``). Same cycles.

    Returns
    -------
    str
    """
    top = Accelerator(hw, clock_gating=clock_gating)
    if debug_names:
        return verilog.convert(top, name=TOP_NAME, emit_src=False)
    text = strip_unused_aliases(rtlil.convert(top, name=TOP_NAME, emit_src=False))
    # The RTLIL-to-Verilog step of amaranth.back.verilog.convert (the same Yosys script).
    return verilog._convert_rtlil_text(text)
