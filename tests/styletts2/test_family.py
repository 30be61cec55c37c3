"""StyleTTS 2 implements the model-family interface: build, presets, curvature batches and per-sample losses,
fine-tuning steps, synthesis and export, on the tiny build and a generated LibriTTS corpus."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from tts_bpeft.curvature import Laplace
from tts_bpeft.family import FAMILIES, DataOptions, ModelFamily, Synthesizer, TTSModel, Voice, family, model_paths
from tts_bpeft.lora import merged_state_dict
from tts_bpeft.lora.targets import lora_targets
from tts_bpeft.speech_data.libritts import read_libritts
from tts_bpeft.styletts2.build import MODULE_NAMES

OPTIONS = DataOptions(max_frames=84)
TERMS = ["f0", "norm", "dur", "ce"]  # the predictor's and aligner's terms: no decoder pass, seconds not minutes


@pytest.fixture(scope="module")
def styletts2() -> ModelFamily:
    return family("styletts2")


@pytest.fixture(scope="module")
def utterances(libritts_root):
    return read_libritts(libritts_root).utterances[:3]


@pytest.fixture(scope="module")
def built(styletts2) -> dict:
    """The tiny build (seed 0) with the design preset at r=2: the adapted layer names, the decoder's weights
    before LoRA and merged right after it (B = 0), then the model with its B factors made non-zero, as
    training would. One build for every test here (a build takes seconds)."""
    model = styletts2.build({"config": "tiny"}, seed=0)
    before = {k: v.clone() for k, v in model.net["decoder"].state_dict().items()}
    names = styletts2.add_preset(model, "design", r=2, alpha=4)
    at_start = merged_state_dict({"decoder": model.net["decoder"]})
    torch.manual_seed(1)
    for module in model.modules():
        for name, param in module.named_parameters():
            if ".lora_B." in f".{name}":
                param.data.normal_(0, 0.02)
    return {"model": model.eval(), "names": names, "before": before, "at_start": at_start}


@pytest.fixture(scope="module")
def adapted(built) -> TTSModel:
    return built["model"]


def test_registry_imports_a_family_by_name(styletts2) -> None:
    assert isinstance(styletts2, ModelFamily) and styletts2.name == "styletts2" and styletts2.sample_rate == 24000
    assert styletts2.clones_voices and model_paths("styletts2") == ("config", "checkpoint", "aux.asr", "aux.pitch",
                                                                   "aux.plbert")
    assert set(FAMILIES) >= {"styletts2", "kokoro"}
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        family("nope")


def test_build_gives_the_seeded_13_module_model(styletts2, adapted) -> None:
    assert adapted.family == "styletts2" and tuple(adapted.net) == MODULE_NAMES and adapted.seed == 0
    assert adapted.settings == {"config": "tiny"} and adapted.config["model_params"]["decoder"]["type"] == "istftnet"


def test_add_preset_adapts_the_preset_layers_and_starts_at_the_base(styletts2, built) -> None:
    names, model = built["names"], built["model"]
    assert names and all(n.split(".")[0] in ("text_encoder", "decoder", "diffusion") for n in names)
    assert {t.split(".weight")[0] for t in lora_targets(model.net)} <= set(names)
    assert set(styletts2.presets()) == {"paper", "design", "all"}
    for key, value in built["before"].items():  # B = 0 at the start: nothing changes
        torch.testing.assert_close(built["at_start"][f"decoder.{key}"], value)


def test_curvature_losses_are_per_sample_and_batch_size_independent(styletts2, adapted, utterances) -> None:
    loss_fn = styletts2.per_sample_loss(adapted, terms=TERMS, options=OPTIONS)
    with torch.no_grad():
        pair = [loss_fn(adapted.net, b) for b in styletts2.curvature_batches(adapted, utterances[:2], 2, 0, OPTIONS)]
        ones = [loss_fn(adapted.net, b) for b in styletts2.curvature_batches(adapted, utterances[:2], 1, 0, OPTIONS)]
    assert pair[0].shape == (2,) and all(o.shape == (1,) for o in ones)
    assert torch.isfinite(pair[0]).all() and (pair[0] > 0).all()
    # each sample's loss is its own: the same with or without a neighbour in the batch
    torch.testing.assert_close(pair[0], torch.cat(ones), rtol=1e-4, atol=1e-4)
    mc = styletts2.per_sample_loss(adapted, fisher="mc", terms=TERMS, options=OPTIONS)
    batch = next(iter(styletts2.curvature_batches(adapted, utterances[:2], 2, 0, OPTIONS)))
    with torch.no_grad():
        terms = mc(adapted.net, batch)
    assert terms and all(isinstance(t, Laplace) for t in terms)


def test_training_step_gives_gradients_to_the_adapter_only(styletts2, adapted, utterances) -> None:
    for module in adapted.modules():
        for name, param in module.named_parameters():
            param.requires_grad_(".lora_" in f".{name}")
            param.grad = None
    batches = styletts2.training_batches(adapted, utterances, batch_size=2, seed=0, options=OPTIONS)
    terms = ["mel", *TERMS]  # the mel term reaches the adapted decoder and text encoder
    step_loss = styletts2.training_loss(adapted, terms=terms, seed=0, options=OPTIONS)
    epoch, batch = next(iter(batches(0)))
    assert epoch == 0 and len(batch.paths) == 2
    loss, logged = step_loss((epoch, batch))
    loss.backward()
    assert loss.ndim == 0 and float(logged["loss"]) == pytest.approx(float(loss.detach()))
    assert set(logged) == {"loss", *terms}
    grads = {n: p.grad for m in adapted.modules() for n, p in m.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads) and any(g.abs().sum() > 0 for g in grads.values())
    # the order of an epoch is drawn from the seed and the epoch
    again = styletts2.training_batches(adapted, utterances, batch_size=2, seed=0, options=OPTIONS)
    assert [b.paths for _, b in batches(1)] == [b.paths for _, b in again(1)]
    for module in adapted.modules():
        module.requires_grad_(False)
    adapted.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from tts_bpeft.speech_data.synthesizers import available_voices

    wave, rate = available_voices()[0].synthesize("A short reference recording of this speaker's voice.")
    path = tmp_path_factory.mktemp("family_ref") / "ref.wav"
    sf.write(path, wave, rate)
    return path


def test_synthesis_clones_a_reference_at_24_khz(styletts2, adapted, reference) -> None:
    synth = styletts2.synthesizer(adapted, {"max_token_frames": 3}, seed=5)
    assert isinstance(synth, Synthesizer) and synth.sample_rate == 24000
    wave = synth("Hello there.", Voice.clone(reference), 7)
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.size > 0 and np.isfinite(wave).all()
    np.testing.assert_array_equal(wave, synth("Hello there.", Voice.clone(reference), 7))
    assert styletts2.voices(adapted) == ()
    with pytest.raises(ValueError, match="no built-in voices"):
        synth("Hello there.", Voice.builtin("af_heart"), 7)


def test_export_merges_the_adapter_into_an_official_checkpoint(styletts2, adapted, tmp_path) -> None:
    path = styletts2.export(adapted, tmp_path / "merged.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state["net"]) == set(MODULE_NAMES) and next(iter(state["net"]["decoder"])).startswith("module.")
    merged = merged_state_dict(adapted.net)
    adapted_layers = {n.rsplit(".", 1)[0] for n in lora_targets(adapted.net)}
    for key in ("text_encoder", "decoder"):
        saved = {k.removeprefix("module."): v for k, v in state["net"][key].items()}
        assert set(saved) == {k[len(key) + 1:] for k in merged if k.startswith(key + ".")}
        for name, value in saved.items():
            torch.testing.assert_close(value, merged[f"{key}.{name}"], msg=name)
    assert any(n.startswith("decoder.") for n in adapted_layers)  # what was merged holds adapters


def test_voice_is_a_name_or_a_reference() -> None:
    assert Voice.builtin("af_heart").describe() == "voice:af_heart"
    assert Voice.clone("x.wav").describe().startswith("reference:/") and Voice.clone("x.wav").reference.name == "x.wav"
    with pytest.raises(ValueError, match="exactly one"):
        Voice()
    with pytest.raises(ValueError, match="exactly one"):
        Voice(name="a", reference="b.wav")
