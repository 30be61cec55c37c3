"""F0 error between a reference and a synthesized utterance: RMSE in Hz and cents over frames voiced in
both, plus the voicing-decision error, after DTW alignment on mel-cepstra."""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np

from tts_bpeft.eval.mcd import dtw_path, mel_cepstrum


def f0_contour(
    wav: np.ndarray, sample_rate: int, fmin: float = 50.0, fmax: float = 600.0, hop_s: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """pYIN F0 in Hz (T,) (NaN where unvoiced) and the voiced flags (T,) bool, one per centred frame
    every ``hop_s`` seconds (the same frames as `mel_cepstrum`)."""
    hop = int(round(hop_s * sample_rate))
    frame_length = 1 << (int(np.ceil(2.5 * sample_rate / fmin)) - 1).bit_length()
    f0, voiced, _ = librosa.pyin(
        np.asarray(wav, dtype=np.float32), fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=frame_length,
        hop_length=hop, center=True,
    )
    return f0, voiced


@dataclass
class F0Error:
    """``rmse_hz`` and ``rmse_cents`` over aligned frames voiced in both (NaN if none); ``voicing_error``:
    fraction of aligned frames whose voiced/unvoiced decisions differ; ``voiced_frames``: frames scored."""

    rmse_hz: float
    rmse_cents: float
    voicing_error: float
    voiced_frames: int


def f0_error(
    ref: np.ndarray,
    syn: np.ndarray,
    sample_rate: int,
    align: bool = True,
    fmin: float = 50.0,
    fmax: float = 600.0,
) -> F0Error:
    """F0 error of waveform ``syn`` against ``ref`` (both at ``sample_rate`` Hz). With ``align`` the frames
    are paired by DTW on mel-cepstra; otherwise frame by frame over the shorter length."""
    f0_ref, v_ref = f0_contour(ref, sample_rate, fmin, fmax)
    f0_syn, v_syn = f0_contour(syn, sample_rate, fmin, fmax)
    if align:
        path = dtw_path(mel_cepstrum(ref, sample_rate)[:, 1:], mel_cepstrum(syn, sample_rate)[:, 1:])
        i, j = path[:, 0], path[:, 1]
    else:
        i = j = np.arange(min(len(f0_ref), len(f0_syn)))
    both = v_ref[i] & v_syn[j]
    a, b = f0_ref[i][both], f0_syn[j][both]
    n = int(both.sum())
    rmse_hz = float(np.sqrt(np.mean((a - b) ** 2))) if n else float("nan")
    rmse_cents = float(np.sqrt(np.mean((1200.0 * np.log2(b / a)) ** 2))) if n else float("nan")
    return F0Error(rmse_hz, rmse_cents, float(np.mean(v_ref[i] != v_syn[j])), n)
