"""LoRA presets on a real tiny StyleTTS 2 build, and zero-shot synthesis."""

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_model import tiny_model

from tts_bpeft.io import write_audio
from tts_bpeft.layers import layer_kind
from tts_bpeft.styletts2.presets import PRESETS, preset_plan
from tts_bpeft.styletts2.synthesize import InferenceSettings, Synthesizer


def layers_of(model, names):
    modules = dict(torch.nn.ModuleDict(dict(model)).named_modules())
    return {n: modules[n] for n in names}


def test_paper_preset_is_every_used_linear_of_the_paper_modules():
    model = tiny_model()
    plan = preset_plan(model, "paper")
    chosen = layers_of(model, plan.names)
    assert chosen and all(isinstance(m, torch.nn.Linear) for m in chosen.values())
    tops = {n.split(".")[0] for n in chosen}
    assert tops == {"bert", "bert_encoder", "predictor", "predictor_encoder", "style_encoder", "decoder", "diffusion"}
    expected = {f"{key}.{n}".rstrip(".") for key in tops for n, m in model[key].named_modules()
                if isinstance(m, torch.nn.Linear)} - {"bert.pooler", "decoder.generator.m_source.l_linear"}
    assert set(plan.names) == expected


def test_design_preset_covers_the_layer_zoo_and_skips_grouped_convolutions():
    model = tiny_model()
    plan = preset_plan(model, "design")
    kinds = {(n.split(".")[0], layer_kind(m)) for n, m in layers_of(model, plan.names).items()}
    assert {("text_encoder", "conv1d"), ("text_encoder", "lstm"), ("decoder", "conv1d"),
            ("decoder", "conv_transpose1d"), ("decoder", "linear"), ("diffusion", "linear")} <= kinds
    assert not {k for k in kinds if k[0] not in ("text_encoder", "decoder", "diffusion")}
    dilated = [m for m in layers_of(model, plan.names).values()
               if isinstance(m, torch.nn.Conv1d) and m.dilation[0] > 1]
    assert dilated  # the decoder's dilated resblock convolutions are adapted
    assert any("pool" in name and "groups" in why for name, why in plan.skipped)
    assert "skipped decoder.decode.3.pool" in plan.format()


def test_all_preset_extends_design_and_user_patterns():
    model = tiny_model()
    design, every = set(preset_plan(model, "design").names), set(preset_plan(model, "all").names)
    assert design < every
    narrowed = preset_plan(model, "paper", exclude=["decoder"]).names
    assert narrowed and not any(n.startswith("decoder.") for n in narrowed)
    extra = preset_plan(model, "paper", extra=[r"text_encoder\.lstm"]).names
    assert set(extra) - set(preset_plan(model, "paper").names) == {"text_encoder.lstm"}
    with pytest.raises(ValueError, match="unknown LoRA preset"):
        preset_plan(model, "nope")
    assert set(PRESETS) == {"paper", "design", "all"}


@pytest.fixture(scope="module")
def reference_wav(tmp_path_factory):
    from tts_bpeft.speech_data.synthesizers import available_voices

    voice = available_voices()[0]
    wave, rate = voice.synthesize("A short reference recording of this speaker's voice for cloning.")
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    sf.write(path, wave, rate)
    return path


def test_synthesis_is_deterministic_capped_and_written_as_24khz_wav(reference_wav, tmp_path):
    model = tiny_model()
    capped = Synthesizer(model, "istftnet", settings=InferenceSettings(max_token_frames=3), seed=7)
    a = capped("Hello there.", reference_wav)
    b = capped("Hello there.", reference_wav)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() > 0
    tokens = capped.tokens("Hello there.").shape[1]
    # each token lasts at most 3 aligned frames of 2 x 300 samples; the last 50 samples are cut
    assert a.shape[0] <= tokens * 3 * 600 - 50
    other_seed = capped("Hello there.", reference_wav, seed=8)
    assert not np.array_equal(a, other_seed)
    style = capped.reference_style(reference_wav)
    assert style.shape == (1, 2 * 16) and capped.reference_style(reference_wav) is style  # cached per file
    path = write_audio(tmp_path / "out.wav", a, 24000)
    read, rate = sf.read(path)
    assert rate == 24000 and read.shape == a.shape


def test_hifigan_decoders_get_the_one_frame_shift():
    synth = Synthesizer.__new__(Synthesizer)
    synth.decoder_type = "hifigan"
    x = torch.arange(12.0).reshape(1, 2, 6)
    shifted = synth._shift(x)
    torch.testing.assert_close(shifted[..., 1:], x[..., :-1])
    torch.testing.assert_close(shifted[..., 0], x[..., 0])
    synth.decoder_type = "istftnet"
    assert synth._shift(x) is x
