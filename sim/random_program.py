"""Random valid programs, for differential testing of the RTL against the golden simulator.

A random program is a serial chain of random instructions (each waits on its
own unit's semaphore and signals the semaphore of the next instruction's unit,
so it runs in program order and is race-free whatever the timing) over a
small window of every scratchpad: LOADs with random strides and padding,
MATMULs in every mode with random zero points and strides (including stride-0
accumulation), REQUANTs and ADDs with random parameters and clamps, STOREs.
On a HwConfig with lookup tables it also loads the whole table store at the
start, reloads parts of it, and about half of its REQUANTs and ADDs look their
output up in a random table. On a HwConfig with sparse patterns it loads random
metadata for the weight window (random indices, repeated ones too), reloads
parts of it, and emits sparse MATMULs of every supported pattern with odd
window strides. It ends by storing the whole act window and a
requantized view of the accumulator window to an output region, so every state
difference shows up in the output.
"""

from __future__ import annotations

import numpy as np

from ..hw.asm import DramAllocator, StreamBuilder, assemble, pack_params
from ..hw.binary import Binary, Segment, Tensor
from ..hw.config import HwConfig
from ..hw.isa import Buffer, MatmulMode, Opcode, Sparsity, Unit

__all__ = ["random_program", "ACT_WINDOW", "ACC_WINDOW", "WEIGHT_WINDOW"]

ACT_WINDOW = 64      # act lines used
ACC_WINDOW = 16      # accumulator entries used
WEIGHT_WINDOW = 4    # weight blocks used
DATA_LINES = 96
UNIT_TOKEN = {Unit.DMA: 1, Unit.PE: 2, Unit.PPU: 4}   # semaphore i: unit i may go


class _Chain:
    """Collects instructions, then links them into a program-order chain of semaphores."""

    def __init__(self):
        self.items = []

    def emit(self, opcode, unit, **fields):
        self.items.append((opcode, unit, fields))

    def write(self, stream: StreamBuilder) -> None:
        first_unit = self.items[0][1]
        stream.sync(Unit.DMA, signal=UNIT_TOKEN[first_unit])
        for index, (opcode, unit, fields) in enumerate(self.items):
            following = self.items[index + 1][1] if index + 1 < len(self.items) else None
            signal = UNIT_TOKEN[following] if following is not None else 0
            if opcode is Opcode.SYNC:
                stream.sync(unit, wait=UNIT_TOKEN[unit], signal=signal)
            else:
                stream.emit(opcode, wait=UNIT_TOKEN[unit], signal=signal, **fields)
        stream.end()


def _span(counts, strides) -> int:
    return sum((n - 1) * s for n, s in zip(counts, strides, strict=True))


def _loops(rng, window: int, dims: int, inner_stride: int | None = None):
    """Random counts and strides whose furthest address stays below ``window``.

    With ``inner_stride`` the innermost stride is fixed (the DMA's is always 1)."""
    while True:
        counts = [int(rng.integers(1, 5)) for _ in range(dims)]
        strides = [int(rng.choice([0, 1, 2, 3, 5, 8])) for _ in range(dims)]
        if inner_stride is not None:
            strides[-1] = inner_stride
        if _span(counts, strides) < window:
            base = int(rng.integers(0, window - _span(counts, strides)))
            return base, counts, strides


def _look_up(rng, hw: HwConfig) -> dict:
    """The look-up fields of a REQUANT or ADD: none, or a random table (each half the time)."""
    if rng.random() < 0.5:
        return {}
    return dict(lut=1, lut_table=int(rng.integers(0, hw.lut_tables)))


def _weight_window(rng, n1: int, n0: int) -> tuple[int, int, int]:
    """A weight block address and strides whose blocks stay in the weight window."""
    w_s1, w_s0 = (int(rng.choice([0, 1])) for _ in range(2))
    w = int(rng.integers(0, WEIGHT_WINDOW - _span((n1, n0), (w_s1, w_s0)))) \
        if _span((n1, n0), (w_s1, w_s0)) < WEIGHT_WINDOW else 0
    if _span((n1, n0), (w_s1, w_s0)) >= WEIGHT_WINDOW:
        w_s1 = w_s0 = 0
    return w, w_s1, w_s0


def _acc_window(rng, n1: int, n0: int) -> tuple[int, int, int]:
    """An accumulator address and strides whose entries stay in the accumulator window."""
    acc_s1, acc_s0 = (int(rng.choice([0, 1, 2])) for _ in range(2))
    if _span((n1, n0), (acc_s1, acc_s0)) >= ACC_WINDOW:
        acc_s1 = acc_s0 = 0
    acc = int(rng.integers(0, ACC_WINDOW - _span((n1, n0), (acc_s1, acc_s0))))
    return acc, acc_s1, acc_s0


