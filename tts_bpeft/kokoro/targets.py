"""Training targets for a new Kokoro voice, measured on its recordings at Kokoro's rates.

Rates (24 kHz audio): Kokoro's durations count *aligned frames* of 600 samples (25 ms; the decoder turns
one aligned frame into 600 samples); F0 and energy N are at twice that rate (hop 300, 12.5 ms). A recording
of ``s`` samples has ``F = s // 600`` aligned frames (the last < 25 ms are dropped) and targets:

- ``f0`` (2F,) Hz from ``librosa.pyin`` (hop 300, 50-600 Hz); **unvoiced frames are 0 Hz**, as in
  StyleTTS 2's F0 targets where the pitch extractor finds no pitch;
- ``energy`` (2F,) StyleTTS 2's N: ``log(||exp(4 m - 4)||_2)`` over the 80 bands of the normalised log-mel
  ``m`` (``speech_data.audio.mel_spectrogram``), i.e. the log of the L2 norm of the linear mel frame;
- ``durations`` (T,) aligned frames per token, boundary tokens included, summing to F: the model's own
  synthesis with a reference voice gives each token's frames in the synthetic wave (its rounded durations);
  DTW (``librosa.sequence.dtw``, MFCCs at the aligned-frame rate) maps the synthetic frames onto the
  recording's; token boundaries are carried over and made strictly increasing (each token >= 1 frame).

:func:`recording_targets` caches each recording's targets in a safetensors file, keyed by the audio file's
size and modification time, the token ids and the reference voice's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
from safetensors import safe_open

from tts_bpeft.io import save_safetensors
from tts_bpeft.kokoro.architecture import SAMPLE_RATE
from tts_bpeft.kokoro.voices import style_row
from tts_bpeft.speech_data.audio import mel_spectrogram

FRAME = 600
"""Samples per aligned frame (25 ms at 24 kHz)."""
HOP = 300
"""Samples per F0/energy frame (12.5 ms)."""
F0_MIN, F0_MAX = 50.0, 600.0
N_MFCC = 20

Render = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]
"""The model's own synthesis of (T,) token ids: durations (T,) in aligned frames and the 24 kHz wave."""


@dataclass
class Targets:
    """One recording's targets: durations (T,) long aligned frames; f0 (2F,) Hz, 0 = unvoiced; energy (2F,)."""

    durations: torch.Tensor
    f0: torch.Tensor
    energy: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.durations.sum())


def aligned_frames(samples: int) -> int:
    """Whole aligned frames (600 samples) in ``samples`` samples."""
    return samples // FRAME


def f0_track(wave: np.ndarray) -> np.ndarray:
    """F0 in Hz at hop 300 of a 24 kHz wave, (2 * (len // 600),) float32; unvoiced frames are 0."""
    frames = 2 * aligned_frames(len(wave))
    f0, voiced, _ = librosa.pyin(wave.astype(np.float32), fmin=F0_MIN, fmax=F0_MAX, sr=SAMPLE_RATE,
                                 frame_length=2048, hop_length=HOP, center=True)
    f0 = np.where(voiced & np.isfinite(f0), f0, 0.0)
    return f0[:frames].astype(np.float32)


