"""Kokoro's own-output Monte-Carlo Fisher: batch-size independence, and agreement with the exact Fisher
from per-sample Jacobians (plain autograd, one output element at a time) on a shrunken Kokoro."""

import pytest
import torch
from kokoro_models import _one_thread, _quiet, kokoro_model, tiny_config, utterances  # noqa: F401 (autouse fixtures)

from tts_bpeft.curvature import Curvature
from tts_bpeft.kokoro.curvature import (
    OwnOutputLikelihood,
    estimate_kokoro_curvature,
    own_output_batches,
    own_output_utterances,
)
from tts_bpeft.kokoro.predict import KokoroUtterance, collate, predict
from tts_bpeft.lora import add_lora
from tts_bpeft.prior import curvature_form
from tts_bpeft.speech_data.records import Utterance

# one layer per kind and per head: Linear in PL-BERT (all heads), the duration LSTM and projection, a
# duration-encoder AdaLayerNorm (style in: one position), the F0 / energy projections (Conv1d), the shared
# F0/N LSTM; for the decoder (mel head) its asr projection, a noise conv and an AdaIN Linear
LAYERS = ["bert.encoder.albert_layer_groups.0.albert_layers.0.ffn", "predictor.lstm",
          "predictor.duration_proj.linear_layer", "predictor.text_encoder.lstms.1.fc", "predictor.F0_proj",
          "predictor.N_proj", "predictor.shared", "predictor.F0.0.norm1.fc"]
DECODER_LAYERS = ["decoder.asr_res.0", "decoder.generator.noise_convs.1", "decoder.generator.noise_res.1.adain1.0.fc"]




