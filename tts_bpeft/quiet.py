"""Quiet logs: the third-party warnings and log lines every recipe process would print, silenced.

Without this, each recipe process (each rank of a distributed run, each rerun) prints the same library messages
below, and the project's own messages drown in them. Each entry is matched exactly (category, message regex,
the module that raises it; or the logger and message regex of a log record) and says why it is harmless, so
that anything else, the project's own warnings and log records included, still shows.

The recipes call `silence_known_warnings` first thing in their entry points. When the user chose warning
filters (``python -W ...`` or ``PYTHONWARNINGS``), the warning filters are left to them.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownWarning:
    """A `warnings.warn` call of a library: its category, a regex matched at the start of the message, a
    regex matched against the full name of the module the warning is attributed to, and why it is harmless."""

    category: type[Warning]
    message: str
    module: str
    why: str


@dataclass(frozen=True)
class KnownLogRecord:
    """A log record of a library: the exact name of the logger that creates it, a regex matched at the start
    of its formatted message, and why it is harmless."""

    logger: str
    message: str
    why: str


KNOWN_WARNINGS = (
    KnownWarning(
        FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated", r"torch\.nn\.utils\.weight_norm",
        "StyleTTS 2's modules use the old weight_norm, whose parameter names (weight_g, weight_v) are the ones "
        "the official checkpoints hold; it works unchanged in torch 2.x.",
    ),
    KnownWarning(
        UserWarning, r"dropout option adds dropout after all but last recurrent layer", r"torch\.nn\.modules\.rnn",
        "StyleTTS 2 builds one-layer LSTMs with dropout 0.2, which PyTorch never applies (there is no layer "
        "after the last); the official training behaves the same.",
    ),
    KnownWarning(
        UserWarning, r"At least one mel filterbank has all zero values", r"torchaudio\.functional\.functional",
        "The official multi-resolution STFT loss (styletts2.losses) lays 128 mel bands over the 257 bins of a "
        "512-point FFT, so a few low bands are empty; the loss is the official one as is.",
    ),
    KnownWarning(
        UserWarning, r"pkg_resources is deprecated as an API", r"webrtcvad",
        "webrtcvad (resemblyzer's voice-activity detector) imports pkg_resources; setuptools<81 is pinned so "
        "that it exists.",
    ),
    KnownWarning(
        DeprecationWarning, r"Please import `binary_dilation` from the `scipy\.ndimage` namespace",
        r"resemblyzer\.audio",
        "resemblyzer imports from scipy.ndimage.morphology, which works until SciPy 2.0.",
    ),
)
KNOWN_LOG_RECORDS = (
    KnownLogRecord(
        "phonemizer", r"words count mismatch on",
        "espeak joins or splits some words (\"of the\" -> one word); StyleTTS 2 reads the whole phoneme string "
        "and never aligns words, so the count does not matter.",
    ),
    KnownLogRecord(
        "faster_whisper", r"Processing audio with duration",
        "one INFO line per transcribed file; the progress bar already counts them.",
    ),
    KnownLogRecord(
        "speechbrain.utils.fetching", r"Fetch ",
        "one INFO line per model file SpeechBrain looks up; the loaded model is reported by the evaluation.",
    ),
    KnownLogRecord(
        "speechbrain.utils.parameter_transfer", r"Loading pretrained files for",
        "INFO: SpeechBrain lists the modules it loads; the loaded model is reported by the evaluation.",
    ),
    KnownLogRecord(
        "speechbrain.utils.quirks", r"(Applied|Excluded) quirks",
        "INFO: SpeechBrain's global torch settings at import (no JIT profiling, TF32 allowed on GPUs).",
    ),
)


class _DropKnownRecords(logging.Filter):
    """Drops the records whose message starts with one of the regexes (the logger's `KNOWN_LOG_RECORDS`)."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def silence_known_warnings() -> None:
    """Hide every `KNOWN_WARNINGS` warning and every `KNOWN_LOG_RECORDS` log record in this process.

    Idempotent. Warning filters are not touched when ``sys.warnoptions`` is set (``python -W`` or
    ``PYTHONWARNINGS``: the user decides what shows); log filters always go on.
    """
    if not sys.warnoptions:
        for known in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
    by_logger: dict[str, list[str]] = {}
    for record in KNOWN_LOG_RECORDS:
        by_logger.setdefault(record.logger, []).append(record.message)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownRecords) for f in logger.filters):
            logger.addFilter(_DropKnownRecords(patterns))
