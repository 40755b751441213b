"""The DRAM image of a run: a binary's segments and inputs in, its outputs out.

Shared by every backend (:mod:`.golden` runs on the image, :mod:`.rtl` loads it into
the testbench with ``$readmemh``), so it sits below them.
"""

from __future__ import annotations

import numpy as np

from ..hw.binary import Binary, BinaryError

__all__ = ["build_dram_image", "read_outputs"]


def build_dram_image(binary: Binary, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The initial DRAM contents: the binary's segments, then the inputs.

    Parameters
    ----------
    binary : Binary
    inputs : dict of str to numpy.ndarray
        Every input named by ``binary.inputs``, as logical arrays.

    Returns
    -------
    numpy.ndarray
        uint8 array of ``binary.hw.dram_bytes`` bytes (zero where nothing is placed).

    Raises
    ------
    BinaryError
        An input is missing or unknown, has the wrong shape or dtype, or a segment
        does not fit in DRAM.
    """
    hw = binary.hw
    missing = sorted({t.name for t in binary.inputs} - set(inputs))
    if missing:
        raise BinaryError(f"missing input(s) {missing}; this binary takes "
                          f"{sorted(t.name for t in binary.inputs)}")
    dram = np.zeros(hw.dram_bytes, np.uint8)
    for segment in list(binary.segments) + binary.input_segments(inputs):
        start = segment.dram_line * hw.line_bytes
        end = start + len(segment.data)
        if segment.dram_line < 0 or end > hw.dram_bytes:
            raise BinaryError(f"segment {segment.name!r} (bytes {start}..{end}) does not fit in DRAM "
                              f"({hw.dram_bytes} bytes)")
        dram[start:end] = np.frombuffer(segment.data, np.uint8)
    return dram


def read_outputs(binary: Binary, dram: np.ndarray) -> dict[str, np.ndarray]:
    """The binary's outputs as logical arrays, read from a DRAM image (uint8, flat)."""
    lanes = binary.hw.lanes
    dram = np.asarray(dram, np.uint8).reshape(-1)
    outputs = {}
    for tensor in binary.outputs:
        start = tensor.dram_line * lanes
        raw = dram[start:start + tensor.lines(lanes) * lanes].tobytes()
        outputs[tensor.name] = binary.from_lines(tensor, raw)
    return outputs
