"""Block-diagonal factors (`tts_bpeft.curvature.blocks`): the blocks found from the zero pattern, the blockwise
eigendecomposition against the dense one, and a ConvTranspose1d's KFAC input factor, whose blocks are its
output phases' taps, charged by blocks in the prior against the dense Kronecker form."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from curv_helpers import Holder, dense_kfac, lora_delta, randomise_lora
from torch import nn

from tts_bpeft import LaplacePrior, add_lora, estimate_curvature
from tts_bpeft.curvature.blocks import block_eigh, diagonal_blocks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prior"))
from prior_helpers import check_against  # noqa: E402


def _block_matrix(sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, list[list[int]]]:
    """A symmetric PSD matrix with diagonal blocks of `sizes` (size 0: a zero row and column) on randomly
    permuted indices, and those index sets."""
    g = torch.Generator().manual_seed(seed)
    n = sum(max(s, 1) for s in sizes)
    perm = torch.randperm(n, generator=g)
    M, sets, start = torch.zeros(n, n, dtype=torch.float64), [], 0
    for s in sizes:
        idx = perm[start:start + max(s, 1)]
        start += max(s, 1)
        if s:
            X = torch.randn(s, s + 2, dtype=torch.float64, generator=g)
            M[idx[:, None], idx[None, :]] = X @ X.T
        sets.append(sorted(idx.tolist()))
    return M, sets


def test_diagonal_blocks_are_the_components_of_the_zero_pattern():
    M, sets = _block_matrix([3, 5, 5, 0, 1])
    found = [b.tolist() for b in diagonal_blocks(M)]
    assert sorted(found) == sorted(sets)
    assert found == sorted(found, key=lambda b: b[0])  # ordered by first index, each ascending
    assert [b.tolist() for b in diagonal_blocks(M[:0, :0])] == []
    dense = torch.randn(6, 9, dtype=torch.float64)
    assert [b.tolist() for b in diagonal_blocks(dense @ dense.T)] == [list(range(6))]
    # a chain (tridiagonal) longer than one chunk of rows: one block, reached by label propagation
    n = 2500
    chain = torch.diag(torch.full((n,), 2.0)) + torch.diag(torch.ones(n - 1), 1) + torch.diag(torch.ones(n - 1), -1)
    assert [b.tolist() for b in diagonal_blocks(chain)] == [list(range(n))]
    chain[1200, 1201] = chain[1201, 1200] = 0.0
    assert [b.tolist() for b in diagonal_blocks(chain)] == [list(range(1201)), list(range(1201, n))]


def test_block_eigh_equals_the_dense_eigendecomposition():
    M, _ = _block_matrix([4, 7, 7, 0, 2, 7])
    vals, vecs = block_eigh(M)
    torch.testing.assert_close(vals, torch.linalg.eigh(M).eigenvalues, rtol=0, atol=1e-10)
    assert bool((vals[1:] >= vals[:-1]).all())
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(M.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(vecs @ torch.diag(vals) @ vecs.T, M, rtol=0, atol=1e-10)


def _upsampler():
    """A LoRA ConvTranspose1d (4 -> 3 channels, kernel 10, stride 4: two phases of three taps, two of two), its
    KFAC estimate on random data, the batches and the per-sample loss."""
    torch.manual_seed(0)
    model = add_lora(Holder(up=nn.ConvTranspose1d(4, 3, 10, stride=4, padding=1)), ["up"], r=2, alpha=3)
    randomise_lora(model)

    def loss_fn(m, batch):
        return ((torch.tanh(m.up(batch[0])) - batch[1]) ** 2).sum((1, 2))

    x = torch.randn(3, 4, 9)
    batches = [(x, torch.randn(3, 3, model.up(x).shape[-1]))]
    return model, estimate_curvature(model, batches, loss_fn, progress=False), batches, loss_fn


def test_a_conv_transpose_input_factor_has_one_block_per_output_phase():
    """Taps j and j' of one channel pair meet in A only if an output phase sees both (j = j' mod stride); the
    blocks are those phases' taps over all input channels (index i*k + j), and eigh by blocks matches dense."""
    _, kfac, _, _ = _upsampler()
    A = kfac.kronecker_factors("up").input_cov.double()
    assert [b.tolist() for b in diagonal_blocks(A)] == [[i * 10 + j for i in range(4) for j in range(c, 10, 4)]
                                                        for c in range(4)]
    vals, vecs = block_eigh(A)
    torch.testing.assert_close(vals, torch.linalg.eigh(A).eigenvalues, rtol=0, atol=1e-9 * float(vals[-1]))
    torch.testing.assert_close(vecs @ torch.diag(vals) @ vecs.T, A, rtol=0, atol=1e-9 * float(vals[-1]))


def test_the_prior_charges_a_block_diagonal_factor_by_blocks_as_the_dense_kronecker_form():
    model, kfac, _, _ = _upsampler()
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for damping in (0.0, 0.1):
        prior = LaplacePrior(kfac, scaling="package", damping=damping)
        term = prior.forms("up")[0].terms[0]
        # blocks of 12, 12, 8 and 8 (padded to 12): 576 entries against 1600 dense
        assert "A" not in term and term["A_blocks"].shape == (4, 12, 12) and "G" in term
        factors = kfac.terms("up")
        if damping:
            a, g = prior.forms("up")[0].shifts[0]
            factors = [{"A": t["A"] + a * torch.eye(40), "G": t["G"] + g * torch.eye(3)} for t in factors]
        check_against(prior.penalty(model), dense_kfac(lora_delta(model.up), factors), params)


def test_ekfac_and_compression_of_a_block_diagonal_factor():
    """The EKFAC basis of the blockwise eigh diagonalises A, and its scales add up to the EWC trace; `compress`
    by energy keeps eigenpairs from every block, largest first."""
    model, kfac, batches, loss_fn = _upsampler()
    ekfac = estimate_curvature(model, batches, loss_fn, method="ekfac", progress=False)
    ewc = estimate_curvature(model, batches, loss_fn, method="ewc", progress=False)
    Q_A, A = ekfac.term("up")["A_basis"].double(), kfac.kronecker_factors("up").input_cov.double()
    rotated = Q_A.T @ A @ Q_A
    torch.testing.assert_close(rotated, torch.diag(rotated.diagonal()), rtol=0, atol=1e-6 * float(A.diagonal().max()))
    torch.testing.assert_close(ekfac.term("up")["scales"].sum(), ewc.term("up")["diag"].sum(), rtol=1e-4, atol=0)
    kept = kfac.compress(energy=0.9).term("up")
    full = torch.linalg.eigh(A).eigenvalues
    k = kept["A_vals"].shape[0]
    torch.testing.assert_close(kept["A_vals"].double(), full[-k:], rtol=1e-5, atol=0)
    assert float(full[-k:].sum()) >= 0.9 * float(full.sum()) > float(full[-k + 1:].sum())
