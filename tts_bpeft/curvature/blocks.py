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


def diagonal_blocks(M: Tensor) -> list[Tensor]:
    """The index sets (ascending, int64, on M's device) of the diagonal blocks of a symmetric `M` (n x n): the
    connected components of its non-zero pattern, ordered by their first index. One block when `M` has no
    zero off-diagonal entry; a row and column that are zero (a dead input unit) make a block of one."""
    n = M.shape[0]
    if n == 0:
        return []
    linked = M != 0
    if bool(linked.all()):
        return [torch.arange(n, device=M.device)]
    # label propagation: every index takes the smallest label among its neighbours, then its label's label
    # (pointer jumping, so a chain converges in O(log n) rounds); a fixed point is constant on components
    labels = torch.arange(n, device=M.device)
    while True:
        smallest = torch.cat([torch.where(linked[rows], labels, n).amin(1)
                              for rows in torch.arange(n, device=M.device).split(_ROWS_PER_CHUNK)])
        new = torch.minimum(smallest, labels)
        new = new[new]
        if torch.equal(new, labels):
            break
        labels = new
    _, component = torch.unique(labels, return_inverse=True)
    order = torch.argsort(component, stable=True)
    sizes = torch.bincount(component).tolist()
    return list(order.split(sizes))


class PermutedBlocks(NamedTuple):
    """A block-diagonal symmetric matrix by its blocks (the module docstring): ``blocks`` (n_blocks, size,
    size), ``index`` (n_blocks, size) into rows ``0..n`` (``n``: padding, a zero row)."""

    blocks: Tensor
    index: Tensor

    @staticmethod
    def of(M: Tensor, parts: list[Tensor]) -> PermutedBlocks:
        """`M` by the index sets `parts` (from `diagonal_blocks`), padded to the largest."""
        n, size = M.shape[0], max(p.numel() for p in parts)
        index = torch.full((len(parts), size), n, dtype=torch.long, device=M.device)
        for b, part in enumerate(parts):
            index[b, :part.numel()] = part
        padded = torch.nn.functional.pad(M, (0, 1, 0, 1))  # row and column n: zeros
        return PermutedBlocks(padded[index[:, :, None], index[:, None, :]], index)

    def gather(self, X: Tensor) -> Tensor:
        """The rows of `X` (n x r) block by block, (n_blocks, size, r); padding rows are zero."""
        return torch.cat([X, X.new_zeros(1, X.shape[1])])[self.index]


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
