"""The one hardware configuration object.

Every hardware parameter lives in :class:`HwConfig`; every derived size is a
property computed here, never in callers. The Amaranth elaboration, the golden
simulator, the compiler's tiling and the binary header all read this object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

__all__ = ["HwConfig", "HwConfigError"]


class HwConfigError(InputError):
    """A hardware configuration value is out of range or inconsistent."""


#: Parameters added after the first release, at the value that means "this hardware is absent".
_ABSENT = {"lut_tables": 0, "sparse_patterns": ()}

#: The N:M weight patterns a PE array can support (``Sparsity`` labels), densest first.
SPARSE_PATTERNS = ("2:4", "1:4")


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class HwConfig:
    """Parameters of a multicore int8 DNN accelerator.

    Parameters
    ----------
    cores : int
        Number of identical cores sharing the DRAM port (1 to 16).
    pe_rows : int
        PE array rows: input-channel lanes reduced per cycle. Also the width
        in bytes of one activation line (the DMA and buffer granule).
    pe_cols : int
        PE array columns: output-channel lanes produced per cycle. Must equal
        ``pe_rows`` (one line format is shared by inputs and outputs).
    act_lines : int
        Activation scratchpad depth, in lines of ``pe_rows`` bytes.
    weight_blocks : int
        Weight scratchpad depth, in blocks of ``pe_rows x pe_cols`` int8.
    acc_entries : int
        Accumulator scratchpad depth, in entries of ``pe_cols`` int32.
    param_entries : int
        Post-processing parameter scratchpad depth, in entries of ``pe_cols``
        32-bit words (int32 biases or float32 multipliers).
    dram_bytes : int
        DRAM capacity in bytes (a multiple of the line size).
    dram_bytes_per_cycle : int
        Bandwidth of the one DRAM port shared by all cores, in bytes per
        cycle; at most one line per cycle.
    dram_latency : int
        Cycles from a granted read request to its data (at least 2).
    queue_depth : int
        Depth of each per-unit instruction queue (DMA, PE, PPU).
    fetch_lines : int
        Depth of the instruction prefetch buffer, in lines.
    watchdog_cycles : int
        Cycles without any progress after which the accelerator stops with
        the WATCHDOG error (a deadlocked program or barrier).
    lut_tables : int
        Post-processing lookup tables per core (0 to 16), each 256 bytes: the
        REQUANT or ADD output byte indexes one of them (sigmoid, tanh,
        hard-swish, ... as exact table look-ups). 0 elaborates the PPU without
        lookup hardware.
    sparse_patterns : tuple of str
        The N:M structured weight sparsity patterns the PE array executes
        (a subset of ``"2:4"``, ``"1:4"``): a sparse MATMUL reads ``M/N``
        activation lines per cycle (the activation scratchpad is split into
        that many banks, by line address) and selects, per PE, the activation
        that the weight's 2-bit index in the metadata store names. ``()``
        elaborates the dense array.
    """

    cores: int = 4
    pe_rows: int = 16
    pe_cols: int = 16
    act_lines: int = 8192
    weight_blocks: int = 1024
    acc_entries: int = 1024
    param_entries: int = 256
    dram_bytes: int = 64 * 1024 * 1024
    dram_bytes_per_cycle: int = 16
    dram_latency: int = 40
    queue_depth: int = 8
    fetch_lines: int = 32
    watchdog_cycles: int = 100_000
    lut_tables: int = 4
    sparse_patterns: tuple[str, ...] = SPARSE_PATTERNS

    def __post_init__(self):
        def check(name, ok, accepted):
            if not ok:
                raise HwConfigError(f"{name} must be {accepted}, not {getattr(self, name)!r}")

        patterns = self.sparse_patterns
        if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)) \
                or not all(isinstance(p, str) for p in patterns):
            raise HwConfigError(f"sparse_patterns must be a list of N:M patterns out of "
                                f"{', '.join(SPARSE_PATTERNS)}, not {patterns!r}")
        unknown = [p for p in patterns if p not in SPARSE_PATTERNS]
        if unknown or len(set(patterns)) != len(patterns):
            raise HwConfigError(f"sparse_patterns: {', '.join(unknown) or 'a repeated pattern'} is not "
                                f"supported; accepted: any of {', '.join(SPARSE_PATTERNS)}, each once")
        # Canonical order (the hash does not depend on how the patterns were listed).
        object.__setattr__(self, "sparse_patterns", tuple(p for p in SPARSE_PATTERNS if p in patterns))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "sparse_patterns":
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise HwConfigError(f"{field.name} must be an integer, not {value!r}")
        check("cores", 1 <= self.cores <= 16, "between 1 and 16")
        check("pe_rows", self.pe_rows in (4, 8, 16, 32), "one of 4, 8, 16, 32")
        check("pe_cols", self.pe_cols == self.pe_rows, f"equal to pe_rows ({self.pe_rows})")
        check("act_lines", _is_power_of_two(self.act_lines) and 64 <= self.act_lines <= 65536,
              "a power of two between 64 and 65536")
        check("weight_blocks", _is_power_of_two(self.weight_blocks) and 4 <= self.weight_blocks <= 4096,
              "a power of two between 4 and 4096")
        check("acc_entries", _is_power_of_two(self.acc_entries) and 16 <= self.acc_entries <= 65536,
              "a power of two between 16 and 65536")
        check("param_entries", _is_power_of_two(self.param_entries) and 8 <= self.param_entries <= 4096,
              "a power of two between 8 and 4096")
        check("dram_bytes", self.dram_bytes % self.line_bytes == 0 and _is_power_of_two(self.dram_bytes)
              and self.dram_bytes >= 4096 and self.dram_bytes <= 2**32,
              f"a power of two between 4 KiB and 4 GiB (a multiple of the {self.line_bytes}-byte line)")
        check("dram_bytes_per_cycle", 1 <= self.dram_bytes_per_cycle <= self.line_bytes,
              f"between 1 and the line size ({self.line_bytes} bytes)")
        check("dram_latency", 2 <= self.dram_latency <= 1024, "between 2 and 1024")
        check("queue_depth", _is_power_of_two(self.queue_depth) and 2 <= self.queue_depth <= 64,
              "a power of two between 2 and 64")
        check("fetch_lines", _is_power_of_two(self.fetch_lines)
              and 2 * self.instr_lines <= self.fetch_lines <= 1024,
              f"a power of two between {2 * self.instr_lines} (two instructions) and 1024")
        check("watchdog_cycles", 2 * self.dram_latency + 64 <= self.watchdog_cycles <= 2**31,
              f"between {2 * self.dram_latency + 64} and 2**31")
        check("lut_tables", 0 <= self.lut_tables <= 16, "between 0 and 16")

    # -- derived sizes ------------------------------------------------------------------

    @property
    def lanes(self) -> int:
        """Vector lanes: channels per activation line and per accumulator entry."""
        return self.pe_rows

    @property
    def line_bytes(self) -> int:
        """Bytes per line: the unit of DRAM addresses and of every DMA transfer."""
        return self.pe_rows

    @property
    def dram_lines(self) -> int:
        return self.dram_bytes // self.line_bytes

    @property
    def instr_lines(self) -> int:
        """Lines occupied by one 256-bit instruction in DRAM."""
        return max(1, 32 // self.line_bytes)

    @property
    def weight_block_bytes(self) -> int:
        return self.pe_rows * self.pe_cols

    @property
    def weight_lines(self) -> int:
        """Weight scratchpad depth in lines (each block is ``pe_rows`` lines)."""
        return self.weight_blocks * self.pe_rows

    @property
    def param_lines_per_entry(self) -> int:
        """Lines per parameter entry (``pe_cols`` 32-bit words)."""
        return 4 * self.pe_cols // self.line_bytes

    @property
    def param_lines(self) -> int:
        return self.param_entries * self.param_lines_per_entry

    @property
    def lut_lines_per_table(self) -> int:
        """Lines per 256-entry lookup table: entry ``i`` is byte ``i % L`` of line ``i // L``."""
        return 256 // self.line_bytes

    @property
    def lut_lines(self) -> int:
        """Depth of the lookup-table store in lines (0 without lookup hardware)."""
        return self.lut_tables * self.lut_lines_per_table

    @property
    def sparse_window(self) -> int:
        """Activation lines the PE array reads per cycle at most (``M/N`` of the sparsest pattern; 1
        dense): the activation scratchpad's banks."""
        return max((int(p.split(":")[1]) // int(p.split(":")[0]) for p in self.sparse_patterns), default=1)

    @property
    def meta_lines_per_block(self) -> int:
        """Metadata lines per weight block: ``L x L`` 2-bit indices, index ``(r, c)`` in bits
        ``2 * ((r * L + c) % 4)`` of byte ``(r * L + c) // 4`` of the block's entry."""
        return self.pe_rows * self.pe_cols // 4 // self.line_bytes

    @property
    def meta_lines(self) -> int:
        """Depth of the metadata store in lines (one entry per weight block; 0 on a dense array)."""
        return self.weight_blocks * self.meta_lines_per_block if self.sparse_patterns else 0

    # Double buffering: the compiler splits the weight, parameter and accumulator scratchpads
    # into two slots, one filled or drained while the other is in use.

    @property
    def weight_slot_blocks(self) -> int:
        """Weight blocks of one of the two weight slots."""
        return self.weight_blocks // 2

    @property
    def param_slot_entries(self) -> int:
        """Parameter entries of one of the two parameter slots."""
        return self.param_entries // 2

    @property
    def acc_slot_entries(self) -> int:
        """Accumulator entries of one of the two accumulator slots."""
        return self.acc_entries // 2

    @property
    def macs_per_cycle(self) -> int:
        """Peak MACs per cycle of one core."""
        return self.pe_rows * self.pe_cols

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.cores * self.macs_per_cycle

    @property
    def macs_per_dram_byte(self) -> float:
        """Machine balance: peak MACs per cycle over DRAM bytes per cycle."""
        return self.peak_macs_per_cycle / self.dram_bytes_per_cycle

    def buffer_lines(self, buffer: str) -> int:
        """Depth in lines of a DMA-addressable scratchpad (``act``, ``weight``, ``param``, ``lut``, ``meta``)."""
        return {"act": self.act_lines, "weight": self.weight_lines, "param": self.param_lines,
                "lut": self.lut_lines, "meta": self.meta_lines}[buffer]

    # -- identity and serialization -----------------------------------------------------

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["sparse_patterns"] = list(self.sparse_patterns)
        return values

    def identity(self) -> dict:
        """:meth:`to_dict` without the parameters added after the first release that are at the
        value elaborating the hardware as before they existed (:data:`_ABSENT`).

        The hash and a binary's header are made of it, so such a configuration keeps its hash and
        its binaries keep their bytes; :meth:`from_identity` reads it back.
        """
        absent = {key: (list(value) if isinstance(value, tuple) else value) for key, value in _ABSENT.items()}
        return {key: value for key, value in self.to_dict().items() if absent.get(key, object()) != value}

    def baseline(self) -> HwConfig:
        """This configuration without the hardware added after the first release (every parameter of
        :data:`_ABSENT` at its absent value): it elaborates, hashes and writes binaries as then."""
        return dataclasses.replace(self, **_ABSENT)

    @property
    def hash(self) -> str:
        """Short content hash of :meth:`identity`: names Verilator builds and tags binaries."""
        canonical = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "configuration") -> HwConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise HwConfigError(
                f"{source}: unknown hardware parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except HwConfigError as error:
            raise HwConfigError(f"{source}: {error}") from None

    @classmethod
    def from_identity(cls, values: dict, *, source: str = "configuration") -> HwConfig:
        """The configuration of an :meth:`identity`: a parameter added after the first release that
        ``values`` leaves out is absent (written before it existed, or at its absent value)."""
        return cls.from_dict({**_ABSENT, **values}, source=source)

    @classmethod
    def load(cls, path: str | Path | None) -> HwConfig:
        """Load a TOML file (keys at top level or under ``[hw]``); ``None`` gives the defaults."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            with path.open("rb") as file:
                values = tomllib.load(file)
        except FileNotFoundError:
            raise HwConfigError(f"hardware configuration file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise HwConfigError(f"{path}: not valid TOML: {error}") from None
        if "hw" in values and isinstance(values["hw"], dict):
            values = values["hw"]
        return cls.from_dict(values, source=str(path))

    def to_toml(self) -> str:
        return "".join(f"{key} = {json.dumps(value)}\n" for key, value in self.to_dict().items())

    def describe(self) -> str:
        return (f"{self.cores} core(s) x {self.pe_rows}x{self.pe_cols} PEs, "
                f"act {self.act_lines * self.line_bytes // 1024} KiB, "
                f"weight {self.weight_blocks * self.weight_block_bytes // 1024} KiB, "
                f"acc {self.acc_entries * 4 * self.pe_cols // 1024} KiB, "
                f"DRAM {self.dram_bytes_per_cycle} B/cycle latency {self.dram_latency}"
                + (f", sparse {'/'.join(self.sparse_patterns)}" if self.sparse_patterns else ""))
