"""Damped and mixed KFAC, EKFAC and the scale-free ("relative") lam, against dense forms on every layer type."""

from __future__ import annotations

import math

import pytest
import torch
from curv_helpers import dense_kfac, lora_delta
from prior_helpers import NAMES, check_against, layers_of, lora_params, package_prior, squared_error_loss

from tts_bpeft import Curvature, LaplacePrior, estimate_curvature, lora_targets
from tts_bpeft.prior import load_prior


@pytest.fixture(scope="module")
def ekfac(setup_with_batches):
    model, _, _, _, batches = setup_with_batches
    return estimate_curvature(model, batches, squared_error_loss, method="ekfac", progress=False)


def _dense(prior_fn, model):
    layers = layers_of(model)
    return sum(prior_fn(n, lora_delta(*layers[n]).double()) for n in NAMES)


def _pi_split(term, gamma):
    """Martens & Grosse's pi-split of an absolute damping gamma * m between A (in) and G (out)."""
    A, G = term["A"].double(), term["G"].double()
    mean_a, mean_g = A.trace() / A.shape[0], G.trace() / G.shape[0]
    pi = torch.sqrt(mean_a / mean_g)
    absolute = gamma * mean_a * mean_g  # gamma relative to the mean eigenvalue of A (x) G
    return pi * torch.sqrt(absolute), torch.sqrt(absolute) / pi


def test_damped_kfac_equals_the_dense_damped_kronecker_product(setup):
    model, kfac, _, _ = setup
    gamma = 0.3

    def dense(name, dW):
        term = kfac.term(name)
        a, g = _pi_split(term, gamma)
        damped = {"A": term["A"].double() + a * torch.eye(term["A"].shape[0], dtype=torch.float64),
                  "G": term["G"].double() + g * torch.eye(term["G"].shape[0], dtype=torch.float64)}
        return dense_kfac(dW, [damped])

    prior = package_prior(kfac, lam=2.0, damping=gamma)
    check_against(prior.penalty(model), 2.0 * _dense(dense, model), lora_params(model))
    # damping only adds: every layer pays more than undamped, and gamma=0 is plain KFAC
    damped, plain = prior.layer_penalties(model), package_prior(kfac, damping=0.0).layer_penalties(model)
    assert all(damped[n] > plain[n] for n in NAMES)


def test_kfac_mixed_with_l2sp_and_with_ewc_equal_their_dense_sums(setup):
    model, kfac, ewc, _ = setup
    mu = 0.25

    def mean_kfac(name):
        t = kfac.term(name)
        return t["A"].double().trace() * t["G"].double().trace() / (t["A"].shape[0] * t["G"].shape[0])

    def with_l2(name, dW):
        return dense_kfac(dW, kfac.terms(name)) + mu * mean_kfac(name) * (dW**2).sum()

    def with_ewc(name, dW):
        diag = ewc.term(name)["diag"].double()
        return dense_kfac(dW, kfac.terms(name)) + mu * mean_kfac(name) / diag.mean() * (diag * dW**2).sum()

    check_against(package_prior(kfac, mix="l2sp", mu=mu).penalty(model), _dense(with_l2, model), lora_params(model))
    check_against(package_prior(kfac, mix=ewc, mu=mu).penalty(model), _dense(with_ewc, model), lora_params(model))
    # mu = 0 with a mix given is the plain prior
    torch.testing.assert_close(package_prior(kfac, mix="l2sp", mu=0.0).penalty(model),
                               package_prior(kfac).penalty(model))


def test_ekfac_penalty_equals_the_dense_rotated_diagonal(setup, ekfac):
    model, _, _, _ = setup

    def dense(name, dW):
        t = ekfac.term(name)
        K = torch.kron(t["G_basis"].double(), t["A_basis"].double())  # row-major vec: K^T vec(dW) = vec(Q_G^T dW Q_A)
        F = K @ torch.diag(t["scales"].double().flatten()) @ K.T
        v = dW.flatten()
        return v @ F @ v

    check_against(package_prior(ekfac, lam=3.0).penalty(model), 3.0 * _dense(dense, model), lora_params(model))


