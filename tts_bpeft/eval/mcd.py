"""Mel-cepstral distortion (MCD, dB) between a reference and a synthesized utterance, DTW-aligned."""

from __future__ import annotations

import librosa
import numpy as np
import scipy.fft

MCD_CONST = 10.0 / np.log(10.0)  # natural-log cepstra -> dB


def mel_cepstrum(
    wav: np.ndarray,
    sample_rate: int,
    n_ceps: int = 25,
    n_mels: int = 80,
    hop_s: float = 0.01,
    win_s: float = 0.025,
) -> np.ndarray:
    """Mel-cepstra (T, n_ceps) of a waveform (T_samples,): DCT-II (orthonormal) of the natural-log mel
    amplitude spectrum. Frames are centred, every ``hop_s`` seconds (T = 1 + T_samples // hop)."""
    hop = int(round(hop_s * sample_rate))
    win = int(round(win_s * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    mel = librosa.feature.melspectrogram(
        y=np.asarray(wav, dtype=np.float32), sr=sample_rate, n_fft=n_fft, hop_length=hop, win_length=win,
        n_mels=n_mels, power=2.0,
    )
    log_amplitude = 0.5 * np.log(np.maximum(mel, 1e-10))
    return scipy.fft.dct(log_amplitude, type=2, norm="ortho", axis=0)[:n_ceps].T


def dtw_path(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minimum-cost monotonic alignment of frame sequences x (Tx, D) and y (Ty, D) under Euclidean frame
    distance; returns (K, 2) index pairs (i into x, j into y) in time order."""
    _, path = librosa.sequence.dtw(X=x.T, Y=y.T, metric="euclidean")
    return path[::-1]


def mcd_from_cepstra(ref: np.ndarray, syn: np.ndarray, align: bool = True) -> float:
    """MCD in dB between mel-cepstra ref (T1, D) and syn (T2, D), c0 (energy) excluded:
    mean over aligned frames of (10 / ln 10) * sqrt(2 * sum_{d>=1} (ref_d - syn_d)**2).
    ``align=False`` compares frame by frame and needs T1 == T2."""
    ref, syn = ref[:, 1:], syn[:, 1:]
    if align:
        path = dtw_path(ref, syn)
        ref, syn = ref[path[:, 0]], syn[path[:, 1]]
    elif ref.shape != syn.shape:
        raise ValueError(f"unaligned MCD needs equal shapes, got {ref.shape} and {syn.shape}")
    return float(np.mean(MCD_CONST * np.sqrt(2.0 * np.sum((ref - syn) ** 2, axis=1))))


def mel_cepstral_distortion(ref: np.ndarray, syn: np.ndarray, sample_rate: int, n_ceps: int = 25) -> float:
    """MCD in dB between two waveforms at ``sample_rate`` Hz, aligned by DTW on their mel-cepstra.

    The cepstra come from librosa mel spectra, not SPTK/WORLD mel-generalised cepstra, so values compare
    systems scored here, not numbers from other toolkits.
    """
    return mcd_from_cepstra(mel_cepstrum(ref, sample_rate, n_ceps), mel_cepstrum(syn, sample_rate, n_ceps))
