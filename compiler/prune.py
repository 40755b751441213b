"""N:M magnitude pruning along input channels (as NVIDIA's ASP does), for weights of any dtype.

In every group of M consecutive input channels (axis 1 of a ``(K, C, ...)`` weight, groups
aligned at multiples of M, a last partial group padded with zeros) the N weights of largest
magnitude are kept, the others set to zero; ties keep the lower channel. The layer builders
(``dlfusion layer --prune``) prune their seeded int8 weights, ``dlfusion prune`` the float
weights of an ONNX model before quantizing it.
"""

from __future__ import annotations

import numpy as np

from ..hw.config import SPARSE_PATTERNS
from ..hw.isa import Sparsity
from .errors import CompileError

__all__ = ["parse_pattern", "prune_weight", "by_input_channel"]


def parse_pattern(text: str) -> Sparsity:
    """The :class:`Sparsity` of ``"2:4"`` or ``"1:4"`` (``"2of4"`` too)."""
    label = str(text).strip().replace("of", ":")
    try:
        sparsity = Sparsity.from_label(label)
    except ValueError:
        sparsity = None
    if sparsity is None or sparsity is Sparsity.DENSE:
        raise CompileError(f"pruning pattern {text!r} is not supported; accepted: {', '.join(SPARSE_PATTERNS)}")
    return sparsity


def by_input_channel(weight: np.ndarray, m: int = 4) -> np.ndarray:
    """``weight`` (``(K, C, ...)``) with its input channels last, zero-padded to a multiple of ``m``."""
    by_channel = np.moveaxis(weight, 1, -1)
    padding = -weight.shape[1] % m
    if not padding:
        return by_channel
    return np.concatenate([by_channel, np.zeros((*by_channel.shape[:-1], padding), weight.dtype)], axis=-1)


def prune_weight(weight: np.ndarray, sparsity: Sparsity) -> np.ndarray:
    """``weight`` (``(K, C, ...)``) with at most N nonzeros in every group of M input channels."""
    n, m = sparsity.pattern
    channels = weight.shape[1]
    padded = by_input_channel(weight, m)
    groups = padded.reshape(*padded.shape[:-1], -1, m)
    rank = np.argsort(-np.abs(groups.astype(np.float64)), axis=-1, kind="stable")
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, rank[..., :n], True, axis=-1)
    pruned = np.where(keep, groups, 0).astype(weight.dtype).reshape(padded.shape)[..., :channels]
    return np.ascontiguousarray(np.moveaxis(pruned, -1, 1))
