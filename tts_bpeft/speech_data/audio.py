"""Audio checks and loading, and StyleTTS 2's mel spectrogram.

Waves are float32 numpy arrays (samples,) in [-1, 1] at :data:`SAMPLE_RATE` (24 kHz). The mel is the one
StyleTTS 2 trains on: n_fft 2048, window 1200, hop 300 (12.5 ms, 80 frames per second), 80 mel bands,
centred frames (``1 + samples // 300`` of them), normalised as ``(log(1e-5 + mel) + 4) / 4``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torchaudio

from tts_bpeft.speech_data.issues import EMPTY, TOO_SHORT, UNREADABLE, WRONG_CHANNELS, BadInputError, SkipReport, handle
from tts_bpeft.speech_data.records import Utterance

SAMPLE_RATE = 24000
HOP_LENGTH = 300
N_MELS = 80
MIN_FRAMES = 80
"""Fewest mel frames (1 s) an utterance may have: StyleTTS 2's style encoders need at least 80."""

# StyleTTS 2 builds its MelSpectrogram without a sample_rate, so torchaudio lays the 80 triangular
# filters over 0-8 kHz as if the audio were 16 kHz although it is 24 kHz. Matching the pre-trained
# model means reproducing exactly that, hence the explicit 16000 below.
_FILTERBANK_SAMPLE_RATE = 16000
_mel_transforms: dict[torch.device, torchaudio.transforms.MelSpectrogram] = {}


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: its sample rate (Hz), channel count and length in samples."""

    sample_rate: int
    channels: int
    samples: int

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def num_frames(samples: int) -> int:
    """Mel frames StyleTTS 2's centred STFT gives for ``samples`` samples at 24 kHz."""
    return 1 + samples // HOP_LENGTH


def _check_length(path: str, samples_24k: int, min_frames: int) -> None:
    if samples_24k == 0:
        raise BadInputError(path, EMPTY, "no audio samples")
    frames = num_frames(samples_24k)
    if frames < min_frames:
        raise BadInputError(
            path,
            TOO_SHORT,
            f"{samples_24k / SAMPLE_RATE:.3f} s gives {frames} mel frames, need >= {min_frames}",
        )


def _check_channels(path: str, channels: int, mix_to_mono: bool) -> None:
    if channels != 1 and not mix_to_mono:
        raise BadInputError(
            path, WRONG_CHANNELS, f"{channels} channels, expected mono (or pass mix_to_mono=True)"
        )


def probe_audio(
    path: str | os.PathLike, mix_to_mono: bool = False, min_frames: int = MIN_FRAMES
) -> AudioInfo:
    """Check a file from its header only (fast): readable, not empty, mono, long enough at 24 kHz.

    Raises :class:`BadInputError` naming the file and the problem.
    """
    path = str(path)
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise BadInputError(path, EMPTY, "file is 0 bytes")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise BadInputError(path, UNREADABLE, str(err)) from err
    _check_channels(path, info.channels, mix_to_mono)
    _check_length(path, round(info.frames * SAMPLE_RATE / info.samplerate), min_frames)
    return AudioInfo(info.samplerate, info.channels, info.frames)


def first_usable(draw: Iterable[Utterance], wanted: int, report: SkipReport, strict: bool,
                 check_audio: bool = True, mix_to_mono: bool = False) -> list[Utterance]:
    """The first ``wanted`` utterances of ``draw`` whose file passes :func:`probe_audio` (every one when not
    ``check_audio``). A bad file raises under ``strict``; otherwise it goes to ``report`` and the next
    utterance of the draw takes its place."""
    kept: list[Utterance] = []
    for utt in draw:
        if len(kept) == wanted:
            break
        if check_audio:
            try:
                probe_audio(utt.path, mix_to_mono=mix_to_mono)
            except BadInputError as err:
                handle(err, report, strict)
                continue
        kept.append(utt)
    return kept


def load_audio(
    path: str | os.PathLike,
    mix_to_mono: bool = False,
    trim_db: float | None = None,
    min_frames: int = MIN_FRAMES,
) -> np.ndarray:
    """Read a file, make it mono, resample it to 24 kHz and optionally trim silence.

    Args:
        path: any format libsndfile reads (wav, flac, ...).
        mix_to_mono: average the channels of a multi-channel file; otherwise such a file is an error.
        trim_db: when set, cut leading and trailing parts quieter than ``trim_db`` dB below the peak
            (``librosa.effects.trim(top_db=trim_db)``).
        min_frames: the shortest acceptable result, in mel frames (hop 300 at 24 kHz).

    Returns:
        float32 array (samples,) at 24 kHz.

    Raises:
        BadInputError: unreadable, empty, wrong channel count, or under ``min_frames`` (after trimming).
    """
    path = str(path)
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise BadInputError(path, EMPTY, "file is 0 bytes")
    try:
        wave, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise BadInputError(path, UNREADABLE, str(err)) from err
    _check_channels(path, wave.shape[1], mix_to_mono)
    if wave.shape[0] == 0:
        raise BadInputError(path, EMPTY, "no audio samples")
    if not np.isfinite(wave).all():
        raise BadInputError(path, UNREADABLE, "audio holds NaN or infinite samples")
    wave = wave.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    if trim_db is not None:
        wave, _ = librosa.effects.trim(wave, top_db=trim_db)
    _check_length(path, wave.shape[0], min_frames)
    return np.ascontiguousarray(wave, dtype=np.float32)


def mel_spectrogram(wave: torch.Tensor) -> torch.Tensor:
    """StyleTTS 2's normalised log mel of a 24 kHz wave.

    Args:
        wave: float tensor (..., samples) at 24 kHz.

    Returns:
        float32 tensor (..., 80, 1 + samples // 300), on the device of ``wave``.
    """
    transform = _mel_transforms.get(wave.device)
    if transform is None:
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)  # the filterbank as StyleTTS 2 makes it, whatever the caller's default
        try:
            transform = torchaudio.transforms.MelSpectrogram(
                sample_rate=_FILTERBANK_SAMPLE_RATE,
                n_fft=2048,
                win_length=1200,
                hop_length=HOP_LENGTH,
                n_mels=N_MELS,
            ).to(wave.device)
        finally:
            torch.set_default_dtype(default)
        _mel_transforms[wave.device] = transform
    mel = transform(wave.float())
    return (torch.log(1e-5 + mel) + 4.0) / 4.0