def energy_track(wave: np.ndarray) -> np.ndarray:
    """StyleTTS 2's energy N at hop 300 of a 24 kHz wave, (2 * (len // 600),) float32 (module docstring)."""
    frames = 2 * aligned_frames(len(wave))
    mel = mel_spectrogram(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    energy = torch.log(torch.exp(4.0 * mel - 4.0).norm(dim=0))
    return energy[:frames].numpy().astype(np.float32)


def _mfcc(wave: np.ndarray, frames: int) -> np.ndarray:
    """MFCCs (20, frames) at the aligned-frame rate, centred on each 25 ms frame."""
    mfcc = librosa.feature.mfcc(y=wave.astype(np.float32), sr=SAMPLE_RATE, n_mfcc=N_MFCC, n_fft=2048,
                                hop_length=FRAME, center=True)
    return mfcc[:, :frames]


def dtw_durations(reference_durations: np.ndarray, reference_wave: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Token durations in ``wave`` from a reference rendering of the same tokens (module docstring).

    Args:
        reference_durations: (T,) aligned frames per token of ``reference_wave`` (sum = its frame count).
        reference_wave: float (600 * sum(reference_durations),) 24 kHz, the model's own synthesis.
        wave: the recording, float 24 kHz.

    Returns:
        int64 (T,), each >= 1, summing to ``len(wave) // 600``.

    Raises:
        ValueError: the recording has fewer aligned frames than there are tokens.
    """
    durations = np.asarray(reference_durations, dtype=np.int64)
    tokens, frames = len(durations), aligned_frames(len(wave))
    if frames < tokens:
        raise ValueError(f"{frames} aligned frames ({frames * 25} ms) for {tokens} tokens: the recording is too short "
                         "for its transcript")
    ref_frames = int(durations.sum())
    _, path = librosa.sequence.dtw(X=_mfcc(reference_wave, ref_frames), Y=_mfcc(wave, frames), metric="euclidean")
    first = np.full(ref_frames, frames, dtype=np.int64)  # first recording frame matched to each reference frame
    for i, j in path:
        first[i] = min(first[i], j)
    ends = np.cumsum(durations)[:-1]  # reference frame where token t + 1 starts
    boundaries = np.concatenate([[0], first[ends], [frames]])
    for t in range(1, tokens):  # strictly increasing, leaving a frame for each later token
        boundaries[t] = min(max(boundaries[t], boundaries[t - 1] + 1), frames - (tokens - t))
    return np.diff(boundaries)


def measure_targets(reference_durations: np.ndarray, reference_wave: np.ndarray, wave: np.ndarray) -> Targets:
    """All targets of one recording (float 24 kHz) given the model's own rendering of its tokens."""
    return Targets(torch.from_numpy(dtw_durations(reference_durations, reference_wave, wave)),
                   torch.from_numpy(f0_track(wave)), torch.from_numpy(energy_track(wave)))


def kokoro_render(model: torch.nn.Module, voicepack: torch.Tensor, seed: int = 0) -> Render:
    """Kokoro's own synthesis (``KModel.forward_with_tokens``, speed 1) with ``voicepack``'s row for the token
    count, its random source seeded with ``seed``: the reference rendering :func:`dtw_durations` needs."""

    def render(tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        style = style_row(voicepack, len(tokens) - 2).to(model.device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            audio, durations = model.forward_with_tokens(tokens[None].to(model.device), style, 1.0)
        return durations.reshape(-1).cpu().numpy(), audio.reshape(-1).cpu().numpy()

    return render


def _cache_key(audio_path: str | os.PathLike, tokens: torch.Tensor, reference: str) -> str:
    stat = Path(audio_path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}:{reference}:{','.join(map(str, tokens.tolist()))}"


def recording_targets(audio_path: str | os.PathLike, wave: np.ndarray, tokens: torch.Tensor, reference: str,
                      render: Render, cache_file: str | os.PathLike) -> Targets:
    """The targets of one recording, from ``cache_file`` when it was made for the same inputs.

    Args:
        audio_path: the recording's file (its size and modification time key the cache).
        wave: its audio, float 24 kHz.
        tokens: (T,) Kokoro token ids of its transcript, boundary tokens included.
        reference: name of the reference voice ``render`` speaks with.
        render: callable ``tokens -> (durations (T,), wave)``: the model's own synthesis with that voice.
        cache_file: where the targets are kept (written atomically).
    """
    key = _cache_key(audio_path, tokens, reference)
    if Path(cache_file).is_file():
        with safe_open(str(cache_file), framework="pt") as handle:
            if handle.metadata().get("key") == key:
                return Targets(*(handle.get_tensor(k) for k in ("durations", "f0", "energy")))
    durations, reference_wave = render(tokens)
    targets = measure_targets(np.asarray(durations), np.asarray(reference_wave), wave)
    save_safetensors({"durations": targets.durations, "f0": targets.f0, "energy": targets.energy}, cache_file,
                     metadata={"key": key, "audio": str(audio_path)})
    return targets
