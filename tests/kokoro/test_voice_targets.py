"""A new voice's targets: F0 of known tones, StyleTTS 2's energy, DTW durations against a known time warp."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from tts_bpeft.kokoro.targets import (
    FRAME,
    dtw_durations,
    energy_track,
    f0_track,
    kokoro_render,
    recording_targets,
)
from tts_bpeft.kokoro.text import token_ids
from tts_bpeft.speech_data.audio import mel_spectrogram

RATE = 24000


def harmonic(f0: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    return (amplitude * wave / np.abs(wave).max()).astype(np.float32)


@pytest.mark.parametrize("f0", [110.0, 150.0, 230.0])
def test_f0_of_a_harmonic_tone_is_recovered_and_silence_is_zero(f0):
    wave = np.concatenate([np.zeros(RATE // 2, np.float32), harmonic(f0, 1.0), np.zeros(RATE // 2, np.float32)])
    track = f0_track(wave)
    assert track.shape == (2 * (len(wave) // FRAME),)
    tone = track[50:110]  # 0.625 s .. 1.375 s: inside the tone, away from its edges
    assert np.all(np.abs(tone - f0) < 3.0), tone
    assert np.all(track[:30] == 0.0) and np.all(track[-30:] == 0.0)


def test_energy_is_styletts2_log_norm_of_the_mel():
    utils = pytest.importorskip("styletts2.utils")
    rng = np.random.default_rng(0)
    wave = (harmonic(180.0, 1.2) + 0.01 * rng.standard_normal(int(1.2 * RATE))).astype(np.float32)
    energy = energy_track(wave)
    mel = mel_spectrogram(torch.from_numpy(wave))
    reference = utils.log_norm(mel[None, None], dim=2)[0, 0].numpy()  # StyleTTS 2's own N
    assert energy.shape == (2 * (len(wave) // FRAME),)
    np.testing.assert_allclose(energy, reference[:len(energy)], rtol=1e-5, atol=1e-5)
    louder = energy_track(2.0 * wave)  # power mel: twice the amplitude, four times the norm
    np.testing.assert_allclose(louder - energy, np.log(4.0), atol=1e-3)


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def voicepack():
    torch.manual_seed(7)
    return 0.1 * torch.randn(510, 1, 256)


@needs_espeak
def test_dtw_durations_follow_a_known_time_warp(varied_kmodel, small_config, voicepack, tmp_path):
    tokens = torch.tensor(token_ids("kwˈɪk bɹˈaʊn fˈɑks.", small_config["vocab"]))
    render = kokoro_render(varied_kmodel, voicepack, seed=1)
    durations, wave = render(tokens)
    assert len(wave) == FRAME * durations.sum()
    # The recording: each token's frames of the model's own wave repeated 1, 2 or 3 times.
    repeats = np.array([1 + t % 3 for t in range(len(tokens))])
    frames = wave.reshape(-1, FRAME)
    owner = np.repeat(np.arange(len(tokens)), durations)
    recording = np.concatenate([np.repeat(frames[owner == t], repeats[t], axis=0).reshape(-1)
                                for t in range(len(tokens))])
    expected = durations * repeats
    path = tmp_path / "warped.wav"
    path.write_bytes(b"stands for the audio file (its size and time key the cache)")
    calls = []

    def counted(t):
        calls.append(1)
        return render(t)

    targets = recording_targets(path, recording, tokens, "random", counted, tmp_path / "warped.safetensors")
    assert targets.frames == len(recording) // FRAME == expected.sum()
    assert (targets.durations >= 1).all()
    error = np.abs(targets.durations.numpy() - expected)
    assert error.mean() <= 1.0, (targets.durations.tolist(), expected.tolist())
    assert len(set(durations.tolist())) > 1  # the reference itself has uneven durations
    assert targets.f0.shape == targets.energy.shape == (2 * targets.frames,)
    # unchanged inputs: read back from the cache; a newer audio file: measured again
    again = recording_targets(path, recording, tokens, "random", counted, tmp_path / "warped.safetensors")
    assert len(calls) == 1 and torch.equal(again.durations, targets.durations)
    assert torch.equal(again.energy, targets.energy)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    recording_targets(path, recording, tokens, "random", counted, tmp_path / "warped.safetensors")
    assert len(calls) == 2


@needs_espeak
def test_the_model_own_synthesis_aligns_to_itself_exactly(varied_kmodel, small_config, voicepack):
    tokens = torch.tensor(token_ids("hˈɛloʊ ðˈɛɹ.", small_config["vocab"]))
    durations, wave = kokoro_render(varied_kmodel, voicepack, seed=2)(tokens)
    np.testing.assert_array_equal(dtw_durations(durations, wave, wave), durations)
