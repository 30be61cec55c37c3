"""Block-diagonal factors (`tts_bpeft.curvature.blocks`): the blocks found from the zero pattern, the blockwise
eigendecomposition against the dense one, the files' column encoding round trip, and a ConvTranspose1d's
KFAC input factor, whose blocks are its output phases' taps, charged by blocks in the prior against the dense
Kronecker form."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from curv_helpers import Holder, dense_kfac, lora_delta, randomise_lora
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tts_bpeft import Curvature, LaplacePrior, add_lora, estimate_curvature
from tts_bpeft.curvature.blocks import BlockColumns, block_eigh, diagonal_blocks, support_blocks
from tts_bpeft.lora.targets import lora_targets

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


def test_block_columns_encode_a_block_factor_and_its_eigenvectors_exactly():
    M, sets = _block_matrix([3, 5, 5, 0, 1], seed=2)
    n = M.shape[0]
    packed = BlockColumns.of(M)
    assert packed.values.shape == (n, 5) and packed.index.shape == (5, 5)  # 15 x 5 entries against 15 x 15
    assert torch.equal(packed.dense(n), M)
    vals, vecs = block_eigh(M)
    for kept in (vecs, vecs[:, -6:]):  # every eigenvector, and the top six (a truncated eigenbasis)
        parts, block = support_blocks(kept)
        assert [p.tolist() for p in parts] == sorted(sets)
        for j in range(kept.shape[1]):  # each column lies in its set
            assert not kept[:, j].abs()[torch.ones(n, dtype=torch.bool).index_fill_(0, parts[block[j]], False)].any()
        encoded = BlockColumns.of(kept)
        assert torch.equal(encoded.dense(n), kept)
        assert encoded.values.numel() == kept.shape[1] * 5
    dense = torch.randn(6, 8, dtype=torch.float64)
    assert BlockColumns.of(dense @ dense.T) is None  # one block: nothing to gain
    zero_column = torch.cat([vecs, torch.zeros(n, 1, dtype=torch.float64)], 1)
    assert torch.equal(BlockColumns.of(zero_column).dense(n), zero_column)


def test_block_columns_refuse_parts_that_do_not_fit():
    M, _ = _block_matrix([4, 4], seed=3)
    good = BlockColumns.of(M)
    with pytest.raises(ValueError, match="outside its 8 rows"):
        BlockColumns(good.values, good.index.clone().fill_(9), good.block).dense(8)
    with pytest.raises(ValueError, match="outside its 8 rows or 2 blocks"):
        BlockColumns(good.values, good.index, good.block + 2).dense(8)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        BlockColumns(good.values[:, :3], good.index, good.block).dense(8)
    with pytest.raises(ValueError, match="dtypes"):
        BlockColumns(good.values, good.index.double(), good.block).dense(8)


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


def _stored(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_files_store_a_block_factor_and_its_eigenbasis_by_blocks_and_read_them_back_exactly(tmp_path):
    model, kfac, _, _ = _upsampler()
    A = kfac.kronecker_factors("up").input_cov
    prior = LaplacePrior(kfac, scaling="package")
    for curvature, dtype, exact in ((kfac, None, True), (kfac.compress(energy=1.0), None, True),
                                    (kfac.compress(rank=9), None, False), (kfac.compress(energy=1.0), torch.bfloat16,
                                                                           False)):
        path = curvature.save(tmp_path / "up.safetensors", dtype=dtype)
        tensors, _ = _stored(path)
        key = "A" if "A" in curvature.term("up") else "A_vecs"
        width = curvature.term("up")[key].shape[1]
        assert f"up::0::{key}" not in tensors and tensors[f"up::0::{key}::values"].shape == (width, 12)
        assert tensors[f"up::0::{key}::index"].dtype == torch.int64  # never rounded with the values
        assert "up::0::G" in tensors or "up::0::G_vecs" in tensors  # G (3 x 3, dense) as it is
        loaded = Curvature.load(path, model)
        for name, value in curvature.term("up").items():
            expected = value.to(dtype).float() if dtype is not None else value
            assert torch.equal(loaded.term("up")[name], expected), name
        if exact:  # every eigenpair in float32: the dense factor's penalty
            torch.testing.assert_close(LaplacePrior(loaded, scaling="package").penalty(model), prior.penalty(model),
                                       rtol=1e-5, atol=0)
    assert A.numel() == 40 * 40 and tensors["up::0::A_vecs::values"].numel() == 40 * 12


def test_a_damaged_block_encoding_names_the_layer_and_the_factor(tmp_path):
    model, kfac, _, _ = _upsampler()
    tensors, meta = _stored(kfac.save(tmp_path / "up.safetensors"))
    tensors["up::0::A::index"] = tensors["up::0::A::index"] + 100
    head = json.loads(meta["tts_bpeft"])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"tts_bpeft": json.dumps(head)})
    with pytest.raises(ValueError, match=r"bad.safetensors, layer 'up': factor A: block encoding indexes outside "
                                         r"its 40 rows.*re-estimate"):
        Curvature.load(tmp_path / "bad.safetensors", model)
    del tensors["up::0::A::block"]
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"tts_bpeft": json.dumps(head)})
    with pytest.raises(ValueError, match=r"layer 'up'.*up::0::A::block is missing from the file"):
        Curvature.load(tmp_path / "bad.safetensors", model)


def test_the_size_benchmark_counts_the_bytes_a_file_stores(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from curvature_size import file_bytes, input_blocks

    model, kfac, batches, loss_fn = _upsampler()
    target = lora_targets(model)["up"]
    assert input_blocks(target) == (4, 12)
    ekfac = estimate_curvature(model, batches, loss_fn, method="ekfac", progress=False)
    for curvature, dtype, method, itemsize in ((kfac, None, "kfac", 4), (ekfac, None, "ekfac", 4),
                                               (kfac.compress(rank=1000), torch.bfloat16, "kfac", 2)):
        tensors, _ = _stored(curvature.save(tmp_path / f"{method}.safetensors", dtype=dtype))
        stored = sum(t.numel() * t.element_size() for t in tensors.values())
        assert file_bytes(target, method, itemsize) == stored, method


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