def test_relative_scaling_is_the_fisher_weighted_relative_weight_change(setup):
    model, kfac, ewc, _ = setup
    targets = lora_targets(model)
    base_sq = sum(float((targets[n].weight().double() ** 2).sum()) for n in NAMES)
    numel = sum(targets[n].weight().numel() for n in NAMES)
    # L2-SP: exactly sum ||dW||^2 / sum ||W0||^2
    l2 = _dense(lambda n, dW: (dW**2).sum(), model)
    check_against(LaplacePrior(kind="l2sp", scaling="relative").penalty(model), l2 / base_sq, lora_params(model))
    # KFAC: the Fisher quadratic over (mean eigenvalue over all adapted weights * sum ||W0||^2)
    trace = sum(float(f.input_cov.double().trace() * f.grad_cov.double().trace())
                for f in (kfac.kronecker_factors(n) for n in NAMES))
    expected = _dense(lambda n, dW: dense_kfac(dW, kfac.terms(n)), model) / (trace / numel * base_sq)
    check_against(LaplacePrior(kfac, lam=2.0, scaling="relative").penalty(model), 2.0 * expected, lora_params(model))


@pytest.mark.parametrize("method", ["kfac", "ewc", "ekfac"])
def test_relative_lam_does_not_depend_on_the_scale_of_the_curvature(setup, ekfac, method):
    """Multiplying the Fisher by 1000 (a loss summed instead of averaged, say) leaves the relative penalty as is,
    while the package-scaled penalty grows 1000x."""
    model, kfac, ewc, _ = setup
    curvature = {"kfac": kfac, "ewc": ewc, "ekfac": ekfac}[method]
    scaled = Curvature.weighted_sum([curvature], [1000.0])
    for scaling, factor in (("relative", 1.0), ("package", 1000.0)):
        one = LaplacePrior(curvature, scaling=scaling, damping=0.1 if method == "kfac" else 0.0).penalty(model)
        many = LaplacePrior(scaled, scaling=scaling, damping=0.1 if method == "kfac" else 0.0).penalty(model)
        torch.testing.assert_close(many, factor * one, rtol=1e-5, atol=0)


def _unit_settings(model, target):
    """For each entry of the layer's matrix-view factors B (out, r) and A (r, in_flat), rank 0: the LoRA
    parameter values that make that entry 1 and every other 0 (the gradient of the entry: the factors are a
    reshape or permutation of the parameters, which for a transposed convolution is a copy, not a view)."""
    params = lora_params(model)
    B, A, scale = target.lora_factors()

    def one_hot(entry):
        return [g if g is not None else torch.zeros_like(p)
                for p, g in zip(params, torch.autograd.grad(entry, params, retain_graph=True, allow_unused=True))]

    return [one_hot(B[i, 0]) for i in range(B.shape[0])], [one_hot(A[0, j]) for j in range(A.shape[1])], scale


def _isotropic_expectation(priors, model):
    """``E[penalty]`` of each prior for an isotropic random dW of unit variance per entry of every adapted matrix,
    from the priors' own penalties: ``E[vec(dW)^T F vec(dW)] = tr(F) = sum_ij q(e_i e_j^T)``, each unit shift
    ``dW = e_i e_j^T`` set through the LoRA factors of one layer at a time (rank 1: ``B = e_i / s``, ``A = e_j``)."""
    params = lora_params(model)
    originals = [p.detach().clone() for p in params]
    totals = dict.fromkeys(priors, 0.0)
    for target in lora_targets(model).values():
        rows, cols, scale = _unit_settings(model, target)
        with torch.no_grad():
            for row in rows:
                for col in cols:
                    for p, b, a in zip(params, row, col):
                        p.copy_(b / scale + a)
                    assert float(target.delta_weight_matrix().abs().sum()) == pytest.approx(1.0)
                    for k, prior in priors.items():
                        totals[k] += float(prior.penalty(model))
    with torch.no_grad():
        for p, value in zip(params, originals):
            p.copy_(value)
    return totals


