"""LaplacePrior against dense forms on every layer type, and its options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from curv_helpers import dense_kfac, lora_delta
from prior_helpers import (
    LSTM_WEIGHTS,
    NAMES,
    check_against,
    layers_of,
    lora_params,
    package_prior,
    squared_error_loss,
)
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from tts_bpeft import Curvature, LaplacePrior, estimate_curvature


def test_lora_delta_reproduces_every_lora_layer(setup):
    """The dense reference dW (from raw LoRA parameters) is the layer's real shift: base(W + dW) == LoRA layer."""
    model, _, _, x = setup
    with torch.no_grad():
        h = torch.tanh(model.lin(x)).transpose(1, 2)
        lin = model.lin.base_layer
        torch.testing.assert_close(model.lin(x), F.linear(x, lin.weight + lora_delta(model.lin), lin.bias))
        conv = model.conv.base_layer
        W = conv.weight_g * conv.weight_v / conv.weight_v.norm(dim=(1, 2), keepdim=True)
        Wd = W + lora_delta(model.conv).reshape(W.shape)
        torch.testing.assert_close(model.conv(h), F.conv1d(h, Wd, conv.bias, padding=2, dilation=2))
        h2 = torch.tanh(model.conv(h))
        ct = model.convt.base_layer
        dW = lora_delta(model.convt).reshape(3, 4, 3).permute(1, 0, 2)  # (out, in, k) -> (in, out, k)
        torch.testing.assert_close(model.convt(h2), F.conv_transpose1d(h2, ct.weight + dW, ct.bias, stride=2,
                                                                       padding=1, output_padding=1))
        seq = model.convt(h2).transpose(1, 2)
        base = model.lstm.base_layer
        weights = {w: getattr(base, w) + lora_delta(model.lstm, w) for w in LSTM_WEIGHTS}
        torch.testing.assert_close(model.lstm(seq)[0], functional_call(base, weights, (seq,))[0])


def test_kfac_penalty_and_gradients_equal_the_dense_kronecker_form(setup):
    model, kfac, _, _ = setup
    prior = package_prior(kfac, lam=1.0)
    per_layer = prior.layer_penalties(model)
    layers = layers_of(model)
    for name in NAMES:
        layer, param = layers[name]
        dense = dense_kfac(lora_delta(layer, param), kfac.terms(name))
        assert dense > 1e-4, name
        torch.testing.assert_close(per_layer[name].double(), dense, rtol=1e-5, atol=1e-8)
    total = sum(dense_kfac(lora_delta(*layers[n]), kfac.terms(n)) for n in NAMES)
    check_against(package_prior(kfac, lam=2.0).penalty(model), 2.0 * total, lora_params(model))


def test_ewc_and_l2sp_equal_their_dense_forms(setup):
    model, _, ewc, _ = setup
    layers = layers_of(model)
    dense_ewc = sum((ewc.term(n)["diag"].double() * lora_delta(*layers[n]).double() ** 2).sum() for n in NAMES)
    check_against(package_prior(ewc, lam=1.5).penalty(model), 1.5 * dense_ewc, lora_params(model))
    def dense_l2():
        return sum((lora_delta(*layers[n]).double() ** 2).sum() for n in NAMES)
    check_against(package_prior(kind="l2sp", lam=0.5).penalty(model), 0.5 * dense_l2(), lora_params(model))
    check_against(package_prior(ewc, kind="l2sp").penalty(model), dense_l2(), lora_params(model))


