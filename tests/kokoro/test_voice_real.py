"""The real converted Kokoro-82M learns a natural voice (piper's en_US joe) for a few steps (slow: minutes).

Reports (printed, one JSON line ``VOICE_REAL {...}``): seconds per training step, the target objective on the
training recordings before and after, and the speaker similarity of the new voice's speech to held-out joe
recordings before (the initial voice) and after. Asserts the objective went down and the outputs load.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from kokoro_models import _one_thread, _quiet  # noqa: F401 (autouse fixtures)

from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.speaker import cosine_similarity, load_speaker_encoder
from tts_bpeft.kokoro.examples import mean_objective, recording_examples
from tts_bpeft.kokoro.finetune import VoiceTraining, finetune_voice
from tts_bpeft.kokoro.presets import add_preset_lora
from tts_bpeft.kokoro.synthesis import synthesize
from tts_bpeft.kokoro.voice_loss import VoiceObjective
from tts_bpeft.kokoro.voices import load_voicepack
from tts_bpeft.speech_data.recordings import read_recordings
from tts_bpeft.speech_data.synthesizers import piper_voice
from tts_bpeft.speech_data.synthetic import make_recordings

pytestmark = pytest.mark.slow
INITIAL = "jm_kumo"  # the one male built-in voice offline (joe is male); the recipe can choose by objective
TRAIN, HELDOUT, STEPS = 6, 2, 12
HELDOUT_TEXT = "She opened the window and looked at the quiet street below."


def test_real_kokoro_learns_joe(tmp_path):
    offline = pytest.importorskip("tts_bpeft.kokoro.offline")
    try:
        model = offline.load_offline_kokoro()
        packs = offline.offline_voices()
        voice = piper_voice()
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(str(err))
    torch.set_num_threads(2)
    make_recordings(tmp_path / "joe", voice, utterances=TRAIN + HELDOUT)
    found = read_recordings(tmp_path / "joe", speaker="joe").utterances
    train, heldout = found[:TRAIN], found[TRAIN:]
    objective = VoiceObjective(crop_frames=20)
    examples = recording_examples(model, train, packs[INITIAL], INITIAL, tmp_path / "targets", progress=False)
    before = mean_objective(model, examples, objective, seed=1)
    encoder = load_speaker_encoder("auto")
    reference = encoder.embed_waveforms([load_mono(u.path, encoder.sample_rate) for u in heldout]).mean(0)

    def similarity(pack: torch.Tensor, net: torch.nn.Module) -> float:
        import librosa

        wave = synthesize(net.eval(), [HELDOUT_TEXT], pack, seed=0, progress=False)[0]
        wave = librosa.resample(wave, orig_sr=24000, target_sr=encoder.sample_rate)
        return float(cosine_similarity(encoder.embed_waveforms([wave]), reference[None])[0])

    sim_before = similarity(packs[INITIAL], model)
    torch.manual_seed(0)
    add_preset_lora(model, "design", r=8)
    started = time.time()
    result = finetune_voice(model, examples, packs[INITIAL], tmp_path / "run",
                            VoiceTraining(steps=STEPS, batch_size=1, lr=1e-3, style_lr=1e-2, progress=False),
                            objective, export=False)
    per_step = (time.time() - started) / STEPS
    after = mean_objective(model, examples, objective, seed=1, shifted=result.voice)
    sim_after = similarity(load_voicepack(result.voicepack), model)
    numbers = {"steps": STEPS, "seconds_per_step": round(per_step, 2), "objective_before": round(before, 4),
               "objective_after": round(after, 4), "similarity_before": round(sim_before, 4),
               "similarity_after": round(sim_after, 4), "speaker_encoder": encoder.describe(),
               "threads": torch.get_num_threads()}
    print("VOICE_REAL " + json.dumps(numbers))
    assert after < before