def test_one_lam_charges_every_form_the_same_for_an_isotropic_shift(setup, ekfac):
    """Relative scaling divides by each form's own mean eigenvalue (damping and mixed-in form included), so for
    an isotropic random dW every form charges what L2-SP charges; the expectation is probed exactly through the
    penalty (unit shifts), then confirmed by Monte-Carlo over random LoRA factors."""
    model, kfac, ewc, _ = setup
    priors = {"l2sp": LaplacePrior(kind="l2sp"), "ewc": LaplacePrior(ewc), "kfac": LaplacePrior(kfac),
              "ekfac": LaplacePrior(ekfac), "damped kfac": LaplacePrior(kfac, damping=0.3),
              "kfac+l2sp": LaplacePrior(kfac, mix="l2sp", mu=1.0), "kfac+ewc": LaplacePrior(kfac, mix=ewc, mu=1.0),
              "damped kfac+ewc": LaplacePrior(kfac, damping=0.1, mix=ewc, mu=0.5)}
    expected = _isotropic_expectation(priors, model)
    # L2-SP: sum_l numel_l / sum_l ||W0_l||^2 (trace of the identity over the base weights' squared norm)
    targets = lora_targets(model)
    numel = sum(t.weight().numel() for t in targets.values())
    base_sq = sum(float((t.weight().double() ** 2).sum()) for t in targets.values())
    assert math.isclose(expected["l2sp"], numel / base_sq, rel_tol=1e-5)
    for k, value in expected.items():
        assert math.isclose(value, expected["l2sp"], rel_tol=0.05), (k, expected)
    # Monte-Carlo: random Gaussian factors (dW = s B A has covariance s^2 r sigma_A^2 sigma_B^2 I), 400 draws
    g = torch.Generator().manual_seed(0)
    params = lora_params(model)
    originals = [p.detach().clone() for p in params]
    totals = dict.fromkeys(priors, 0.0)
    with torch.no_grad():
        for _ in range(400):
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g))
            for k, prior in priors.items():
                totals[k] += float(prior.penalty(model))
        for p, value in zip(params, originals):
            p.copy_(value)
    for k in priors:  # 400 draws: standard error <= 0.035 of the ratio on this model
        assert math.isclose(totals[k], totals["l2sp"], rel_tol=0.15), (k, totals)


def test_form_options_are_checked(setup):
    _, kfac, ewc, _ = setup
    with pytest.raises(ValueError, match="damping applies to the kfac prior only"):
        package_prior(ewc, damping=0.1)
    with pytest.raises(ValueError, match="needs a form to mix in"):
        package_prior(kfac, mu=0.1)
    with pytest.raises(ValueError, match="mix must be 'l2sp' or a Curvature"):
        package_prior(kfac, mix="ewc", mu=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        package_prior(kfac, damping=-1.0)
    with pytest.raises(ValueError, match="scaling must be one of"):
        LaplacePrior(kfac, scaling="trace")


def test_load_prior_reads_and_checks_the_files(setup, ekfac, tmp_path):
    model, kfac, ewc, _ = setup
    kfac_path, ewc_path = kfac.save(tmp_path / "kfac.safetensors"), ewc.save(tmp_path / "ewc.safetensors")
    assert load_prior(model, "none") is None
    loaded = load_prior(model, "kfac", lam=2.0, curvature=kfac_path, damping=0.1, mix=ewc_path, mu=0.2)
    direct = LaplacePrior(kfac, lam=2.0, damping=0.1, mix=ewc, mu=0.2, scaling="relative")
    torch.testing.assert_close(loaded.penalty(model), direct.penalty(model))
    torch.testing.assert_close(load_prior(model, "l2sp", scaling="package").penalty(model),
                               LaplacePrior(kind="l2sp", scaling="package").penalty(model))
    with pytest.raises(ValueError, match=r"ewc.safetensors: holds a ewc estimate, the prior is 'kfac'"):
        load_prior(model, "kfac", curvature=ewc_path)
    with pytest.raises(ValueError, match="needs a curvature file"):
        load_prior(model, "ekfac")
    with pytest.raises(FileNotFoundError, match="missing.safetensors: no such curvature file"):
        load_prior(model, "kfac", curvature=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"prior kind \('none' for no prior\) must be one of 'l2sp', 'ewc', "):
        load_prior(model, "fisher")
