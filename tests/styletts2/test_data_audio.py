"""Audio loading, its bad-input errors, and the mel against StyleTTS 2's own preprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from tts_bpeft.speech_data.audio import SAMPLE_RATE, load_audio, mel_spectrogram, num_frames, probe_audio
from tts_bpeft.speech_data.issues import EMPTY, TOO_SHORT, UNREADABLE, WRONG_CHANNELS, BadInputError


def _tone(seconds: float, sample_rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(wave.shape[0], 1 / sample_rate)[spectrum.argmax()])


def test_mel_equals_styletts2_preprocess(vctk_root: Path) -> None:
    from styletts2.meldataset import preprocess

    wave = load_audio(vctk_root / "wav48_silence_trimmed/p225/p225_001_mic1.flac")
    reference = preprocess(wave.astype(np.float64)).squeeze(0)
    ours = mel_spectrogram(torch.from_numpy(wave))
    assert ours.shape == reference.shape == (80, num_frames(wave.shape[0]))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # A filterbank laid out for the true 24 kHz rate would differ: the comparison above can fail.
    true_rate = torchaudio.transforms.MelSpectrogram(
        sample_rate=24000, n_fft=2048, win_length=1200, hop_length=300, n_mels=80
    )(torch.from_numpy(wave))
    assert (((torch.log(1e-5 + true_rate) + 4) / 4) - reference).abs().max() > 0.1


def test_mel_batched_matches_single() -> None:
    waves = torch.from_numpy(np.stack([_tone(1.0, SAMPLE_RATE, 300), _tone(1.0, SAMPLE_RATE, 900)]))
    batched = mel_spectrogram(waves)
    assert batched.shape == (2, 80, 81)
    torch.testing.assert_close(batched[1], mel_spectrogram(waves[1]))


def test_load_resamples_48k_to_24k(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    sf.write(path, _tone(1.5, 48000), 48000)
    wave = load_audio(path)
    assert wave.dtype == np.float32
    assert wave.shape == (36000,)
    assert _peak_hz(wave, SAMPLE_RATE) == pytest.approx(440.0, abs=1.0)


def test_stereo_is_an_error_naming_the_file_or_is_averaged(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = _tone(1.2, 24000, 300), _tone(1.2, 24000, 700)
    sf.write(path, np.stack([left, right], axis=1), 24000, subtype="FLOAT")
    with pytest.raises(BadInputError) as err:
        load_audio(path)
    assert (
        err.value.reason == WRONG_CHANNELS and str(path) in str(err.value) and "2 channels" in str(err.value)
    )
    with pytest.raises(BadInputError, match="2 channels"):
        probe_audio(path)
    np.testing.assert_allclose(load_audio(path, mix_to_mono=True), (left + right) / 2, atol=1e-6)
    assert probe_audio(path, mix_to_mono=True).channels == 2


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: p.write_bytes(b""), EMPTY),
        (lambda p: sf.write(p, np.zeros(0, dtype=np.float32), 24000), EMPTY),
        (lambda p: p.write_bytes(b"RIFF not really a wave file"), UNREADABLE),
        (lambda p: sf.write(p, _tone(0.9, 24000), 24000), TOO_SHORT),
    ],
    ids=["zero-bytes", "no-samples", "garbage", "0.9s"],
)
def test_bad_files_raise_with_reason(tmp_path: Path, write, reason: str) -> None:
    path = tmp_path / "bad.wav"
    write(path)
    for check in (load_audio, probe_audio):
        with pytest.raises(BadInputError) as err:
            check(path)
        assert err.value.reason == reason
        assert err.value.path == str(path)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as err:
        load_audio(tmp_path / "nope.wav")
    assert err.value.reason == UNREADABLE


def test_exactly_80_frames_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "edge.wav"
    sf.write(path, _tone(79 * 300 / 24000, 24000), 24000)  # 1 + 23700 // 300 = 80 frames
    assert load_audio(path).shape == (23700,)
    sf.write(path, _tone(78 * 300 / 24000, 24000), 24000)
    with pytest.raises(BadInputError, match="79 mel frames"):
        load_audio(path)


def test_trim_removes_silence_and_can_make_too_short(tmp_path: Path) -> None:
    path = tmp_path / "padded.wav"
    silence = np.zeros(24000, dtype=np.float32)
    sf.write(path, np.concatenate([silence, _tone(1.5, 24000), silence]), 24000)
    assert load_audio(path).shape == (84000,)
    trimmed = load_audio(path, trim_db=40)
    # librosa keeps whole 2048-sample frames on a 512 hop: up to ~2.5k extra samples on each side.
    assert 36000 <= trimmed.shape[0] <= 36000 + 2 * 2048 + 512
    sf.write(path, np.concatenate([silence, _tone(0.5, 24000), silence]), 24000)
    assert load_audio(path).shape == (60000,)
    with pytest.raises(BadInputError) as err:
        load_audio(path, trim_db=40)
    assert err.value.reason == TOO_SHORT
