"""Sentence synthesis with a small random-weight KModel: length, determinism, joining, wav files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from tts_bpeft.kokoro.architecture import build_kmodel
from tts_bpeft.kokoro.synthesis import phoneme_chunks, synthesize, synthesize_phonemes, write_waves

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SAMPLES_PER_FRAME = 600
"""24 kHz samples per predicted duration frame: F0 at twice the frame rate, x2 in the decoder, x300 in the
generator (upsample rates 10 * 6, iSTFT hop 5)."""


@pytest.fixture(scope="module")
def fast_kmodel(small_kmodel, small_config):
    """small_kmodel predicting exactly 2 frames per token (random weights predict ~25, which makes the
    decoder slow): the duration head's weights zeroed, 2 of its 50 step logits +20, the rest -20."""
    model = build_kmodel(small_config)
    model.load_state_dict(small_kmodel.state_dict())
    head = model.predictor.duration_proj.linear_layer
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.bias[:2] = 20.0
    return model


@pytest.fixture(scope="module")
def voicepack():
    torch.manual_seed(7)
    return 0.1 * torch.randn(510, 1, 256)


def test_an_utterance_lasts_its_predicted_frames_and_is_deterministic(fast_kmodel, voicepack):
    state = torch.get_rng_state()
    first = synthesize_phonemes(fast_kmodel, "həlˈO wˈɜɹld.", voicepack, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert first.wave.dtype == np.float32 and np.isfinite(first.wave).all()
    assert len(first.durations) == len("həlˈO wˈɜɹld.") + 2
    assert (first.durations == 2).all()
    assert len(first.wave) == SAMPLES_PER_FRAME * 2 * len(first.durations)
    again = synthesize_phonemes(fast_kmodel, "həlˈO wˈɜɹld.", voicepack, seed=5)
    other = synthesize_phonemes(fast_kmodel, "həlˈO wˈɜɹld.", voicepack, seed=6)
    assert np.array_equal(first.wave, again.wave)
    assert not np.array_equal(first.wave, other.wave)  # the decoder's noise follows the seed


def test_texts_are_split_into_sentences_and_joined(fast_kmodel, voicepack, tmp_path):
    two, one = synthesize(fast_kmodel, ["Hi. Go!", "Hi."], voicepack, seed=3, progress=False)
    alone = synthesize(fast_kmodel, ["Hi."], voicepack, seed=3, progress=False)[0]
    second = synthesize(fast_kmodel, ["Go!"], voicepack, seed=4, progress=False)[0]
    assert np.array_equal(two, np.concatenate([alone, second]))  # sentence k of a call has seed 3 + k
    assert len(one) == len(alone) and not np.array_equal(one, alone)  # the same sentence as k = 2: seed 5
    paths = write_waves([two], [tmp_path / "out" / "two.wav"])
    wave, rate = sf.read(paths[0], dtype="float32")
    assert rate == 24_000 and wave.shape == two.shape
    assert np.abs(wave - np.clip(two, -1, 1)).max() <= 1 / 2**14  # 16-bit PCM


def test_long_phoneme_strings_are_cut_at_word_boundaries():
    words = ["ab" * 50] * 12  # 12 words of 100 symbols
    chunks = phoneme_chunks(" ".join(words), limit=250)
    assert chunks == [" ".join(words[:2])] * 6
    assert phoneme_chunks("x" * 30, limit=12) == ["x" * 12, "x" * 12, "x" * 6]
