"""The ``.dlfb`` binary container: what a backend needs to run a program.

Layout: ``b"DLFB"``, u32 format version, u32 header length, the UTF-8 JSON
header, zero padding to a multiple of 64 bytes, then the segment bytes. The
header holds the HwConfig the binary was built for, the per-core instruction
streams, the DRAM segments, the named inputs and outputs and free metadata.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import HwConfig
from .errors import InputError
from .isa import INSTR_BITS

__all__ = ["FORMAT_VERSION", "Binary", "BinaryError", "Segment", "Tensor", "Stream", "atomic_write", "read_json"]

MAGIC = b"DLFB"
FORMAT_VERSION = 1
_ALIGN = 64


class BinaryError(InputError):
    """A binary is malformed, or was built for another configuration or format version."""


@dataclass
class Segment:
    """Bytes placed in DRAM at a line address before the run."""
    name: str
    dram_line: int
    data: bytes


@dataclass
class Stream:
    """One core's instruction stream: where it lives in DRAM and how long it is."""
    core: int
    dram_line: int
    instructions: int


@dataclass
class Tensor:
    """A named input or output tensor in DRAM.

    ``layout`` is ``"blocked"``: channel-blocked ``[ceil(C/L)][H][W][L]`` for a tensor
    of logical ``shape`` ``(C, H, W)``; ``"flat"``: raw bytes of the tensor in C order,
    padded to whole lines.
    """
    name: str
    dram_line: int
    shape: tuple
    dtype: str
    layout: str = "blocked"

    def lines(self, lanes: int) -> int:
        if self.layout == "blocked":
            channels, height, width = self.shape
            return -(-channels // lanes) * height * width
        nbytes = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
        return -(-nbytes // lanes)


@dataclass
class Binary:
    hw: HwConfig
    streams: list[Stream]
    segments: list[Segment]
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    # -- tensor layout helpers ------------------------------------------------------------

    def to_lines(self, tensor: Tensor, array: np.ndarray) -> bytes:
        """Convert a logical array to the bytes stored in DRAM for ``tensor``."""
        array = np.asarray(array)
        if tuple(array.shape) != tuple(tensor.shape):
            raise BinaryError(f"input {tensor.name!r} must have shape {tuple(tensor.shape)}, "
                              f"not {tuple(array.shape)}")
        if array.dtype != np.dtype(tensor.dtype):
            raise BinaryError(f"input {tensor.name!r} must have dtype {tensor.dtype}, not {array.dtype}")
        lanes = self.hw.lanes
        if tensor.layout == "blocked":
            channels, height, width = tensor.shape
            blocks = -(-channels // lanes)
            padded = np.zeros((blocks * lanes, height, width), dtype=array.dtype)
            padded[:channels] = array
            blocked = padded.reshape(blocks, lanes, height, width).transpose(0, 2, 3, 1)
            return np.ascontiguousarray(blocked).tobytes()
        raw = array.tobytes()
        return raw + bytes(-len(raw) % lanes)

    def from_lines(self, tensor: Tensor, raw: bytes) -> np.ndarray:
        """Inverse of :meth:`to_lines`."""
        lanes = self.hw.lanes
        dtype = np.dtype(tensor.dtype)
        if tensor.layout == "blocked":
            channels, height, width = tensor.shape
            blocks = -(-channels // lanes)
            blocked = np.frombuffer(raw, dtype=dtype, count=blocks * height * width * lanes)
            array = blocked.reshape(blocks, height, width, lanes).transpose(0, 3, 1, 2)
            return np.ascontiguousarray(array.reshape(blocks * lanes, height, width)[:channels])
        count = int(np.prod(tensor.shape))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(tensor.shape).copy()

    def input_segments(self, inputs: dict[str, np.ndarray]) -> list[Segment]:
        """Segments that place the given input arrays into DRAM."""
        known = {t.name: t for t in self.inputs}
        unknown = sorted(set(inputs) - set(known))
        if unknown:
            raise BinaryError(f"unknown input(s) {unknown}; this binary takes {sorted(known)}")
        return [Segment(f"input:{name}", known[name].dram_line, self.to_lines(known[name], array))
                for name, array in inputs.items()]

    # -- serialization ----------------------------------------------------------------------

    def header(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "hw": self.hw.identity(),
            "hw_hash": self.hw.hash,
            "instr_bits": INSTR_BITS,
            "streams": [vars(s) for s in self.streams],
            "inputs": [dict(vars(t), shape=list(t.shape)) for t in self.inputs],
            "outputs": [dict(vars(t), shape=list(t.shape)) for t in self.outputs],
            "metadata": self.metadata,
        }

    def to_bytes(self) -> bytes:
        header = self.header()
        segments_meta = []
        offset = 0
        for segment in self.segments:
            segments_meta.append({"name": segment.name, "dram_line": segment.dram_line,
                                  "nbytes": len(segment.data), "offset": offset})
            offset += len(segment.data)
        header["segments"] = segments_meta
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        head = MAGIC + struct.pack("<II", FORMAT_VERSION, len(text)) + text
        head += bytes(-len(head) % _ALIGN)
        return head + b"".join(segment.data for segment in self.segments)

    def write(self, path: str | Path) -> None:
        atomic_write(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, blob: bytes, *, source: str = "binary") -> Binary:
        if len(blob) < 12 or blob[:4] != MAGIC:
            raise BinaryError(f"{source}: not a dlfusion binary (missing the DLFB magic)")
        version, header_len = struct.unpack("<II", blob[4:12])
        if version != FORMAT_VERSION:
            raise BinaryError(f"{source}: format version {version}, this dlfusion reads version "
                              f"{FORMAT_VERSION}; recompile it")
        try:
            header = json.loads(blob[12:12 + header_len])
            hw = HwConfig.from_identity(header["hw"], source=f"{source} header")
            if header["hw_hash"] != hw.hash:
                raise BinaryError(f"{source}: header HwConfig hash {header['hw_hash']} does not match "
                                  f"its parameters ({hw.hash})")
            base = 12 + header_len
            base += -base % _ALIGN
            segments = []
            for meta in header["segments"]:
                start = base + meta["offset"]
                data = blob[start:start + meta["nbytes"]]
                if len(data) != meta["nbytes"]:
                    raise BinaryError(f"{source}: segment {meta['name']!r} is truncated")
                segments.append(Segment(meta["name"], meta["dram_line"], data))
            streams = [Stream(**s) for s in header["streams"]]
            inputs = [Tensor(**dict(t, shape=tuple(t["shape"]))) for t in header["inputs"]]
            outputs = [Tensor(**dict(t, shape=tuple(t["shape"]))) for t in header["outputs"]]
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            if isinstance(error, BinaryError):
                raise
            raise BinaryError(f"{source}: malformed header ({type(error).__name__}: {error})") from None
        binary = cls(hw, streams, segments, inputs, outputs, header.get("metadata", {}))
        binary.validate(source=source)
        return binary

    @classmethod
    def read(cls, path: str | Path) -> Binary:
        path = Path(path)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise BinaryError(f"binary {str(path)!r} does not exist") from None
        return cls.from_bytes(blob, source=str(path))

    def check_hw(self, hw: HwConfig) -> None:
        """Reject running on an accelerator with a different configuration."""
        if hw.hash != self.hw.hash:
            diff = {k: (v, hw.to_dict()[k]) for k, v in self.hw.to_dict().items() if hw.to_dict()[k] != v}
            details = ", ".join(f"{k}: binary {a} vs accelerator {b}" for k, (a, b) in diff.items())
            raise BinaryError(f"binary was built for HwConfig {self.hw.hash}, the accelerator is "
                              f"{hw.hash} ({details}); recompile for this configuration")

    def validate(self, *, source: str = "binary") -> None:
        lanes = self.hw.lanes
        if not self.streams:
            raise BinaryError(f"{source}: no instruction streams")
        cores = [s.core for s in self.streams]
        if len(set(cores)) != len(cores) or not all(0 <= c < self.hw.cores for c in cores):
            raise BinaryError(f"{source}: stream cores {cores} must be distinct and below "
                              f"the configured {self.hw.cores} core(s)")
        for segment in self.segments:
            end = segment.dram_line + -(-len(segment.data) // lanes)
            if segment.dram_line < 0 or end > self.hw.dram_lines:
                raise BinaryError(f"{source}: segment {segment.name!r} (lines {segment.dram_line}.."
                                  f"{end}) does not fit in DRAM ({self.hw.dram_lines} lines)")
        for tensor in self.inputs + self.outputs:
            if tensor.dram_line + tensor.lines(lanes) > self.hw.dram_lines:
                raise BinaryError(f"{source}: tensor {tensor.name!r} does not fit in DRAM")

    @property
    def core_mask(self) -> int:
        mask = 0
        for stream in self.streams:
            mask |= 1 << stream.core
        return mask


def read_json(path: str | Path, what: str, error: type[Exception]):
    """The JSON value in the file ``path`` (a ``what``: "plan file", "cost model", ...).

    Raises
    ------
    error
        The file does not exist, cannot be read or is not valid JSON (the message names it).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write a file so that readers never see a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
