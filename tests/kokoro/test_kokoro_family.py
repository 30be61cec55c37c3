"""Kokoro implements the model-family interface: build from settings, synthesizer, voices, export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tts_bpeft import add_lora
from tts_bpeft.family import TTSModel, Voice, family
from tts_bpeft.kokoro.checkpoint import read_kokoro_checkpoint, save_kokoro_checkpoint
from tts_bpeft.kokoro.synthesis import synthesize


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