def _sparse_matmul(rng, hw: HwConfig) -> dict:
    """The fields of a random sparse MATMUL: a pattern of ``hw``, an odd window stride, every window
    line in the act window."""
    sparsity = Sparsity.from_label(str(rng.choice(list(hw.sparse_patterns))))
    reach = ACT_WINDOW // 2
    act_sg = 2 * int(rng.integers(0, reach // (2 * max(1, sparsity.window - 1)))) + 1
    act, (n1, n0), (act_s1, act_s0) = _loops(rng, ACT_WINDOW - (sparsity.window - 1) * act_sg, 2)
    acc, acc_s1, acc_s0 = _acc_window(rng, n1, n0)
    w, w_s1, w_s0 = _weight_window(rng, n1, n0)
    return dict(mode=MatmulMode.MATMUL, sparse=sparsity, act_sg=act_sg, accumulate=int(rng.integers(0, 2)),
                in_signed=int(rng.integers(0, 2)), in_zp=int(rng.integers(0, 256)),
                w_addr=w, w_s1=w_s1, w_s0=w_s0, act_addr=act, act_s1=act_s1, act_s0=act_s0,
                acc_addr=acc, acc_s1=acc_s1, acc_s0=acc_s0, n1=n1, n0=n0)


def random_program(hw: HwConfig, seed: int, length: int = 24, *, lookups: bool | None = None,
                   sparse: bool | None = None) -> tuple[Binary, dict]:
    """A random race-free single-core program and its (empty) input dict.

    ``lookups`` (by default: whether ``hw`` has lookup tables) adds table loads and look-ups;
    without them a seed gives the program it gave before lookup tables existed. ``sparse`` (by
    default: whether ``hw`` has sparse patterns) adds metadata loads and sparse MATMULs; without
    them a seed gives the program it gave before sparsity existed.
    """
    if lookups is None:
        lookups = hw.lut_tables > 0
    if lookups and hw.lut_tables == 0:
        raise ValueError(f"look-ups need a HwConfig with lookup tables, not lut_tables={hw.lut_tables}")
    if sparse is None:
        sparse = bool(hw.sparse_patterns)
    if sparse and not hw.sparse_patterns:
        raise ValueError("sparse MATMULs need a HwConfig with sparse patterns, not sparse_patterns=()")
    rng = np.random.default_rng(seed)
    lanes = hw.lanes
    lpe = hw.param_lines_per_entry
    dram = DramAllocator(hw)
    data_line = dram.allocate(DATA_LINES, "random data")
    data = rng.integers(0, 256, size=DATA_LINES * lanes, dtype=np.uint8).tobytes()
    params = np.zeros((16, lanes), dtype=np.uint32)
    for entry in range(0, 8, 2):
        params[entry] = rng.integers(-50_000, 50_000, size=lanes).astype(np.int32).view(np.uint32)
        mult = rng.uniform(1e-3, 0.5, size=lanes) * rng.choice([-1, 1], size=lanes)
        params[entry + 1] = mult.astype(np.float32).view(np.uint32)
    for entry in range(8, 16, 3):
        ra, rb = (2.0 ** rng.uniform(-10, 2, size=lanes) for _ in range(2))
        fixed = rng.uniform(-300, 300, size=lanes)
        for offset, values in enumerate((ra, rb, fixed)):
            if entry + offset < 16:
                params[entry + offset] = values.astype(np.float32).view(np.uint32)
    param_line = dram.allocate(16 * lpe, "params")
    out_lines = ACT_WINDOW + ACC_WINDOW
    output = Tensor("dram_out", dram.allocate(out_lines, "output"), (out_lines * lanes,), "uint8", "flat")
    segments = [Segment("data", data_line, data), Segment("params", param_line, pack_params(params))]
    if lookups:
        table_line = dram.allocate(hw.lut_lines, "tables")
        tables = np.random.default_rng((seed, 1)).integers(0, 256, size=hw.lut_lines * lanes, dtype=np.uint8)
        segments.append(Segment("tables", table_line, tables.tobytes()))
    look_up = (lambda: _look_up(rng, hw)) if lookups else dict

    stream = StreamBuilder(0)
    chain = _Chain()
    chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.PARAM, dram_addr=param_line, n2=1, n1=1, n0=16 * lpe)
    chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.WEIGHT, dram_addr=data_line,
                n2=1, n1=1, n0=WEIGHT_WINDOW * lanes)
    chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.ACT, dram_addr=data_line + 7, n2=1, n1=1, n0=ACT_WINDOW)
    if lookups:
        chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.LUT, dram_addr=table_line, n2=1, n1=1, n0=hw.lut_lines)
    meta_window = WEIGHT_WINDOW * hw.meta_lines_per_block
    if sparse:
        # Random bytes as metadata: every index of the weight window random, repeated ones too.
        sparse_rng = np.random.default_rng((seed, 2))
        chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.WEIGHT, meta=1, n2=1, n1=1, n0=meta_window,
                   dram_addr=data_line + int(sparse_rng.integers(0, DATA_LINES - meta_window + 1)))

    kinds = ["load", "load_weight", "matmul", "matmul", "matmul", "requant", "add", "store", "sync"]
    if lookups:
        kinds.append("load_table")
    if sparse:
        kinds += ["sparse_matmul", "sparse_matmul", "sparse_matmul", "load_meta"]
    for _ in range(length):
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "load":
            # Destination lines are distinct: overlapping destinations within one LOAD are
            # unspecified (pad lines are written at issue, data lines when DRAM answers).
            while True:
                base, (n2, n1, n0), (s2, s1, _) = _loops(rng, ACT_WINDOW, 3, inner_stride=1)
                lines = [base + i2 * s2 + i1 * s1 + i0 for i2 in range(n2) for i1 in range(n1) for i0 in range(n0)]
                if len(set(lines)) == len(lines):
                    break
            pads = [int(rng.integers(0, 3)) for _ in range(4)]
            chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.ACT, sram_addr=base, sram_s1=s1, sram_s2=s2,
                       dram_addr=data_line + int(rng.integers(0, 40)), dram_s1=int(rng.integers(0, 6)),
                       dram_s2=int(rng.integers(0, 10)), n0=n0, n1=n1, n2=n2, pad_top=pads[0],
                       pad_bottom=pads[1], pad_left=pads[2], pad_right=pads[3],
                       pad_value=int(rng.integers(0, 256)))
        elif kind == "load_weight":
            line = int(rng.integers(0, WEIGHT_WINDOW * lanes - 4))
            chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.WEIGHT, sram_addr=line, n2=1, n1=1,
                        n0=int(rng.integers(1, 5)), dram_addr=data_line + int(rng.integers(0, 80)))
        elif kind == "matmul":
            act, (n1, n0), (act_s1, act_s0) = _loops(rng, ACT_WINDOW, 2)
            acc, acc_s1, acc_s0 = _acc_window(rng, n1, n0)
            w, w_s1, w_s0 = _weight_window(rng, n1, n0)
            chain.emit(Opcode.MATMUL, Unit.PE, mode=MatmulMode(int(rng.integers(0, 3))),
                        accumulate=int(rng.integers(0, 2)), in_signed=int(rng.integers(0, 2)),
                        in_zp=int(rng.integers(0, 256)), w_row=int(rng.integers(0, lanes)),
                        w_addr=w, w_s1=w_s1, w_s0=w_s0, act_addr=act, act_s1=act_s1, act_s0=act_s0,
                        acc_addr=acc, acc_s1=acc_s1, acc_s0=acc_s0, n1=n1, n0=n0)
        elif kind == "requant":
            acc, (n1, n0), (acc_s1, acc_s0) = _loops(rng, ACC_WINDOW, 2)
            out_s1, out_s0 = int(rng.choice([1, 4, 8])), 1
            out = int(rng.integers(0, ACT_WINDOW - _span((n1, n0), (out_s1, out_s0))))
            lo, hi = sorted(int(v) for v in rng.integers(0, 256, size=2))
            chain.emit(Opcode.REQUANT, Unit.PPU, acc_addr=acc, acc_s1=acc_s1, acc_s0=acc_s0, out_addr=out,
                        out_s1=out_s1, out_s0=out_s0, n1=n1, n0=n0, param_addr=2 * int(rng.integers(0, 4)),
                        out_signed=int(rng.integers(0, 2)), out_zp=int(rng.integers(0, 256)),
                        clamp_lo=lo if rng.random() < 0.3 else 0x80, clamp_hi=hi if rng.random() < 0.3 else 0x7F,
                        **look_up())
        elif kind == "add":
            # The output either is the A operand in place or overlaps no operand line:
            # an ADD that reads a line an earlier iteration of itself wrote is unspecified.
            while True:
                (a, (n1, n0), (a_s1, a_s0)) = _loops(rng, ACT_WINDOW, 2)
                span = _span((n1, n0), (a_s1, a_s0))
                b = int(rng.integers(0, ACT_WINDOW - span))
                out = a if rng.random() < 0.3 else int(rng.integers(0, ACT_WINDOW - span))
                grid = [i1 * a_s1 + i0 * a_s0 for i1 in range(n1) for i0 in range(n0)]
                outs = [out + g for g in grid]
                reads = [a + g for g in grid] + [b + g for g in grid]
                if out == a and not set(outs) & {b + g for g in grid} or not set(outs) & set(reads):
                    if len(set(outs)) == len(outs):
                        break
            signed = int(rng.integers(0, 2))
            chain.emit(Opcode.ADD, Unit.PPU, a_addr=a, a_s1=a_s1, a_s0=a_s0, b_addr=b, b_s1=a_s1, b_s0=a_s0,
                       out_addr=out, out_s1=a_s1, out_s0=a_s0, n1=n1, n0=n0,
                       param_addr=8 + 3 * int(rng.integers(0, 2)), in_signed=signed, out_signed=signed,
                       out_zp=int(rng.integers(0, 256)) if rng.random() < 0.3 else 0,
                       clamp_lo=0x80 if signed else 0, clamp_hi=0x7F if signed else 0xFF, **look_up())
        elif kind == "store":
            base, (n1, n0), (s1, _) = _loops(rng, ACT_WINDOW, 2, inner_stride=1)
            chain.emit(Opcode.STORE, Unit.DMA, buffer=Buffer.ACT, sram_addr=base, sram_s1=s1, n2=1, n1=n1,
                        n0=n0, dram_addr=output.dram_line + int(rng.integers(0, ACT_WINDOW - n1 * n0 + 1)),
                        dram_s1=n0)
        elif kind == "load_table":
            # Part of the table store: whole rows of distinct lines, from anywhere in the data.
            n0 = int(rng.integers(1, hw.lut_lines_per_table + 1))
            n1 = int(rng.integers(1, 3)) if 2 * n0 <= hw.lut_lines else 1
            dram_s1 = int(rng.integers(0, 5))
            sram = int(rng.integers(0, hw.lut_lines - n1 * n0 + 1))
            chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.LUT, sram_addr=sram, sram_s1=n0, n2=1, n1=n1, n0=n0,
                       dram_s1=dram_s1,
                       dram_addr=data_line + int(rng.integers(0, DATA_LINES - (n1 - 1) * dram_s1 - n0 + 1)),
                       pad_left=int(rng.integers(0, 2)) if n0 > 1 else 0, pad_value=int(rng.integers(0, 256)))
        elif kind == "sparse_matmul":
            chain.emit(Opcode.MATMUL, Unit.PE, **_sparse_matmul(rng, hw))
        elif kind == "load_meta":
            # Part of the metadata window, from anywhere in the data.
            n0 = int(rng.integers(1, meta_window + 1))
            chain.emit(Opcode.LOAD, Unit.DMA, buffer=Buffer.WEIGHT, meta=1, n2=1, n1=1, n0=n0,
                       sram_addr=int(rng.integers(0, meta_window - n0 + 1)),
                       dram_addr=data_line + int(rng.integers(0, DATA_LINES - n0 + 1)))
        else:
            chain.emit(Opcode.SYNC, Unit(int(rng.integers(0, 3))))
    # Make every scratchpad window observable.
    chain.emit(Opcode.REQUANT, Unit.PPU, acc_addr=0, acc_s1=0, acc_s0=1, out_addr=0, out_s1=0, out_s0=1,
                n1=1, n0=0, param_addr=0)   # an empty instruction (n0 = 0) must be harmless
    chain.emit(Opcode.STORE, Unit.DMA, buffer=Buffer.ACT, sram_addr=0, n2=1, n1=1, n0=ACT_WINDOW,
                dram_addr=output.dram_line)
    chain.emit(Opcode.REQUANT, Unit.PPU, acc_addr=0, acc_s1=0, acc_s0=1, out_addr=0, out_s1=0, out_s0=1,
                n1=1, n0=ACC_WINDOW, param_addr=0, out_signed=1, clamp_lo=0x80, clamp_hi=0x7F)
    chain.emit(Opcode.STORE, Unit.DMA, buffer=Buffer.ACT, sram_addr=0, n2=1, n1=1, n0=ACC_WINDOW,
                dram_addr=output.dram_line + ACT_WINDOW)
    chain.write(stream)
    binary = assemble(hw, [stream], segments, dram, [], [output], {"random_program": seed})
    return binary, {}
