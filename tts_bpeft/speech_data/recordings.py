"""A new speaker's recordings, read and checked before any model is built.

Two sources give the same result, a :class:`Recordings` of validated :class:`Utterance` records:

- a folder of pairs ``<id>.wav`` + ``<id>.txt`` (any format libsndfile reads under ``.wav``/``.flac``,
  any sample rate, mono or stereo: the audio is mixed to mono and resampled to 24 kHz when loaded);
- one VCTK speaker (:func:`tts_bpeft.speech_data.vctk.read_vctk`).

Each recording is loaded once and checked (:func:`check_recording`): readable, a non-empty transcript,
between ``min_seconds`` and ``max_seconds`` long, not silent (RMS level above ``silence_dbfs``), not
clipped (at most ``max_clipped_fraction`` of the samples at full scale). A bad file raises
:class:`BadInputError` naming the file and the reason under ``strict``; otherwise it is skipped and listed
in the report, whose :meth:`SkipReport.summary` says what was left out and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tts_bpeft.speech_data.audio import SAMPLE_RATE, load_audio
from tts_bpeft.speech_data.issues import (
    MISSING_AUDIO,
    MISSING_TRANSCRIPT,
    TOO_SHORT,
    BadInputError,
    SkipReport,
    handle,
)
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.speech_data.vctk import read_vctk

TOO_LONG = "too_long"
SILENT = "silent"
CLIPPED = "clipped"
EMPTY_TRANSCRIPT = "empty_transcript"

AUDIO_SUFFIXES = (".wav", ".flac")
CLIP_LEVEL = 0.999
"""Absolute sample value (full scale 1.0) from which a sample counts as clipped."""


@dataclass(frozen=True)
class RecordingLimits:
    """What a usable recording is: length in seconds, RMS level in dB full scale, clipped sample share."""

    min_seconds: float = 0.5
    max_seconds: float = 30.0
    silence_dbfs: float = -50.0
    max_clipped_fraction: float = 0.001


@dataclass
class Recordings:
    """One speaker's usable recordings (paths absolute, sorted by id), their total length, what was skipped."""

    speaker: str
    utterances: list[Utterance]
    seconds: float
    report: SkipReport = field(default_factory=SkipReport)


def check_recording(path: str | os.PathLike, text: str, limits: RecordingLimits = RecordingLimits()) -> float:
    """Load one recording at 24 kHz and check it against ``limits``; returns its length in seconds.

    Raises:
        BadInputError: reason ``empty_transcript``, ``unreadable``/``empty`` (from the loader),
            ``too_short``, ``too_long``, ``silent`` or ``clipped``, with the measured value in the detail.
    """
    path = str(path)
    if not text.strip():
        raise BadInputError(path, EMPTY_TRANSCRIPT, "the transcript is empty: write the spoken words in it")
    wave = load_audio(path, mix_to_mono=True, min_frames=1)
    seconds = wave.shape[0] / SAMPLE_RATE
    if seconds < limits.min_seconds:
        raise BadInputError(path, TOO_SHORT, f"{seconds:.3f} s, need >= {limits.min_seconds} s")
    if seconds > limits.max_seconds:
        raise BadInputError(
            path, TOO_LONG, f"{seconds:.1f} s, at most {limits.max_seconds} s: cut it into sentences"
        )
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    level = 20.0 * np.log10(max(rms, 1e-12))
    if level < limits.silence_dbfs:
        raise BadInputError(path, SILENT, f"RMS level {level:.1f} dBFS, below {limits.silence_dbfs} dBFS")
    clipped = float(np.mean(np.abs(wave) >= CLIP_LEVEL))
    if clipped > limits.max_clipped_fraction:
        raise BadInputError(
            path,
            CLIPPED,
            f"{100 * clipped:.2f}% of samples at full scale (> {100 * limits.max_clipped_fraction:.2f}%): "
            "record at a lower gain",
        )
    return seconds


def _checked(
    speaker: str, candidates: Sequence[Utterance], report: SkipReport, limits: RecordingLimits, strict: bool
) -> Recordings:
    kept, seconds = [], 0.0
    for utt in candidates:
        try:
            seconds += check_recording(utt.path, utt.text, limits)
        except BadInputError as err:
            handle(err, report, strict)
            continue
        kept.append(utt)
    if not kept:
        raise BadInputError(speaker, "no_recordings", "no usable recording:\n" + report.summary())
    return Recordings(speaker, kept, seconds, report)


def read_recordings(
    folder: str | os.PathLike,
    speaker: str | None = None,
    limits: RecordingLimits = RecordingLimits(),
    strict: bool = False,
) -> Recordings:
    """Read and check a folder of ``<id>.wav`` (or ``.flac``) + ``<id>.txt`` pairs.

    Args:
        folder: the folder; files directly in it are read, sub-folders are ignored.
        speaker: the new speaker's name (default: the folder's name).
        limits: what a usable recording is.
        strict: raise on the first bad file instead of skipping it.

    Raises:
        BadInputError: the folder is missing, or (reason ``no_recordings``) nothing in it is usable, with the
            skip summary in the message; under ``strict``, the first bad file.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise BadInputError(str(folder), MISSING_AUDIO, "no such folder of recordings")
    report = SkipReport()
    audio = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()}
    texts = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    candidates = []
    for stem in sorted(audio.keys() | texts.keys()):
        if stem not in texts:
            handle(BadInputError(str(audio[stem]), MISSING_TRANSCRIPT, f"no {stem}.txt next to it"), report, strict)
        elif stem not in audio:
            handle(BadInputError(str(texts[stem]), MISSING_AUDIO, f"no {stem}.wav next to it"), report, strict)
        else:
            text = " ".join(texts[stem].read_text(encoding="utf-8", errors="replace").split())
            candidates.append(Utterance(str(audio[stem]), speaker or folder.name, text))
    return _checked(speaker or folder.name, candidates, report, limits, strict)


def read_vctk_speaker(
    root: str | os.PathLike,
    speaker: str,
    mic: str = "mic1",
    limits: RecordingLimits = RecordingLimits(),
    strict: bool = False,
) -> Recordings:
    """One VCTK-Corpus-0.92 speaker's recordings, checked like a folder's (see :func:`read_recordings`)."""
    corpus = read_vctk(root, [speaker], mic=mic, check_audio=False, mix_to_mono=True, strict=strict)
    candidates = sorted(corpus.utterances, key=lambda u: u.utterance_id)
    return _checked(speaker, candidates, corpus.report, limits, strict)
