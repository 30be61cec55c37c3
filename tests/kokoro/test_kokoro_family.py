"""Kokoro implements the model-family interface: build from settings, synthesizer, voices, export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tts_bpeft import add_lora
from tts_bpeft.family import DataOptions, TTSModel, Voice, estimate_pretraining_curvature, family
from tts_bpeft.kokoro.checkpoint import read_kokoro_checkpoint, save_kokoro_checkpoint
from tts_bpeft.kokoro.synthesis import synthesize
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.training import TrainSettings, train


@pytest.fixture(scope="module")
def files(small_kmodel, small_config, tmp_path_factory):
    """config.json, a Kokoro .pth of small_kmodel predicting 2 frames per token (fast synthesis), a voicepack."""
    folder = tmp_path_factory.mktemp("kokoro_files")
    (folder / "config.json").write_text(json.dumps(small_config))
    state = dict(small_kmodel.state_dict())
    state["predictor.duration_proj.linear_layer.weight"] = torch.zeros_like(
        state["predictor.duration_proj.linear_layer.weight"])
    state["predictor.duration_proj.linear_layer.bias"] = torch.tensor([20.0] * 2 + [-20.0] * 48)
    save_kokoro_checkpoint(state, folder / "fast.pth")
    torch.manual_seed(11)
    torch.save(0.1 * torch.randn(510, 1, 256), folder / "mine.pt")
    return folder


@pytest.fixture(scope="module")
def built(files):
    settings = {"source": "checkpoint", "config": str(files / "config.json"), "checkpoint": str(files / "fast.pth"),
                "voicepacks": {"mine": str(files / "mine.pt")}}
    return family("kokoro").build(settings)


def test_build_loads_the_checkpoint_named_by_the_settings(built, files):
    assert isinstance(built, TTSModel) and built.family == "kokoro" and built.net.training
    saved = read_kokoro_checkpoint(files / "fast.pth")
    assert all(torch.equal(v, saved[k]) for k, v in built.net.state_dict().items())
    assert "mine" in family("kokoro").voices(built)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_synthesizer_speaks_a_voicepack_by_name_and_refuses_references(built, files):
    kokoro = family("kokoro")
    speak = kokoro.synthesizer(built, {"speed": 1.0})
    assert speak.sample_rate == 24_000 and not built.net.training
    wave = speak("Hi.", Voice.builtin("mine"), seed=2)
    direct = synthesize(built.net, ["Hi."], torch.load(files / "mine.pt"), seed=2, progress=False)[0]
    assert np.array_equal(wave, direct)
    with pytest.raises(ValueError, match="does not clone"):
        speak("Hi.", Voice.clone(files / "x.wav"), seed=0)
    with pytest.raises(ValueError, match="unknown Kokoro inference settings \\['alpha'\\]"):
        kokoro.synthesizer(built, {"alpha": 0.3})


def test_export_merges_the_adapters_into_a_kokoro_checkpoint(files, tmp_path):
    kokoro = family("kokoro")
    model = kokoro.build({"source": "checkpoint", "config": str(files / "config.json"),
                          "checkpoint": str(files / "fast.pth")})
    base = model.net.bert_encoder.weight.detach().clone()
    add_lora(model.net, ["bert_encoder"], r=2, alpha=4)
    layer = model.net.bert_encoder
    torch.manual_seed(5)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    delta = 4 / 2 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    exported = read_kokoro_checkpoint(kokoro.export(model, tmp_path / "merged.pth"))
    assert torch.allclose(exported["bert_encoder.weight"], base + delta, atol=1e-6)
    assert torch.equal(exported["decoder.generator.conv_post.weight_v"],
                       read_kokoro_checkpoint(files / "fast.pth")["decoder.generator.conv_post.weight_v"])
    assert exported.keys() == read_kokoro_checkpoint(files / "fast.pth").keys()  # loads strictly in KModel


def test_bad_settings_name_the_key(files):
    kokoro = family("kokoro")
    with pytest.raises(ValueError, match="model.source='cloud'"):
        kokoro.build({"source": "cloud"})
    with pytest.raises(FileNotFoundError, match="model.checkpoint=.*needs an existing Kokoro .pth"):
        kokoro.build({"source": "checkpoint", "config": str(files / "config.json"), "checkpoint": "nope.pth"})
    with pytest.raises(FileNotFoundError, match="model.voicepacks.x='gone.pt'"):
        kokoro.build({"source": "offline", "voicepacks": {"x": "gone.pt"}})


PHONEMES = ["hˈɛloʊ ðˈɛɹ.", "kwˈɪk bɹˈaʊn fˈɑks.", "ɡʊd mˈɔːɹnɪŋ."]


@pytest.fixture(scope="module")
def recordings(built, files, tmp_path_factory):
    """Three wav + txt recordings: the model's own rendering with voicepack "mine" (float wav files)."""
    import soundfile as sf

    from tts_bpeft.kokoro.targets import kokoro_render

    folder = tmp_path_factory.mktemp("recordings")
    render = kokoro_render(built.net.eval(), torch.load(files / "mine.pt"), seed=0)
    out = []
    for i, phonemes in enumerate(PHONEMES):
        _, wave = render(torch.tensor([0, *(built.net.vocab[p] for p in phonemes), 0]))
        sf.write(folder / f"r{i}.wav", wave, 24000, subtype="FLOAT")
        out.append(Utterance(str(folder / f"r{i}.wav"), "speaker1", phonemes, phonemes=phonemes))
    return out


