"""Helpers for the data tests: the synthetic corpora's sizes and functions that damage audio files.

Imported by name (``from test_data_support import ...``) rather than from conftest.py, whose module name
other test folders share. Holds no tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

VCTK_SPEAKERS = ("p225", "p248", "p280", "p302", "p315")
VCTK_UTTERANCES = 8
LIBRITTS_SPEAKERS = ("1001", "1012", "1023")
LIBRITTS_UTTERANCES = 8


def copy_corpus(source: Path, tmp_path: Path) -> Path:
    """A private copy of a session corpus that a test may damage."""
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def make_empty(path: Path) -> None:
    """Truncate to 0 bytes."""
    path.write_bytes(b"")


def make_stereo(path: Path) -> None:
    """Rewrite the file with two channels (the original and its half)."""
    wave, sample_rate = sf.read(path, dtype="float32")
    sf.write(path, np.stack([wave, 0.5 * wave], axis=1), sample_rate)


def make_short(path: Path, seconds: float = 0.5) -> None:
    """Keep only the first ``seconds`` of the file."""
    wave, sample_rate = sf.read(path, dtype="float32")
    sf.write(path, wave[: int(seconds * sample_rate)], sample_rate)