def test_compressed_factors(setup):
    model, kfac, _, _ = setup
    full = package_prior(kfac).layer_penalties(model)
    for name, q in package_prior(kfac.compress(rank=1000)).layer_penalties(model).items():
        torch.testing.assert_close(q, full[name], rtol=1e-4, atol=1e-7)
    rank = 2
    truncated = package_prior(kfac.compress(rank=rank)).layer_penalties(model)
    layers = layers_of(model)
    differs = 0
    for name in NAMES:
        terms = []
        for term in kfac.terms(name):
            low = {}
            for key in ("A", "G"):  # top-`rank` eigenpairs, densely
                vals, vecs = torch.linalg.eigh(term[key].double())
                low[key] = vecs[:, -rank:] @ torch.diag(vals[-rank:]) @ vecs[:, -rank:].T
            terms.append(low)
        dense = dense_kfac(lora_delta(*layers[name]), terms)
        torch.testing.assert_close(truncated[name].double(), dense, rtol=1e-4, atol=1e-7)
        differs += not torch.allclose(truncated[name], full[name], rtol=1e-3)
    assert differs >= 4  # the truncation is visible, so the comparison above is not full == full


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.999])
def test_compressed_by_energy_keeps_the_fewest_eigenpairs_holding_that_trace_share(setup, energy):
    model, kfac, _, _ = setup
    compressed = kfac.compress(energy=energy)
    penalties = package_prior(compressed).layer_penalties(model)
    layers = layers_of(model)
    for name in NAMES:
        terms = []
        for term, kept in zip(kfac.terms(name), compressed.terms(name)):
            low = {}
            for key in ("A", "G"):
                vals = torch.linalg.eigvalsh(term[key].double()).clamp(min=0).flip(0)  # descending
                shares = vals.cumsum(0) / vals.sum()
                k = int((shares < energy - 1e-9).sum()) + 1  # the first prefix reaching the share
                assert kept[key + "_vals"].shape == (k,), (name, key)
                assert shares[k - 1] >= energy - 1e-9 and (k == 1 or shares[k - 2] < energy)
                full_vals, vecs = torch.linalg.eigh(term[key].double())
                low[key] = vecs[:, -k:] @ torch.diag(full_vals[-k:]) @ vecs[:, -k:].T
            terms.append(low)
        dense = dense_kfac(lora_delta(*layers[name]), terms)
        torch.testing.assert_close(penalties[name].double(), dense, rtol=1e-4, atol=1e-7)
    full = package_prior(kfac).layer_penalties(model)
    for name, q in package_prior(kfac.compress(energy=1.0)).layer_penalties(model).items():
        torch.testing.assert_close(q, full[name], rtol=1e-4, atol=1e-7)
    again = package_prior(kfac.compress(energy=1.0).compress(energy=energy)).layer_penalties(model)
    for name, q in again.items():  # truncating a stored eigenbasis further keeps the same eigenpairs
        torch.testing.assert_close(q, penalties[name], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="either rank"):
        kfac.compress(rank=2, energy=0.9)
    with pytest.raises(ValueError, match="trace fraction"):
        kfac.compress(energy=1.5)


def test_an_eigenbasis_keeping_most_pairs_is_charged_densely_and_a_truncated_one_as_is(setup):
    """Penalty and gradients of a stored eigenbasis equal the dense form, whichever form the prior computes in:
    dense where more than half of the eigenpairs are kept (cheaper), the eigenbasis where truncated."""
    model, kfac, _, _ = setup
    for compressed, some_dense in ((kfac.compress(energy=1.0), True), (kfac.compress(rank=1), False)):
        prior = package_prior(compressed)
        total, dense = 0.0, 0
        for name in NAMES:
            term = prior.forms(name)[0].terms[0]
            kept = compressed.terms(name)[0]["A_vals"].shape[0]
            assert ("A" in term) == (2 * kept > compressed.layers[name].shape[1]), (name, kept)
            dense += "A" in term
            factors = [{key: (t[key + "_vecs"] * t[key + "_vals"]) @ t[key + "_vecs"].T for key in ("A", "G")}
                       for t in compressed.terms(name)]
            total = total + dense_kfac(lora_delta(*layers_of(model)[name]), factors)
        assert (dense > 0) == some_dense
        check_against(prior.penalty(model), total, lora_params(model))


def test_weighted_sum_penalty_is_the_weighted_sum_of_dense_forms(setup):
    model, kfac, _, x = setup
    y2 = torch.randn(4, 10, 8)
    other = estimate_curvature(model, [(x.flip(0), y2)], squared_error_loss, progress=False)
    combined = Curvature.weighted_sum([kfac, other], [0.3, 2.0])
    got = package_prior(combined).layer_penalties(model)
    layers = layers_of(model)
    for name in NAMES:
        dW = lora_delta(*layers[name])
        expected = 0.3 * dense_kfac(dW, kfac.terms(name)) + 2.0 * dense_kfac(dW, other.terms(name))
        torch.testing.assert_close(got[name].double(), expected, rtol=1e-5, atol=1e-8)


