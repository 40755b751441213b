"""The PE array: an ``L x L`` grid of int8 multipliers with int32 accumulation.

One loop iteration per cycle, in a three-stage pipeline:

* issue: generate the act / weight / accumulator addresses of the iteration,
  check them, and start the three scratchpad reads;
* multiply: ``x[r] - zp`` (9-bit signed) times the int8 weight block, reduced
  over the rows (MATMUL: ``L*L`` MACs), or one row (DEPTHWISE), or passed
  through (MAX);
* accumulate: add to (or max with, or overwrite) the old accumulator and write
  it back. The old value read at issue misses only the write of the previous
  cycle, which is forwarded, so iterations that hit the same accumulator back
  to back (fully connected layers, global pooling) are exact.

The next instruction starts issuing in the cycle after the last iteration of
the previous one, so a stream of instructions keeps the array busy.

On a sparse array (``HwConfig.sparse_patterns``) the issue stage of a sparse
MATMUL also computes the window lines ``act + j * act_sg`` (``j < M/N``),
checks each, and reads each from its activation bank (line ``a`` lives in bank
``a % G``; the lines are in distinct banks because ``act_sg`` is odd), and it
reads the block's metadata entry beside the weight block. The multiply stage
routes the banks' data back to window order and each multiplier selects its
activation from the 4 channels of its group by its 2-bit index. The pipeline
is the same: a sparse MATMUL takes the cycles of a dense one.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .config import HwConfig
from .isa import MATMUL_PAYLOAD, ErrorCode, MatmulMode, Opcode, Sparsity
from .sparse import INDEX_BITS
from .unit import StridedLoops, unit_members

__all__ = ["PeArray", "Multipliers"]


def _tree_sum(values):
    values = list(values)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


class Multipliers(wiring.Component):
    """The multipliers of the array and their reduction (combinational).

    With ``x[r] = act[r] - zp`` (bytes and zero point read as int8 if ``in_signed``, else
    uint8), output lane ``c`` is ``sum_r x[r] * W[r][c]`` (MATMUL), ``x[c] * W[w_row][c]``
    (DEPTHWISE) or ``x[c]`` (MAX).

    With sparse ``patterns``, a MATMUL of pattern N:M multiplies ``W[r][c]`` by window channel
    ``(r // N) * M + index[r][c]`` of the ``M/N`` activation lines instead (an ``M:1`` multiplexer
    in front of each multiplier); a dense MATMUL uses the first line as above.

    Parameters
    ----------
    lanes : int
    patterns : tuple of Sparsity
        The sparse patterns the array executes (none: the dense array).

    Members
    -------
    act : In(8 * lanes * G), the activation lines of the window (``G`` = the largest ``M/N``, 1
        dense), line ``j`` in bits ``8 * lanes * j`` on; a dense MATMUL reads line 0.
    weight : In(8 * lanes * lanes), a weight block, row ``r`` in bits ``8 * lanes * r`` on.
    mode : In(MatmulMode); in_signed : In(1); in_zp : In(8); w_row : In(5).
    index : In(2 * lanes * lanes), sparse only: the block's metadata entry, index ``(r, c)`` in bits
        ``2 * (r * lanes + c)`` on; sparse : In(Sparsity), sparse only.
    products : Out(32 * lanes), lane ``c`` in bits ``32 * c`` on (two's complement).
    """

    def __init__(self, lanes: int, patterns: tuple[Sparsity, ...] = ()):
        self.lanes = lanes
        self.patterns = tuple(patterns)
        self.window = max((p.window for p in self.patterns), default=1)
        sparse = {"index": In(INDEX_BITS * lanes * lanes), "sparse": In(Sparsity)} if self.patterns else {}
        super().__init__({
            "act": In(8 * lanes * self.window), "weight": In(8 * lanes * lanes), "mode": In(MatmulMode),
            "in_signed": In(1), "in_zp": In(8), "w_row": In(5), "products": Out(32 * lanes), **sparse,
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes

        def widen(byte, is_signed):
            return Mux(is_signed, byte.as_signed(), Cat(byte, 0).as_signed())

        zero_point = widen(self.in_zp, self.in_signed)
        x = []
        for r in range(lanes):
            value = Signal(signed(10), name=f"x{r}")
            m.d.comb += value.eq(widen(self.act[8 * r:8 * r + 8], self.in_signed) - zero_point)
            x.append(value)
        w = [[self.weight[8 * (r * lanes + c):8 * (r * lanes + c) + 8].as_signed() for c in range(lanes)]
             for r in range(lanes)]
        selected_row = Signal(8 * lanes)
        with m.Switch(self.w_row):
            for r in range(lanes):
                with m.Case(r):
                    m.d.comb += selected_row.eq(self.weight[8 * lanes * r:8 * lanes * (r + 1)])

        operand = self._select(m, x, widen, zero_point) if self.patterns else [[x[r]] * lanes for r in range(lanes)]

        product = [Signal(signed(32), name=f"v{c}") for c in range(lanes)]
        for c in range(lanes):
            with m.Switch(self.mode):
                with m.Case(MatmulMode.MATMUL):
                    m.d.comb += product[c].eq(_tree_sum(operand[r][c] * w[r][c] for r in range(lanes)))
                with m.Case(MatmulMode.DEPTHWISE):
                    m.d.comb += product[c].eq(x[c] * selected_row[8 * c:8 * c + 8].as_signed())
                with m.Default():
                    m.d.comb += product[c].eq(x[c])
        m.d.comb += self.products.eq(Cat(product))
        return m

    def _select(self, m, x, widen, zero_point):
        """The activation of each multiplier ``(r, c)`` of a sparse array: window channel
        ``(r // N) * M + index[r][c]`` of the ``M/N`` window lines (``M = 4``), or channel ``r`` of the
        first line for a dense MATMUL. Per row, the ``M`` channels of its group (by pattern), then per
        multiplier an ``M:1`` multiplexer by its index (``r % M`` when dense)."""
        lanes = self.lanes
        group_size = 4
        # Window channel k is lane k % L of line k // L, minus the zero point (x[k] for k < L).
        x = list(x)
        for k in range(lanes, lanes * self.window):
            value = Signal(signed(10), name=f"x{k}")
            m.d.comb += value.eq(widen(self.act[8 * k:8 * k + 8], self.in_signed) - zero_point)
            x.append(value)
        # The indices in use: the metadata's, or r % M for a dense MATMUL (channel r of line 0).
        index = Signal(INDEX_BITS * lanes * lanes)
        dense_index = sum((r % group_size) << (INDEX_BITS * (r * lanes + c))
                          for r in range(lanes) for c in range(lanes))
        m.d.comb += index.eq(Mux(self.sparse == Sparsity.DENSE, dense_index, self.index))
        # A row's group packed in 16-bit slots, so that the M:1 multiplexer of a multiplier is one
        # shift by 16 * index (one 64-bit shift in a simulator, rather than a case per multiplier).
        slot = 16
        operand = []
        for r in range(lanes):
            group = Signal(slot * group_size, name=f"group{r}")

            def packed(first):
                return Cat(Cat(x[first + q], Const(0, slot - 10)) for q in range(group_size))

            with m.Switch(self.sparse):
                for pattern in self.patterns:
                    n, _ = pattern.pattern
                    with m.Case(pattern):
                        m.d.comb += group.eq(packed((r // n) * group_size))
                with m.Default():
                    m.d.comb += group.eq(packed((r // group_size) * group_size))
            row = []
            for c in range(lanes):
                bit = INDEX_BITS * (r * lanes + c)
                shift = Cat(Const(0, exact_log2(slot)), index[bit:bit + INDEX_BITS])
                row.append((group >> shift)[:10].as_signed())
            operand.append(row)
        return operand


class PeArray(wiring.Component):
    """The compute unit of one core.

    Members
    -------
    act_read : In(ReadPort.Signature), an activation scratchpad read port; on a sparse array an
        array of ``sparse_window`` ports, one per activation bank (row addresses).
    meta_read : In(ReadPort.Signature), sparse array only: a metadata store read port (an entry).
    weight_read : In(ReadPort.Signature), a weight scratchpad read port (a whole ``L x L`` block).
    acc_read : In(ReadPort.Signature), an accumulator read port (transparent for ``acc_write``).
    acc_write : In(WritePort.Signature), the accumulator write port.

    The issue stage computes addresses wider than the scratchpads' and checks them against the
    depth before it reads or writes.
    """

    #: The unit's view of the instruction payload (MATMUL; SYNC reads it as an empty loop).
    PAYLOAD = MATMUL_PAYLOAD

    def __init__(self, hw: HwConfig):
        self.hw = hw
        lanes = hw.lanes
        act_bits, w_bits, acc_bits = (exact_log2(depth) for depth in
                                      (hw.act_lines, hw.weight_blocks, hw.acc_entries))
        self.banks = hw.sparse_window
        if self.banks == 1:
            act_read = In(memory.ReadPort.Signature(addr_width=act_bits, shape=8 * lanes))
            sparse = {}
        else:
            # A port per activation bank (line a is row a // G of bank a % G) and the metadata store.
            act_read = In(memory.ReadPort.Signature(addr_width=act_bits - exact_log2(self.banks),
                                                    shape=8 * lanes)).array(self.banks)
            sparse = {"meta_read": In(memory.ReadPort.Signature(addr_width=w_bits,
                                                                shape=INDEX_BITS * lanes * lanes))}
        super().__init__({
            **unit_members(self.PAYLOAD),
            "act_read": act_read,
            "weight_read": In(memory.ReadPort.Signature(addr_width=w_bits, shape=8 * lanes * lanes)),
            "acc_read": In(memory.ReadPort.Signature(addr_width=acc_bits, shape=32 * lanes)),
            "acc_write": In(memory.WritePort.Signature(addr_width=acc_bits, shape=32 * lanes)),
            **sparse,
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        lanes = hw.lanes
        head = self.queue.payload

        # -- issue stage ---------------------------------------------------------------------
        active = Signal()
        instr = Signal(MATMUL_PAYLOAD)
        is_sync = Signal()
        signal_mask = Signal(8)
        pc = Signal(32)
        m.submodules.loops = loops = StridedLoops(("act", "weight", "acc"))
        act, weight, acc = loops.act.value, loops.weight.value, loops.acc.value
        stopped = Signal()

        last = Signal()
        m.d.comb += last.eq(is_sync | (loops.last0 & loops.last1))

        act_bad = act >= hw.act_lines
        if self.banks > 1:
            window = self._window(m, act)
            act_bad = act_bad | Cat(used & (line >= hw.act_lines) for line, used in window[1:]).any()
        bad = Signal()
        m.d.comb += bad.eq(~is_sync & (act_bad | (weight >= hw.weight_blocks)
                                       | (acc >= hw.acc_entries)
                                       | ((instr.mode == MatmulMode.DEPTHWISE) & (instr.w_row >= lanes))))
        issue = Signal()
        m.d.comb += issue.eq(active & ~bad & ~self.halt & ~stopped)
        with m.If(active & bad & ~self.halt & ~stopped):
            m.d.sync += [self.error.eq(1), self.error_code.eq(ErrorCode.SRAM_RANGE), self.error_pc.eq(pc),
                         stopped.eq(1)]

        if self.banks == 1:
            m.d.comb += [self.act_read.addr.eq(act), self.act_read.en.eq(issue & ~is_sync)]
        else:
            self._read_banks(m, window, issue & ~is_sync)
            m.d.comb += [self.meta_read.addr.eq(weight),
                         self.meta_read.en.eq(issue & ~is_sync & (instr.sparse != Sparsity.DENSE))]
        m.d.comb += [
            self.weight_read.addr.eq(weight), self.weight_read.en.eq(issue & ~is_sync),
            self.acc_read.addr.eq(acc), self.acc_read.en.eq(issue & ~is_sync),
        ]

        with m.If(issue & last):
            m.d.sync += active.eq(0)
        m.d.comb += loops.advance.eq(issue & ~last)

        free = Signal()
        m.d.comb += free.eq(~stopped & ~self.halt & (~active | (issue & last)))
        m.d.comb += [self.can_start.eq(free), self.queue.ready.eq(free & self.sem_ok)]
        with m.If(self.queue.valid & self.queue.ready):
            payload = head.payload
            empty = (payload.n0 == 0) | (payload.n1 == 0)
            sync = head.opcode == Opcode.SYNC
            # SYNC and empty instructions pass one no-op through the pipeline, so that they
            # complete (and signal) after every earlier instruction of this unit.
            m.d.sync += [
                active.eq(1), is_sync.eq(sync | empty),
                instr.eq(payload), signal_mask.eq(head.signal), pc.eq(head.pc),
            ]
            m.d.comb += [
                loops.start.eq(1), loops.n0.eq(payload.n0), loops.n1.eq(payload.n1),
                loops.act.base.eq(payload.act_addr), loops.act.s0.eq(payload.act_s0),
                loops.act.s1.eq(payload.act_s1),
                loops.weight.base.eq(payload.w_addr), loops.weight.s0.eq(payload.w_s0),
                loops.weight.s1.eq(payload.w_s1),
                loops.acc.base.eq(payload.acc_addr), loops.acc.s0.eq(payload.acc_s0),
                loops.acc.s1.eq(payload.acc_s1),
            ]

        # -- multiply stage ------------------------------------------------------------------
        # The control of an iteration travels beside its data; the input format (sign, zero
        # point) and the depthwise weight row are only needed by the multiply stage.
        control = data.StructLayout({
            "valid": 1, "write": 1, "last": 1, "mode": MatmulMode, "accumulate": 1,
            "acc": 16, "signal": 8, "pc": 32,
        })
        # A sparse array's multiply stage also needs the pattern and the bank of each window line.
        sparse = {"sparse": Sparsity, "banks": data.ArrayLayout(exact_log2(self.banks), self.banks)} \
            if self.banks > 1 else {}
        multiply = data.StructLayout({"control": control, "in_signed": 1, "in_zp": 8, "w_row": 5, **sparse})
        stage1 = Signal(multiply)
        control1 = stage1.control
        m.d.sync += [
            control1.valid.eq(issue), control1.write.eq(~is_sync), control1.last.eq(last),
            control1.mode.eq(instr.mode), control1.accumulate.eq(instr.accumulate),
            control1.acc.eq(acc), control1.signal.eq(signal_mask), control1.pc.eq(pc),
            stage1.in_signed.eq(instr.in_signed), stage1.in_zp.eq(instr.in_zp), stage1.w_row.eq(instr.w_row),
        ]

        patterns = tuple(Sparsity.from_label(label) for label in hw.sparse_patterns)
        m.submodules.multipliers = multipliers = Multipliers(lanes, patterns)
        if self.banks == 1:
            m.d.comb += multipliers.act.eq(self.act_read.data)
        else:
            bank_bits = exact_log2(self.banks)
            m.d.sync += [stage1.sparse.eq(instr.sparse),
                         *(stage1.banks[j].eq(line[:bank_bits]) for j, (line, _) in enumerate(window))]
            bank_data = Array(port.data for port in self.act_read)
            m.d.comb += [multipliers.act.eq(Cat(bank_data[stage1.banks[j]] for j in range(self.banks))),
                         multipliers.index.eq(self.meta_read.data), multipliers.sparse.eq(stage1.sparse)]
        m.d.comb += [
            multipliers.weight.eq(self.weight_read.data),
            multipliers.mode.eq(control1.mode), multipliers.in_signed.eq(stage1.in_signed),
            multipliers.in_zp.eq(stage1.in_zp), multipliers.w_row.eq(stage1.w_row),
        ]

        stage2 = Signal(control)
        stage2_values = Signal(32 * lanes)
        stage2_old = Signal(32 * lanes)
        m.d.sync += [stage2.eq(control1), stage2_values.eq(multipliers.products),
                     stage2_old.eq(self.acc_read.data)]

        # -- accumulate stage ----------------------------------------------------------------
        forward_valid = Signal()
        forward_addr = Signal(16)
        forward_data = Signal(32 * lanes)
        old = Signal(32 * lanes)
        m.d.comb += old.eq(Mux(forward_valid & (forward_addr == stage2.acc), forward_data, stage2_old))
        result = []
        for c in range(lanes):
            v = stage2_values[32 * c:32 * c + 32].as_signed()
            o = old[32 * c:32 * c + 32].as_signed()
            lane = Signal(32, name=f"acc_new{c}")
            with m.If(~stage2.accumulate):
                m.d.comb += lane.eq(v)
            with m.Elif(stage2.mode == MatmulMode.MAX):
                m.d.comb += lane.eq(Mux(v > o, v, o))
            with m.Else():
                m.d.comb += lane.eq(v + o)
            result.append(lane)
        write = stage2.valid & stage2.write
        m.d.comb += [self.acc_write.addr.eq(stage2.acc), self.acc_write.en.eq(write),
                     self.acc_write.data.eq(Cat(result))]
        m.d.sync += [forward_valid.eq(write), forward_addr.eq(stage2.acc), forward_data.eq(Cat(result))]
        with m.If(stage2.valid & stage2.last):
            m.d.comb += [self.done.eq(1), self.done_signal.eq(stage2.signal), self.done_pc.eq(stage2.pc)]

        m.d.comb += [
            self.busy.eq(active | control1.valid | stage2.valid),
            self.progress.eq(issue | stage2.valid),
            # Idle, the pipeline data and the forwarding data are read by nothing: what can change
            # is an instruction starting, a stage emptying or the forwarding bit clearing.
            self.awake.eq(self.busy | forward_valid | self.queue.valid),
        ]
        return m

    def _window(self, m, act):
        """The lines of a sparse window, ``act + j * act_sg`` for ``j < G``, each with whether the
        instruction's pattern reads it (line 0 always). ``j * act_sg`` is computed once, when the
        instruction starts."""
        hw = self.hw
        window = [(act, 1)]
        start = self.queue.valid & self.queue.ready
        payload = self.queue.payload.payload
        for j in range(1, self.banks):
            offset = Signal(18, name=f"window_offset{j}")
            used = Signal(name=f"window_used{j}")
            with m.If(start):
                m.d.sync += [offset.eq(j * payload.act_sg),
                             used.eq(Cat(payload.sparse == Sparsity.from_label(label)
                                         for label in hw.sparse_patterns
                                         if Sparsity.from_label(label).window > j).any())]
            line = Signal(34, name=f"window_line{j}")
            m.d.comb += line.eq(act + offset)
            window.append((line, used))
        return window

    def _read_banks(self, m, window, enable):
        """Each activation bank reads the window line that falls in it (one at most: the window's
        stride is odd); a dense MATMUL reads line 0 from its bank."""
        bank_bits = exact_log2(self.banks)
        for bank, port in enumerate(self.act_read):
            hits = [used & (line[:bank_bits] == bank) for line, used in window]
            for (line, _), hit in zip(window, hits, strict=True):
                with m.If(hit):
                    m.d.comb += port.addr.eq(line[bank_bits:])
            m.d.comb += port.en.eq(enable & Cat(hits).any())