@pytest.fixture(autouse=True, scope="module")
def _float64():
    """Float64 (Kokoro makes its padding buffers in the default dtype): a random-weight decoder's log-mel is
    ill-conditioned in float32 (batch 1 and batch 3 convolutions differ by ~1e-7, its quiet bands by ~1e-2)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def adapted(_float64):
    config = tiny_config()
    model = kokoro_model(config)
    add_lora(model, [f"^{n}$" for n in LAYERS + DECODER_LAYERS], r=2)
    return model, config


def assert_same(a: Curvature, b: Curvature, rtol=1e-4):
    """Same layers, samples and curvature. EKFAC eigenbases are unique only up to rotations inside degenerate
    eigenspaces (PL-BERT's A has a null space: fewer tokens than inputs), so EKFAC is compared as the
    operator it stores: the quadratic form on random weight shifts of rank 1 and of full rank."""
    assert a.names == b.names and a.samples == b.samples
    g = torch.Generator().manual_seed(0)
    for name in a.names:
        if "scales" in a.term(name):
            n_out, n_in = a.layers[name].shape
            for r in (1, min(n_out, n_in)):
                B, A = torch.randn(n_out, r, generator=g), torch.randn(r, n_in, generator=g)
                torch.testing.assert_close(curvature_form(b, name)(B, A, 1.0), curvature_form(a, name)(B, A, 1.0),
                                           rtol=rtol, atol=0, msg=name)
            continue
        for key, value in a.term(name).items():
            torch.testing.assert_close(b.term(name)[key], value, rtol=rtol, atol=rtol * value.abs().max().item(),
                                       msg=name + key)


@pytest.mark.parametrize("method", ["kfac", "ewc", "ekfac"])
def test_estimate_does_not_depend_on_the_batch_size(adapted, method):
    """Crops of 4 aligned frames: with 2 both frames can fall in one token, and then the decoder's asr_res
    per-sample gradient ``sum_p g_p a^T`` cancels to rounding level (its Fisher ~1e-4 against ~1 for its
    neighbours), which no batching can reproduce to 1e-4."""
    model, config = adapted
    utts = utterances(config, lengths=(9, 6, 12))
    likelihood = OwnOutputLikelihood(crop_frames=4)
    kw = dict(method=method, likelihood=likelihood, mc_samples=2, seed=4, progress=False)
    one = estimate_kokoro_curvature(model, utts, batch_size=1, **kw)
    three = estimate_kokoro_curvature(model, utts, batch_size=3, **kw)
    assert_same(one, three)
    assert one.fisher == "mc" and one.mc_samples == 2 and one.samples == 3
    reached = {"predictor.lstm.weight_ih_l0", "decoder.asr_res.0", "predictor.duration_proj.linear_layer"}
    assert reached <= set(one.names)
    other_seed = estimate_kokoro_curvature(model, utts, batch_size=3, **{**kw, "seed": 5})
    name = "bert.encoder.albert_layer_groups.0.albert_layers.0.ffn"  # (a scalar-output layer's G is exact)
    key = {"kfac": "G", "ewc": "diag", "ekfac": "scales"}[method]
    assert not torch.allclose(one.term(name)[key], other_seed.term(name)[key])  # draws depend on the seed


PROSODY = ("duration", "f0", "energy")


def exact_ewc(model, utts, likelihood, names, seed):
    """The expected EWC diagonal from per-sample Jacobians, one output element at a time, and the
    standard error of an M-draw Monte-Carlo estimate of it (divide by sqrt(M)).

    With a Laplace(b) term averaged over its n elements, the gradient of the NLL w.r.t. element r is
    ``-sign(y_r - mu_r) / (n b)`` with independent signs, so per sample ``F = sum_r c^2 J_r^T J_r`` and its
    diagonal is ``sum_r c^2 J_r**2`` (c = 1 / (n b)); one draw estimates it with variance
    ``2 ((sum_r a_r^2)^2 - sum_r a_r^4)``, a_r = c J_r (the Rademacher identity)."""
    modules = dict(model.named_modules())
    params = {}
    for name in names:
        module, weight = (name.rsplit(".", 1) if ".weight_" in name else (name, "weight"))
        layer = modules[module].base_layer if hasattr(modules[module], "base_layer") else modules[module]
        params[name] = getattr(layer, weight)
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    mean = {n: torch.zeros(p.shape[0], p[0].numel(), dtype=torch.float64) for n, p in params.items()}
    variance = {n: torch.zeros_like(v) for n, v in mean.items()}
    try:
        for u in utts:
            out = predict(model, collate([u], seed), likelihood.crop_frames, decoder=False)
            values = {"duration": out.durations[0], "f0": out.f0[0], "energy": out.energy[0]}
            s2 = {n: torch.zeros_like(v) for n, v in mean.items()}
            s4 = {n: torch.zeros_like(v) for n, v in mean.items()}
            for term in PROSODY:
                rows = values[term].reshape(-1)
                c = 1.0 / (rows.numel() * getattr(likelihood, term))
                for r in range(rows.numel()):
                    grads = torch.autograd.grad(rows[r], list(params.values()), retain_graph=True, allow_unused=True)
                    for n, g in zip(params, grads):
                        if g is not None:
                            a2 = (c * g.reshape(g.shape[0], -1).double()) ** 2
                            s2[n] += a2
                            s4[n] += a2 ** 2
            for n in params:
                mean[n] += s2[n] / len(utts)
                variance[n] += 2 * (s2[n] ** 2 - s4[n]) / len(utts) ** 2
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return mean, {n: v.sqrt() for n, v in variance.items()}


def test_mc_fisher_agrees_with_the_exact_fisher_from_per_sample_jacobians():
    """EWC: within 6 standard errors of the exact expectation, entry by entry (the standard error comes from
    the Jacobians themselves), the whole error within twice its expected norm, and a Fisher twice as large
    (a wrong scale) is rejected.
    KFAC: on the style-fed AdaLayerNorm / AdaIN Linear layers (one position per sample, the same style for
    every sample) KFAC is exact, so diag(kron(G, A)) equals the EWC diagonal of the same draws."""
    config = tiny_config()
    model = kokoro_model(config)
    add_lora(model, [f"^{n}$" for n in LAYERS], r=2)
    shared_style = utterances(config, lengths=(1 + 2,))[0].style
    utts = [KokoroUtterance(u.key, u.tokens, shared_style) for u in utterances(config, lengths=(9, 6, 12))]
    likelihood = OwnOutputLikelihood(terms=PROSODY, crop_frames=2)
    draws, seed = 48, 7
    kw = dict(likelihood=likelihood, mc_samples=draws, batch_size=3, seed=seed, progress=False)
    ewc = estimate_kokoro_curvature(model, utts, method="ewc", **kw)
    exact, se = exact_ewc(model, utts, likelihood, ewc.names, seed)
    for name in ewc.names:
        estimate, expected, error = ewc.term(name)["diag"].double(), exact[name], se[name] / draws ** 0.5
        assert expected.abs().max() > 0, name
        assert ((estimate - expected).abs() <= 6 * error + 1e-12 * expected.max()).all(), name
        wrong = ((estimate - 2 * expected).abs() > 6 * error)[expected > 0].float().mean()
        assert wrong > 0.5, (name, wrong)  # teeth: the test tells a factor of 2 apart
        # globally: E ||estimate - expected||^2 = sum of the squared standard errors
        assert (estimate - expected).norm() <= 2 * error.norm(), name

    kfac = estimate_kokoro_curvature(model, utts, method="kfac", **kw)
    for name in ("predictor.text_encoder.lstms.1.fc", "predictor.F0.0.norm1.fc"):
        factors = kfac.term(name)
        diag = torch.outer(factors["G"].diagonal(), factors["A"].diagonal())
        torch.testing.assert_close(diag, ewc.term(name)["diag"], rtol=1e-4, atol=1e-7 * diag.max().item())


def test_records_become_utterances_with_their_voice_row_and_stable_keys():
    config = tiny_config()
    vocab = config["vocab"]
    packs = {"af_a": torch.arange(510 * 32, dtype=torch.float32).reshape(510, 1, 32), "am_b": torch.zeros(510, 1, 32)}
    ps = "".join(list(vocab)[10:16])  # six known phoneme symbols
    records = [Utterance("", "af_a", "six", phonemes=ps), Utterance("", "am_b", "six", phonemes=ps[:4])]
    utts = own_output_utterances(vocab, packs, records)
    assert [u.key for u in utts] == ["af_a|six", "am_b|six"]
    assert utts[0].tokens.tolist() == [0, *(vocab[p] for p in ps), 0]
    torch.testing.assert_close(utts[0].style, packs["af_a"][len(ps) - 1, 0])  # Kokoro's row: phonemes - 1
    with pytest.raises(ValueError, match="voices \\['nobody'\\]"):
        own_output_utterances(vocab, packs, [Utterance("", "nobody", "x", phonemes=ps)])
    with pytest.raises(ValueError, match="unique"):
        own_output_batches(own_output_utterances(vocab, packs, records[:1] * 2))
    with pytest.raises(ValueError, match="crop_frames must be >= 2"):
        OwnOutputLikelihood(crop_frames=1)
    with pytest.raises(ValueError, match="subset"):
        OwnOutputLikelihood(terms=("pitch",))


def test_family_measures_the_same_fisher_as_the_direct_estimate(adapted, monkeypatch):
    from tts_bpeft.curvature import estimate_curvature
    from tts_bpeft.family import DataOptions, TTSModel, family
    from tts_bpeft.kokoro import family as kokoro_family

    model, config = adapted
    vocab = config["vocab"]
    g = torch.Generator().manual_seed(3)
    packs = {name: torch.randn(510, 1, 2 * config["style_dim"], generator=g) for name in ("af_a", "am_b")}
    monkeypatch.setattr(kokoro_family, "_voicepack", lambda settings, name: packs[name])  # 256-wide in real packs
    symbols = list(vocab)[10:20]
    records = [Utterance("", "af_a", "one", phonemes="".join(symbols[:5])),
               Utterance("", "am_b", "two", phonemes="".join(symbols[3:10]))]
    kokoro = family("kokoro")
    tts = TTSModel("kokoro", model, {}, config)
    batches = kokoro.curvature_batches(tts, records, batch_size=2, seed=5)
    loss_fn = kokoro.per_sample_loss(tts, seed=5, options=DataOptions(max_frames=8))  # every term
    through_family = estimate_curvature(model, batches, loss_fn, method="kfac", fisher="mc", seed=5, progress=False)
    direct = estimate_kokoro_curvature(model, own_output_utterances(vocab, packs, records), "kfac",
                                       OwnOutputLikelihood(crop_frames=4), batch_size=1,
                                       seed=5, progress=False)
    assert through_family.names == direct.names and through_family.samples == direct.samples == 2
    assert_same(through_family, direct, rtol=1e-6)
    with pytest.raises(ValueError, match="Monte-Carlo Fisher"):
        kokoro.per_sample_loss(tts, fisher="empirical")