def test_per_layer_lam_patterns(setup):
    model, kfac, _, _ = setup
    q = package_prior(kfac).layer_penalties(model)
    prior = package_prior(kfac, lam=1.0, lam_per_layer={"conv": 10.0, "weight_hh_l0": 100.0,
                                                       r"lstm\.weight_.*": 1000.0, r"conv.*": 7.0})
    lams = {n: prior.layer_lam(n) for n in NAMES}
    assert lams == {"lin": 1.0, "conv": 10.0, "convt": 7.0,  # exact name; regex for convt
                    "lstm.weight_ih_l0": 1000.0, "lstm.weight_hh_l0": 100.0,  # dotted suffix beats later regex
                    "lstm.weight_ih_l0_reverse": 1000.0, "lstm.weight_hh_l0_reverse": 1000.0}
    torch.testing.assert_close(prior.penalty(model), sum(lams[n] * q[n] for n in NAMES))


def test_reference_scaling_multiplies_kfac_layers_by_samples_over_tokens(setup):
    model, kfac, ewc, _ = setup
    q = package_prior(kfac).layer_penalties(model)
    ref = LaplacePrior(kfac, scaling="reference").layer_penalties(model)
    tokens = {"lin": 4 * 5, "conv": 4 * 5, "convt": 4 * 10}  # positions: 5 frames, then 10 after the stride-2 convT
    tokens.update({f"lstm.{w}": 4 * 10 for w in LSTM_WEIGHTS})
    for name in NAMES:
        assert kfac.layers[name].tokens == [tokens[name]]
        torch.testing.assert_close(ref[name], q[name] * 4 / tokens[name])
    e = package_prior(ewc).layer_penalties(model)
    e_ref = LaplacePrior(ewc, scaling="reference").layer_penalties(model)
    for name in NAMES:
        torch.testing.assert_close(e_ref[name], e[name])


def test_configuration_errors(setup):
    model, kfac, ewc, _ = setup
    with pytest.raises(ValueError, match="ewc estimate cannot serve a kfac prior"):
        package_prior(ewc, kind="kfac")
    with pytest.raises(ValueError, match="needs a curvature"):
        package_prior(kind="ewc")
    with pytest.raises(ValueError, match="prior kind must be one of 'l2sp', 'ewc', 'kfac', 'ekfac'; got 'fisher'"):
        package_prior(kfac, kind="fisher")
    with pytest.raises(ValueError, match="scaling must be"):
        LaplacePrior(kfac, scaling="paper")
    partial = Curvature(kfac.method, kfac.fisher, kfac.kfac_approx,
                        {n: kfac.layers[n] for n in NAMES if n != "convt"}, kfac.samples)
    with pytest.raises(ValueError, match=r"no estimate for adapted layers \['convt'\]"):
        package_prior(partial).penalty(model)
    with pytest.raises(ValueError, match="no LoRA adapter 'other'"):
        package_prior(kfac, adapter_name="other").penalty(model)


def test_penalty_under_bf16_autocast_is_float32_and_exact(setup):
    model, kfac, ewc, _ = setup
    for curv in (kfac, ewc, kfac.compress(2)):
        prior = package_prior(curv, lam=3.0)
        fp32 = prior.penalty(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16  # autocast is really on
            value = prior.penalty(model)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, fp32, rtol=1e-6, atol=0)


def test_works_on_a_ddp_wrapped_model(setup, tmp_path):
    model, kfac, _, _ = setup
    expected = package_prior(kfac, lam=2.0).penalty(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        prior = package_prior(kfac, lam=2.0)
        value = prior.penalty(ddp)
        torch.testing.assert_close(value, expected)
        value.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora_params(model))
    finally:
        dist.destroy_process_group()
        for p in model.parameters():
            p.grad = None
    assert math.isfinite(expected.item())
