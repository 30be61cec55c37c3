"""Reading audio files for the scorers: mono float32 waveforms at the rate a model expects."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile as sf


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as a mono float32 waveform of shape (T,) in [-1, 1] at ``sample_rate`` Hz.

    Channels are averaged; other rates are resampled (soxr).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    wav = wav.mean(axis=1)
    if sr != sample_rate:
        wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(wav, dtype=np.float32)
