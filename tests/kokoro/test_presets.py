"""Kokoro LoRA presets: what they select, and that every preset runs forward and backward on Kokoro's
architecture and merges exactly (the merged plain model gives the adapted model's outputs)."""

import pytest
import torch
from kokoro_models import _one_thread, _quiet, kokoro_model, real_config, tiny_config, utterances  # noqa: F401 (autouse fixtures)

from tts_bpeft.curvature import Laplace
from tts_bpeft.kokoro.predict import collate, predict
from tts_bpeft.kokoro.presets import PRESETS, UNUSED, add_preset_lora, preset_plan
from tts_bpeft.layers import layer_kind
from tts_bpeft.lora import merged_state_dict


@pytest.fixture(scope="module")
def tiny():
    return kokoro_model(tiny_config())


def kinds(model, names):
    modules = dict(model.named_modules())
    return {(n.split(".")[0], layer_kind(modules[n])) for n in names}


def test_presets_select_what_their_docstrings_say(tiny):
    paper, design, every = (preset_plan(tiny, p) for p in ("paper", "design", "all"))
    modules = dict(tiny.named_modules())
    linear = {n for n, m in modules.items() if isinstance(m, torch.nn.Linear) and n.split(".")[0] != "text_encoder"}
    assert set(paper.names) == linear - set(UNUSED)
    assert kinds(tiny, design.names) == {
        ("text_encoder", "conv1d"), ("text_encoder", "lstm"), ("predictor", "lstm"), ("predictor", "linear"),
        ("predictor", "conv1d"), ("decoder", "conv1d"), ("decoder", "conv_transpose1d"), ("decoder", "linear")}
    assert any(modules[n].dilation[0] > 1 for n in design.names if layer_kind(modules[n]) == "conv1d")
    assert set(design.names) < set(every.names)
    assert {n.split(".")[0] for n in set(every.names) - set(design.names)} == {"bert", "bert_encoder"}
    for plan in (paper, design, every):  # never-trained layers are listed with their reason, never selected
        assert not set(UNUSED) & set(plan.names)
    assert ("bert.pooler", UNUSED["bert.pooler"]) in paper.skipped
    skipped = dict(every.skipped)
    assert {"decoder.decode.3.pool", "predictor.F0.1.pool", "predictor.N.1.pool"} <= set(skipped)
    assert "groups" in skipped["decoder.decode.3.pool"]
    assert f"skipped decoder.generator.m_source.l_linear: {UNUSED['decoder.generator.m_source.l_linear']}" \
        in every.format()
    narrowed = preset_plan(tiny, "design", exclude=["decoder"], extra=[r"bert_encoder"]).names
    assert "bert_encoder" in narrowed and not any(n.startswith("decoder.") for n in narrowed)
    with pytest.raises(ValueError, match="unknown LoRA preset"):
        preset_plan(tiny, "nope")


def randomise_lora_B(model, seed=3, scale=0.05):
    """LoRA starts as the identity (B = 0); give every B a value so the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def own_output_loss(out, seed=0):
    """A sampled own-output loss touching every head (durations, F0, energy, mel)."""
    g = torch.Generator().manual_seed(seed)
    terms = [Laplace(out.durations, out.durations.detach(), out.token_mask), Laplace(out.f0, out.f0.detach(), scale=10),
             Laplace(out.energy, out.energy.detach()), Laplace(out.mel, out.mel.detach(), scale=0.2)]
    return sum(t.sampled_nll(g).sum() for t in terms)


def check_preset_runs_and_merges(config, preset, crop_frames, lengths):
    """Float64 throughout (Kokoro makes its padding buffers in the default dtype): the log-mel of a
    random-weight decoder is ill-conditioned in float32, where merged and adapted outputs differ by ~1e-2."""
    torch.set_default_dtype(torch.float64)
    try:
        model = kokoro_model(config)
        base = {k: v.clone() for k, v in model.state_dict().items()}
        batch = collate(utterances(config, lengths))
        plan = preset_plan(model, preset, r=4)
        add_preset_lora(model, preset, r=4, alpha=8)
        randomise_lora_B(model)
        out = predict(model, batch, crop_frames)
        own_output_loss(out).backward()
        lora = {n: p for n, p in model.named_parameters() if ".lora_" in n}
        assert {n.split(".lora_")[0].replace(".base_layer", "") for n in lora} == set(plan.names)
        silent = sorted({n.split(".lora_")[0] for n, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0})
        assert not silent, f"adapted layers without gradient: {silent[:5]}"

        merged = merged_state_dict(model)
        changed = {k.rsplit(".", 1)[0] for k in base if not torch.equal(base[k], merged[k])}
        assert {n for n in plan.names if not any(c == n or c.startswith(n + ".") for c in changed)} == set()
        plain = kokoro_model(config, seed=1)  # other random weights: everything comes from the merged dict
        plain.load_state_dict(merged, strict=True)
        with torch.no_grad():
            adapted, merged_out = predict(model, batch, crop_frames), predict(plain, batch, crop_frames)
    finally:
        torch.set_default_dtype(torch.float32)
    for key in ("durations", "f0", "energy", "mel"):  # the mel is computed in float32 from a float64 wave
        torch.testing.assert_close(getattr(merged_out, key), getattr(adapted, key), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_backward_and_merges_exactly_on_a_shrunken_kokoro(preset):
    check_preset_runs_and_merges(tiny_config(), preset, crop_frames=2, lengths=(7, 5))


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_backward_and_merges_exactly_on_kokoro_82m_architecture(preset):
    check_preset_runs_and_merges(real_config(), preset, crop_frames=2, lengths=(8, 6))
