"""Atomic file writes: write to a temporary file in the same folder, then ``os.replace`` it into place.

A reader never sees a half-written file, and concurrent writers of the same content cannot corrupt it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf


def _temp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    tmp = _temp_beside(path, ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> None:
    """Write ``wave`` (samples,) or (samples, channels), float in [-1, 1], as 16-bit PCM atomically.

    The container (wav or flac) follows the suffix of ``path``.
    """
    path = Path(path)
    tmp = _temp_beside(path, path.suffix)
    try:
        sf.write(tmp, wave, sample_rate, subtype="PCM_16", format=path.suffix.lstrip(".").upper())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
