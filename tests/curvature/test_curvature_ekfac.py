"""EKFAC: the KFAC eigenbasis with the diagonal re-fitted to per-sample gradients (George et al. 2018).

Checked against per-sample gradients from torch.func rotated into the basis, and against the identity
``sum(scales) = tr(F) = sum(EWC diagonal)`` on every layer type."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_curvature_ewc import LinearOnSequences

from tts_bpeft import Curvature, estimate_curvature

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prior"))
from prior_helpers import NAMES, build_setup, squared_error_loss  # noqa: E402


# 2 positions: rows rotated before their product (2 (16 + 25) <= 4 * 5 * 9 multiply-adds); 7: the gradient after
@pytest.mark.parametrize("length", [2, 7], ids=["rows-rotated", "gradient-rotated"])
def test_ekfac_scales_are_second_moments_of_rotated_per_sample_gradients(length):
    p = LinearOnSequences(length)
    ekfac = estimate_curvature(p.model, p.batches, p.loss_fn, method="ekfac", targets=["lin"], progress=False)
    kfac = estimate_curvature(p.model, p.batches, p.loss_fn, method="kfac", targets=["lin"], progress=False)
    term = ekfac.term("lin")
    Q_A, Q_G = term["A_basis"].double(), term["G_basis"].double()
    # the bases diagonalise the KFAC factors
    for Q, M in ((Q_A, kfac.kronecker_factors("lin").input_cov), (Q_G, kfac.kronecker_factors("lin").grad_cov)):
        torch.testing.assert_close(Q.T @ Q, torch.eye(Q.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
        rotated = Q.T @ M.double() @ Q
        assert (rotated - torch.diag(torch.diagonal(rotated))).abs().max() < 1e-5 * M.abs().max()

    _, grads = p.per_sample()
    expected = ((Q_G.T @ grads.double() @ Q_A) ** 2).mean(0)
    torch.testing.assert_close(term["scales"].double(), expected, rtol=1e-4, atol=1e-7)
    assert ekfac.method == "ekfac" and ekfac.layers["lin"].tokens == kfac.layers["lin"].tokens


def test_ekfac_trace_equals_the_ewc_trace_on_every_layer_type():
    model, _, ewc, _, batches = build_setup()
    ekfac = estimate_curvature(model, batches, squared_error_loss, method="ekfac", progress=False)
    assert ekfac.names == NAMES
    for name in NAMES:
        scales, diag = ekfac.term(name)["scales"].double(), ewc.term(name)["diag"].double()
        torch.testing.assert_close(scales.sum(), diag.sum(), rtol=1e-4, atol=0)
        assert not torch.allclose(scales, diag)  # a different basis, the same trace


def test_ekfac_file_round_trip_pooling_and_weighted_sum(tmp_path):
    model, _, _, _, batches = build_setup()
    ekfac = estimate_curvature(model, batches, squared_error_loss, method="ekfac", progress=False)
    path = ekfac.save(tmp_path / "ekfac.safetensors")
    loaded = Curvature.load(path, model)
    for name in NAMES:
        for key, value in ekfac.term(name).items():
            torch.testing.assert_close(loaded.term(name)[key], value)
    with pytest.raises(ValueError, match="EKFAC estimates cannot be pooled"):
        ekfac + loaded
    double = Curvature.weighted_sum([ekfac, loaded], [0.5, 1.5])
    assert len(double.terms("lin")) == 2
    torch.testing.assert_close(double.terms("lin")[1]["scales"], 1.5 * ekfac.term("lin")["scales"])
    with pytest.raises(TypeError, match="passes over the data twice"):
        estimate_curvature(model, iter(batches), squared_error_loss, method="ekfac", progress=False)


def test_a_bad_ekfac_file_names_the_layer_and_the_factor(tmp_path):
    model, _, _, _, batches = build_setup()
    ekfac = estimate_curvature(model, batches, squared_error_loss, method="ekfac", progress=False)
    ekfac.layers["lin"].terms[0]["scales"] = torch.ones(2, 2)
    path = ekfac.save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"layer 'lin': scales has shape \(2, 2\), expected \(5, 3\)"):
        Curvature.load(path)
