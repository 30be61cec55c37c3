"""The exact block-diagonal structure of a symmetric matrix, read from its zero pattern, and what it makes cheap.

A ConvTranspose1d's input factor ``A`` is block diagonal up to a permutation: the patches of one output phase
are zero outside one set of taps (`tts_bpeft.layers.conv_transpose1d_phases`), every tap belongs to one phase,
so ``A[i, j] = 0`` unless taps ``i`` and ``j`` share a phase. Kokoro's and StyleTTS 2's first upsampler (512
channels, kernel 20, stride 10) has a 10240 x 10240 ``A`` made of 10 blocks of 1024: its eigendecomposition and
any product with it cost 100 and 10 times less block by block.

`diagonal_blocks(M)` finds the blocks as the connected components of the graph with an edge ``(i, j)`` wherever
``M[i, j] != 0`` (an exact zero pattern, so nothing is approximated: a dense factor is one block). Blocks of
one size are batched: `PermutedBlocks` holds ``M`` as ``blocks`` (n_blocks, size, size) and ``index``
(n_blocks, size) with ``blocks[b] = M[index[b]][:, index[b]]``; smaller blocks are padded to the largest with
the index ``n`` (one past the last row), which reads a zero row, so a product by blocks equals the dense one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

_ROWS_PER_CHUNK = 1024  # rows of the zero pattern compared at once (bounds the label propagation's memory)


def support_blocks(X: Tensor) -> tuple[list[Tensor], Tensor]:
    """The finest partition of the rows of `X` (n x k) that no column's non-zeros cross: the connected components
    of the graph of rows and columns with an edge ``(i, j)`` wherever ``X[i, j] != 0``. Returns the row index
    sets (ascending, int64, on X's device, ordered by their first row; a zero row is a set of one) and, per
    column, the set it lies in ((k,), int64; 0 for a zero column)."""
    n, k = X.shape
    device = X.device
    if n == 0:
        return [], torch.zeros(k, dtype=torch.long, device=device)
    # rows in chunks bound the memory to _ROWS_PER_CHUNK x k (the 10240-wide factor: 90 MB, not a copy of it)
    chunks = torch.arange(n, device=device).split(_ROWS_PER_CHUNK)
    if all(bool((X[rows] != 0).all()) for rows in chunks):
        return [torch.arange(n, device=device)], torch.zeros(k, dtype=torch.long, device=device)
    # label propagation: a column takes the smallest label of its rows, a row the smallest label of its columns,
    # then its label's label (pointer jumping, so a chain converges in O(log n) rounds); a fixed point is
    # constant on components. int32 labels: the masked minima run twice as fast as in int64.
    labels = torch.arange(n, device=device, dtype=torch.int32)
    while True:
        column = torch.stack([torch.where(X[rows] != 0, labels[rows, None], n).amin(0) for rows in chunks]).amin(0)
        smallest = torch.cat([torch.where(X[rows] != 0, column, n).amin(1) for rows in chunks])
        new = torch.minimum(smallest, labels)
        new = new[new]
        if torch.equal(new, labels):
            break
        labels = new
    labels, column = labels.long(), column.long()
    roots, component = torch.unique(labels, return_inverse=True)
    order = torch.argsort(component, stable=True)
    sizes = torch.bincount(component).tolist()
    column_part = torch.searchsorted(roots, column.clamp(max=int(roots[-1])))  # a zero column's label n -> last
    return list(order.split(sizes)), torch.where(column < n, column_part, 0)


def diagonal_blocks(M: Tensor) -> list[Tensor]:
    """The index sets of the diagonal blocks of a symmetric `M` (n x n): `support_blocks` of its rows (one
    block when `M` has no zero off-diagonal entry; a zero row and column, a dead input unit, make a block of
    one)."""
    return support_blocks(M)[0]


def _padded_index(parts: list[Tensor], n: int, device: torch.device) -> Tensor:
    """The index sets `parts` as rows of one (n_blocks, size) tensor, padded with ``n`` to the largest."""
    index = torch.full((len(parts), max(p.numel() for p in parts)), n, dtype=torch.long, device=device)
    for b, part in enumerate(parts):
        index[b, :part.numel()] = part
    return index


def block_encoding_pays(n: int, k: int, n_blocks: int, size: int) -> bool:
    """Whether `BlockColumns` of an (n x k) matrix with `n_blocks` row sets, the largest of `size` rows, holds
    fewer bytes than the matrix (values k x size, int64 index n_blocks x size: two values' bytes each)."""
    return n_blocks > 1 and (k + 2 * n_blocks) * size < n * k


class PermutedBlocks(NamedTuple):
    """A block-diagonal symmetric matrix by its blocks (the module docstring): ``blocks`` (n_blocks, size,
    size), ``index`` (n_blocks, size) into rows ``0..n`` (``n``: padding, a zero row)."""

    blocks: Tensor
    index: Tensor

    @staticmethod
    def of(M: Tensor, parts: list[Tensor]) -> PermutedBlocks:
        """`M` by the index sets `parts` (from `diagonal_blocks`), padded to the largest."""
        n = M.shape[0]
        index = _padded_index(parts, n, M.device)
        inside = index < n  # padding reads row and column n - 1, then is zeroed (no padded copy of M)
        rows = index.clamp(max=n - 1)
        blocks = torch.where(inside[:, :, None] & inside[:, None, :], M[rows[:, :, None], rows[:, None, :]], 0.0)
        return PermutedBlocks(blocks, index)

    def gather(self, X: Tensor) -> Tensor:
        """The rows of `X` (n x r) block by block, (n_blocks, size, r); padding rows are zero."""
        return torch.cat([X, X.new_zeros(1, X.shape[1])])[self.index]


class BlockColumns(NamedTuple):
    """A matrix ``X`` (n x k) whose every column is non-zero within one row set of a partition (`support_blocks`)
    by those entries only: ``values`` (k, size), ``index`` (n_blocks, size) into rows ``0..n`` (``n``: padding,
    as in `PermutedBlocks`) and ``block`` (k,), the set of each column, so ``X[index[block[j]], j] =
    values[j]``. A block-diagonal ``M`` (k = n) and its eigenvectors (`block_eigh`) shrink to ``size / n`` of
    their entries: the 10240-wide ``A`` of a first upsampler to a tenth. The storage's file encoding."""

    values: Tensor
    index: Tensor
    block: Tensor

    @staticmethod
    def of(X: Tensor) -> BlockColumns | None:
        """`X` by its column supports, or None where that would not be smaller (one row set, or large padding)."""
        parts, block = support_blocks(X)
        n, k = X.shape
        if not block_encoding_pays(n, k, len(parts), max((p.numel() for p in parts), default=0)):
            return None
        index = _padded_index(parts, n, X.device)
        rows = index[block]  # (k, size); padding (n) reads row n - 1, then is zeroed (no padded copy of X)
        inside = rows < n
        values = torch.where(inside, X.T.gather(1, rows.clamp_(max=n - 1)), 0.0)  # values[j, s] = X[rows[j, s], j]
        return BlockColumns(values, index, block)

    def dense(self, rows: int) -> Tensor:
        """``X`` (rows x k), after checking the parts fit together (a ValueError says what does not)."""
        values, index, block = self.values, self.index, self.block
        if index.dtype.is_floating_point or block.dtype.is_floating_point or not values.dtype.is_floating_point:
            raise ValueError(f"block encoding of dtypes {values.dtype}, {index.dtype}, {block.dtype}: values must "
                             "be floating, index and block integer")
        if values.dim() != 2 or index.dim() != 2 or block.shape != values.shape[:1] or \
                index.shape[1] != values.shape[1]:
            raise ValueError(f"block encoding of inconsistent shapes: values {tuple(values.shape)}, index "
                             f"{tuple(index.shape)}, block {tuple(block.shape)}")
        if index.numel() and not (0 <= int(index.min()) and int(index.max()) <= rows) or \
                block.numel() and not (0 <= int(block.min()) and int(block.max()) < index.shape[0]):
            raise ValueError(f"block encoding indexes outside its {rows} rows or {index.shape[0]} blocks")
        X = values.new_zeros(rows + 1, values.shape[0])
        X[index[block.long()].long(), torch.arange(values.shape[0], device=values.device)[:, None]] = values
        return X[:rows]


def block_eigh(M: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh(M)`` of a symmetric `M` (n x n) computed block by block (`diagonal_blocks`; blocks
    of one size in one batched call): eigenvalues (n,) ascending and eigenvectors (n, n) as columns, in `M`'s
    dtype. Equal to the dense eigendecomposition up to the order and signs of eigenvectors of equal eigenvalues
    (an eigenvector of a block is zero outside it)."""
    n = M.shape[0]
    parts = diagonal_blocks(M)
    if len(parts) <= 1:
        return torch.linalg.eigh(M)
    vals, vecs = M.new_empty(n), M.new_zeros(n, n)
    start = 0
    for size in sorted({p.numel() for p in parts}):
        group = torch.stack([p for p in parts if p.numel() == size])  # (count, size)
        block_vals, block_vecs = torch.linalg.eigh(M[group[:, :, None], group[:, None, :]])
        for rows, v, Q in zip(group, block_vals, block_vecs):
            vals[start:start + size] = v
            vecs[rows, start:start + size] = Q
            start += size
    order = torch.argsort(vals, stable=True)
    return vals[order], vecs[:, order]
