"""The dlfusion instruction set, defined once.

The Amaranth layouts below are the single definition of the instruction
format: the RTL decoder views fetched bits through :data:`INSTRUCTION`, and the
Python encoder/decoder (:func:`encode`, :func:`decode`) read field offsets and
widths from the same layouts. The golden simulator (``dlfusion.sim.golden``)
defines what each instruction does; ``docs/isa.md`` describes it for people.

Every instruction is 256 bits: a 24-bit header (opcode, semaphore wait mask,
semaphore signal mask) and a 232-bit payload whose layout depends on the
opcode.
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from .errors import InputError

__all__ = [
    "INSTR_BITS", "NUM_SEMAPHORES", "Opcode", "Unit", "Buffer", "MatmulMode", "ErrorCode",
    "Sparsity", "INSTRUCTION", "PAYLOADS", "IsaError", "encode", "decode", "encode_program", "decode_program",
    "unit_of",
]

INSTR_BITS = 256
NUM_SEMAPHORES = 8
SEMAPHORE_MAX = 255


class Opcode(enum.Enum, shape=6):
    """Operation codes. Zero is deliberately invalid so that zeroed memory traps."""
    END = 1       #: wait for all units to drain, then the core's stream is finished
    SYNC = 2      #: no-op executed by one unit, only to wait on / signal semaphores
    BARRIER = 3   #: wait for all units to drain, then for every core in the mask
    LOAD = 4      #: DMA: DRAM -> scratchpad (act, weight, param), 3 nested loops, padding
    STORE = 5     #: DMA: activation scratchpad -> DRAM, 3 nested loops
    MATMUL = 6    #: PE array: matmul / depthwise / max into the accumulators, 2 loops
    REQUANT = 7   #: PPU: accumulators + bias -> float32 multiply -> int8/uint8 activations
    ADD = 8       #: PPU: two quantized activation tensors -> quantized sum (QLinearAdd)


class Unit(enum.Enum, shape=2):
    """Execution units of a core; each has its own in-order queue."""
    DMA = 0
    PE = 1
    PPU = 2


class Buffer(enum.Enum, shape=2):
    """DMA-addressable scratchpads."""
    ACT = 0
    WEIGHT = 1
    PARAM = 2
    LUT = 3      #: the lookup-table store (``BAD_FIELD`` on a HwConfig with ``lut_tables = 0``)


class MatmulMode(enum.Enum, shape=2):
    MATMUL = 0     #: acc[c] (+)= sum_r (x[r] - zp) * W[r][c]
    DEPTHWISE = 1  #: acc[c] (+)= (x[c] - zp) * W[w_row][c]
    MAX = 2        #: acc[c] = max(acc[c], x[c] - zp)   (or = when not accumulating)


class Sparsity(enum.Enum, shape=2):
    """The N:M weight pattern of a MATMUL (``MATMUL`` mode only): in every group of M input channels at
    most N weights are nonzero; the weight block holds the N values of each group and the metadata store
    their indices, so one iteration reduces ``M/N`` activation lines."""
    DENSE = 0
    S2_4 = 1     #: 2:4, two activation lines per iteration
    S1_4 = 2     #: 1:4, four activation lines per iteration

    @property
    def pattern(self) -> tuple[int, int] | None:
        """``(N, M)``, or None for DENSE."""
        return {Sparsity.S2_4: (2, 4), Sparsity.S1_4: (1, 4)}.get(self)

    @property
    def label(self) -> str:
        """``"2:4"``, ``"1:4"`` or ``"dense"`` (HwConfig.sparse_patterns uses these)."""
        pattern = self.pattern
        return "dense" if pattern is None else f"{pattern[0]}:{pattern[1]}"

    @property
    def window(self) -> int:
        """Activation lines one iteration reads (``M/N``; 1 for DENSE)."""
        pattern = self.pattern
        return 1 if pattern is None else pattern[1] // pattern[0]

    @classmethod
    def from_label(cls, label: str) -> Sparsity:
        for member in cls:
            if member.label == label:
                return member
        raise ValueError(label)


class ErrorCode(enum.Enum, shape=4):
    """Error status reported by the hardware and the golden simulator."""
    NONE = 0
    BAD_OPCODE = 1     #: opcode not in :class:`Opcode`
    BAD_FIELD = 2      #: reserved value in a field (buffer, mode, unit, barrier mask, sparse pattern)
    SRAM_RANGE = 3     #: a scratchpad address beyond the buffer depth
    DRAM_RANGE = 4     #: a DRAM line address beyond the DRAM size
    FETCH_RANGE = 5    #: the instruction stream runs past the end of DRAM
    SEM_OVERFLOW = 6   #: a semaphore signalled past 255
    WATCHDOG = 7       #: no progress for ``watchdog_cycles`` (deadlock or broken barrier)


def unit_of(opcode: Opcode) -> Unit | None:
    """The unit that executes ``opcode`` (``None`` for END and BARRIER, run by the dispatcher)."""
    return {Opcode.LOAD: Unit.DMA, Opcode.STORE: Unit.DMA, Opcode.MATMUL: Unit.PE,
            Opcode.REQUANT: Unit.PPU, Opcode.ADD: Unit.PPU}.get(opcode)


u = unsigned

DMA_PAYLOAD = data.StructLayout({
    "buffer": Buffer,
    "sram_addr": u(16), "sram_s1": u(16), "sram_s2": u(16),
    "dram_addr": u(32), "dram_s1": u(24), "dram_s2": u(32),
    "n0": u(12), "n1": u(12), "n2": u(12),
    "pad_top": u(4), "pad_bottom": u(4), "pad_left": u(4), "pad_right": u(4),
    "pad_value": u(8),
    "meta": u(1),
})

MATMUL_PAYLOAD = data.StructLayout({
    "mode": MatmulMode,
    "accumulate": u(1),
    "in_signed": u(1),
    "in_zp": u(8),
    "w_row": u(5),
    "w_addr": u(12), "w_s1": u(12), "w_s0": u(12),
    "act_addr": u(16), "act_s1": u(16), "act_s0": u(16),
    "acc_addr": u(16), "acc_s1": u(16), "acc_s0": u(16),
    "n1": u(12), "n0": u(12),
    "sparse": Sparsity, "act_sg": u(16),
})

REQUANT_PAYLOAD = data.StructLayout({
    "acc_addr": u(16), "acc_s1": u(16), "acc_s0": u(16),
    "out_addr": u(16), "out_s1": u(16), "out_s0": u(16),
    "n1": u(12), "n0": u(12),
    "param_addr": u(12),
    "out_signed": u(1),
    "out_zp": u(8), "clamp_lo": u(8), "clamp_hi": u(8),
    "lut": u(1), "lut_table": u(4),
})

ADD_PAYLOAD = data.StructLayout({
    "a_addr": u(16), "a_s1": u(16), "a_s0": u(16),
    "b_addr": u(16), "b_s1": u(16), "b_s0": u(16),
    "out_addr": u(16), "out_s1": u(16), "out_s0": u(16),
    "n1": u(12), "n0": u(12),
    "param_addr": u(12),
    "in_signed": u(1), "out_signed": u(1),
    "out_zp": u(8), "clamp_lo": u(8), "clamp_hi": u(8),
    "lut": u(1), "lut_table": u(4),
})

SYNC_PAYLOAD = data.StructLayout({"unit": Unit})
BARRIER_PAYLOAD = data.StructLayout({"core_mask": u(16)})

PAYLOADS = {
    Opcode.LOAD: DMA_PAYLOAD, Opcode.STORE: DMA_PAYLOAD, Opcode.MATMUL: MATMUL_PAYLOAD,
    Opcode.REQUANT: REQUANT_PAYLOAD, Opcode.ADD: ADD_PAYLOAD, Opcode.SYNC: SYNC_PAYLOAD,
    Opcode.BARRIER: BARRIER_PAYLOAD, Opcode.END: data.StructLayout({}),
}

PAYLOAD = data.UnionLayout({
    "dma": DMA_PAYLOAD, "matmul": MATMUL_PAYLOAD, "requant": REQUANT_PAYLOAD,
    "add": ADD_PAYLOAD, "sync": SYNC_PAYLOAD, "barrier": BARRIER_PAYLOAD,
    "raw": u(INSTR_BITS - 24),
})

#: The 256-bit instruction word.
INSTRUCTION = data.StructLayout({
    "opcode": u(6),          # raw, so that invalid codes can be seen and reported
    "reserved": u(2),
    "wait": u(NUM_SEMAPHORES),
    "signal": u(NUM_SEMAPHORES),
    "payload": PAYLOAD,
})
assert INSTRUCTION.size == INSTR_BITS, INSTRUCTION.size

_HEADER_FIELDS = {name: (field.offset, field.width) for name, field in INSTRUCTION
                  if name in ("opcode", "wait", "signal")}
_PAYLOAD_OFFSET = INSTRUCTION["payload"].offset


def _field_table(layout):
    table = {}
    for name, field in layout:
        shape = field.shape
        kind = shape if isinstance(shape, type) and issubclass(shape, enum.Enum) else None
        table[name] = (_PAYLOAD_OFFSET + field.offset, field.width, kind)
    return table


_PAYLOAD_FIELDS = {opcode: _field_table(layout) for opcode, layout in PAYLOADS.items()}


class IsaError(InputError):
    """An instruction cannot be encoded or decoded."""


def encode(opcode: Opcode, *, wait: int = 0, signal: int = 0, **fields) -> int:
    """Encode one instruction as a 256-bit integer.

    Parameters
    ----------
    opcode : Opcode
    wait, signal : int
        Semaphore masks (bit i = semaphore i).
    **fields
        Payload fields of ``opcode``; omitted fields are zero.

    Raises
    ------
    IsaError
        Unknown field, or a value that does not fit its field.
    """
    opcode = Opcode(opcode)
    word = opcode.value
    for name, value in (("wait", wait), ("signal", signal)):
        offset, width = _HEADER_FIELDS[name]
        if not 0 <= value < 1 << width:
            raise IsaError(f"{opcode.name}: {name} mask {value!r} does not fit in {width} bits")
        word |= value << offset
    table = _PAYLOAD_FIELDS[opcode]
    for name, value in fields.items():
        if name not in table:
            raise IsaError(f"{opcode.name} has no field {name!r}; fields: {', '.join(table)}")
        offset, width, kind = table[name]
        if kind is not None:
            try:
                value = kind(value).value
            except ValueError:
                accepted = ", ".join(f"{member.name}={member.value}" for member in kind)
                raise IsaError(f"{opcode.name}.{name} = {value!r} is not a valid {kind.__name__} "
                               f"(accepted: {accepted})") from None
        value = int(value)
        if not 0 <= value < 1 << width:
            raise IsaError(f"{opcode.name}.{name} = {value!r} does not fit in {width} unsigned bits "
                           f"(0..{(1 << width) - 1})")
        word |= value << offset
    return word


def decode(word: int) -> dict:
    """Decode a 256-bit instruction into a dict with ``opcode``, ``wait``, ``signal`` and the
    payload fields. Enum fields come back as their enum members.

    Raises
    ------
    IsaError
        The opcode is not valid (the hardware reports this as ``BAD_OPCODE``) or an enum
        field holds a reserved value (``BAD_FIELD``).
    """
    offset, width = _HEADER_FIELDS["opcode"]
    raw = (word >> offset) & ((1 << width) - 1)
    try:
        opcode = Opcode(raw)
    except ValueError:
        raise IsaError(f"bad opcode {raw}") from None
    result = {"opcode": opcode}
    for name in ("wait", "signal"):
        offset, width = _HEADER_FIELDS[name]
        result[name] = (word >> offset) & ((1 << width) - 1)
    for name, (offset, width, kind) in _PAYLOAD_FIELDS[opcode].items():
        value = (word >> offset) & ((1 << width) - 1)
        if kind is not None:
            try:
                value = kind(value)
            except ValueError:
                raise IsaError(f"{opcode.name}.{name}: reserved value {value}") from None
        result[name] = value
    return result


def encode_program(words: list[int]) -> bytes:
    """Instruction words as bytes, little-endian, 32 bytes each."""
    return b"".join(w.to_bytes(INSTR_BITS // 8, "little") for w in words)


def decode_program(blob: bytes) -> list[int]:
    size = INSTR_BITS // 8
    if len(blob) % size:
        raise IsaError(f"instruction stream of {len(blob)} bytes is not a multiple of {size}")
    return [int.from_bytes(blob[i:i + size], "little") for i in range(0, len(blob), size)]
