"""N:M structured weight sparsity: the compressed weight block and its metadata, defined once.

A sparse MATMUL iteration (``docs/isa.md``, "Sparse MATMUL") reduces a window of
``G = M/N`` activation lines, ``G * L`` input channels, with one ``L x L`` block of
values: row ``r`` of the block holds, for every output lane, one of the ``N``
nonzero weights of input-channel group ``r // N`` (channels ``(r // N) * M`` to
``(r // N) * M + M - 1`` of the window), and the metadata store holds its 2-bit
index in the group. The golden simulator expands blocks with :func:`expand`,
the compiler makes them with :func:`compress`, and the tests use both.
"""

from __future__ import annotations

import numpy as np

from .isa import Sparsity

__all__ = ["INDEX_BITS", "satisfies", "compress", "expand", "meta_entry", "meta_indices"]

#: Bits of one index in the metadata store (M = 4).
INDEX_BITS = 2


def satisfies(weight: np.ndarray, sparsity: Sparsity) -> bool:
    """Whether ``weight`` (``(..., C)``, the reduction axis last, ``C`` a multiple of M) has at most N
    nonzeros in every group of M consecutive elements along its last axis."""
    n, m = sparsity.pattern
    if weight.shape[-1] % m:
        return False
    groups = weight.reshape(*weight.shape[:-1], weight.shape[-1] // m, m)
    return bool(((groups != 0).sum(axis=-1) <= n).all())


def compress(dense: np.ndarray, sparsity: Sparsity) -> tuple[np.ndarray, np.ndarray]:
    """The block of values and the indices of a ``(G * L, L)`` int8 window weight (row = window input
    channel, column = output lane) that satisfies ``sparsity`` along its rows.

    Returns ``(values, index)``, both ``(L, L)``: ``values`` int8, ``index`` uint8 in ``0..M-1``. A group
    with fewer than N nonzeros is filled with zero values (at the unused indices, in increasing order).
    """
    n, m = sparsity.pattern
    rows, lanes = dense.shape
    if rows != sparsity.window * lanes:
        raise ValueError(f"a {sparsity.label} window weight has {sparsity.window * lanes} rows, not {rows}")
    groups = dense.reshape(rows // m, m, lanes)                # [group, position, column]
    # Per group and column, the nonzero positions first (stable: in increasing order), then the zeros.
    ranked = np.argsort(groups == 0, axis=1, kind="stable")
    if (np.take_along_axis(groups, ranked[:, n:, :], axis=1) != 0).any():
        raise ValueError(f"the weight does not follow the {sparsity.label} pattern")
    order = ranked[:, :n, :]
    values = np.take_along_axis(groups, order, axis=1).reshape(lanes, lanes).astype(np.int8)
    return values, order.reshape(lanes, lanes).astype(np.uint8)


def expand(values: np.ndarray, index: np.ndarray, sparsity: Sparsity) -> np.ndarray:
    """The ``(G * L, L)`` int64 dense window weight of a block of values and its indices (repeated
    indices add up, as the hardware's products do)."""
    n, m = sparsity.pattern
    lanes = values.shape[1]
    rows = (np.arange(values.shape[0])[:, None] // n) * m + index
    dense = np.zeros((sparsity.window * lanes, lanes), np.int64)
    np.add.at(dense, (rows, np.broadcast_to(np.arange(lanes), values.shape)), values)
    return dense


def meta_entry(index: np.ndarray) -> np.ndarray:
    """The metadata store bytes of one block's ``(L, L)`` indices: index ``(r, c)`` in bits
    ``2 * ((r * L + c) % 4)`` of byte ``(r * L + c) // 4``."""
    flat = index.reshape(-1, 4).astype(np.uint8)
    return (flat[:, 0] | flat[:, 1] << 2 | flat[:, 2] << 4 | flat[:, 3] << 6).astype(np.uint8)


def meta_indices(entry: np.ndarray, lanes: int) -> np.ndarray:
    """The ``(L, L)`` indices of one block's metadata bytes (inverse of :func:`meta_entry`)."""
    entry = np.asarray(entry, np.uint8).reshape(-1)
    return ((entry[:, None] >> (INDEX_BITS * np.arange(4, dtype=np.uint8))) & 3).reshape(lanes, lanes)