def test_training_hooks_fine_tune_lora_and_the_voice(files, recordings, tmp_path):
    kokoro = family("kokoro")
    model = kokoro.build({"source": "checkpoint", "config": str(files / "config.json"),
                          "checkpoint": str(files / "fast.pth"), "voicepacks": {"mine": str(files / "mine.pt")},
                          "initial_voice": "mine", "targets_cache": str(tmp_path / "targets")})
    kokoro.add_preset(model, "design", r=2)
    options = DataOptions(max_frames=8)
    batches = kokoro.training_batches(model, recordings, batch_size=2, seed=0, options=options)
    assert len(batches(0)) == 2 and sorted(k for b in batches(0) for k in b.keys) == [
        "speaker1|r0", "speaker1|r1", "speaker1|r2"]
    step_loss = kokoro.training_loss(model, seed=0, options=options)
    assert step_loss.objective.crop_frames == 4
    lora = {n: p for n, p in model.net.named_parameters() if "lora_" in n}
    for p in lora.values():
        p.requires_grad_(True)
    trainable = {**lora, **step_loss.trainable}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-2)
    result = train(trainable, optimizer, batches, step_loss, tmp_path / "run",
                   TrainSettings(epochs=1, progress=False))
    assert result["steps"] == 2 and {"loss", "duration", "mel", "target"} <= set(result["last"])
    assert step_loss.voice.delta.abs().sum() > 0
    with pytest.raises(ValueError, match="one process"):
        kokoro.training_batches(model, recordings, batch_size=2, world=2)


@pytest.mark.slow  # ~1 min on 2 idle cores (targets of 3 recordings, two KFAC passes)
def test_empirical_fisher_on_recordings_does_not_depend_on_the_batch_size(files, recordings, tmp_path):
    kokoro = family("kokoro")
    model = kokoro.build({"source": "checkpoint", "config": str(files / "config.json"),
                          "checkpoint": str(files / "fast.pth"), "voicepacks": {"mine": str(files / "mine.pt")},
                          "targets_cache": str(tmp_path / "targets")})
    add_lora(model.net, ["predictor.duration_proj.linear_layer", "predictor.F0_proj", "predictor.N_proj"], r=2)
    options = DataOptions(max_frames=8)
    kokoro.voices = lambda m: ("mine",)  # only the settings' voice (the installed offline ones cost time)
    terms = ["duration", "duration_bce", "f0", "energy"]  # the decoder (mel) is the slow part: left out here
    kw = dict(method="kfac", fisher="empirical", terms=terms, options=options, progress=False)
    one = estimate_pretraining_curvature(kokoro, model, recordings, batch_size=1, **kw)
    three = estimate_pretraining_curvature(kokoro, model, recordings, batch_size=3, **kw)
    assert one.fisher == "empirical" and one.samples == 3
    for name in one.names:
        for key, value in one.term(name).items():
            torch.testing.assert_close(three.term(name)[key], value, rtol=1e-4, atol=1e-4 * value.abs().max().item())
    assert any(one.term(n)["G"].abs().sum() > 0 for n in one.names)
