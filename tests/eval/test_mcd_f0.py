"""Mel-cepstral distortion and F0 error on signals with known answers."""

import numpy as np
import pytest

from tts_bpeft.eval.f0 import f0_error
from tts_bpeft.eval.mcd import MCD_CONST, mcd_from_cepstra, mel_cepstral_distortion, mel_cepstrum

SR = 16000


def _tone(f0, seconds=0.5, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def test_mcd_from_cepstra_known_value_and_dtw_ignores_repeated_frames():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20, 13))
    shifted = ref.copy()
    shifted[:, 1] += 1.0  # one unit in c1 on every frame: (10 / ln 10) * sqrt(2)
    shifted[:, 0] += 5.0  # c0 (energy) is excluded
    assert mcd_from_cepstra(ref, shifted, align=False) == pytest.approx(MCD_CONST * np.sqrt(2.0))
    stretched = np.repeat(ref, 2, axis=0)  # same content, twice as slow
    assert mcd_from_cepstra(ref, stretched) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="equal shapes"):
        mcd_from_cepstra(ref, stretched, align=False)


def test_mcd_on_waveforms_zero_for_gain_and_delay_positive_for_other_sound():
    rng = np.random.default_rng(1)
    wav = (_tone(220) + 0.05 * rng.standard_normal(SR // 2)).astype(np.float32)
    assert mel_cepstrum(wav, SR).shape == (1 + len(wav) // 160, 25)
    assert mel_cepstral_distortion(wav, wav, SR) == 0.0
    assert mel_cepstral_distortion(wav, 0.3 * wav, SR) < 1e-3  # gain only moves c0
    other = (_tone(700) + 0.05 * rng.standard_normal(SR // 2)).astype(np.float32)
    assert mel_cepstral_distortion(wav, other, SR) > 5.0


def test_f0_error_of_pure_tones():
    a, b = _tone(220.0), _tone(220.0 * 2 ** (1 / 12))  # one semitone apart: 13.08 Hz, 100 cents
    same = f0_error(a, a, SR, fmin=100, fmax=400)
    assert same.rmse_hz == 0.0 and same.voicing_error == 0.0 and same.voiced_frames > 40
    semitone = f0_error(a, b, SR, align=False, fmin=100, fmax=400)
    assert semitone.rmse_hz == pytest.approx(220.0 * (2 ** (1 / 12) - 1), abs=1.0)
    assert semitone.rmse_cents == pytest.approx(100.0, abs=5.0)
    assert semitone.voicing_error == 0.0


def test_f0_error_with_unvoiced_synthesis():
    silence = np.zeros(SR // 2, dtype=np.float32)
    result = f0_error(_tone(220.0), silence, SR, align=False, fmin=100, fmax=400)
    assert np.isnan(result.rmse_hz) and result.voiced_frames == 0
    assert result.voicing_error > 0.8
