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


def test_relative_scaling_puts_methods_on_one_footing(setup, ekfac):
    """For an isotropic random dW the expected Fisher quadratic is m * ||dW||^2, so under relative scaling every
    method charges about what L2-SP charges (averaged over many random directions)."""
    model, kfac, ewc, _ = setup
    g = torch.Generator().manual_seed(0)
    priors = {"l2sp": LaplacePrior(kind="l2sp", scaling="relative"),
              "kfac": LaplacePrior(kfac, scaling="relative"), "ewc": LaplacePrior(ewc, scaling="relative"),
              "ekfac": LaplacePrior(ekfac, scaling="relative")}
    totals = dict.fromkeys(priors, 0.0)
    params = lora_params(model)
    originals = [p.detach().clone() for p in params]
    with torch.no_grad():
        for _ in range(200):
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g))
            for k, prior in priors.items():
                totals[k] += float(prior.penalty(model))
        for p, value in zip(params, originals):
            p.copy_(value)
    for k in ("kfac", "ewc", "ekfac"):
        assert math.isclose(totals[k], totals["l2sp"], rel_tol=0.35), (k, totals)


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
