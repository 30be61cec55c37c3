"""Atomic file writes: an interrupted run never leaves a half-written artifact.

Every writer fills a temporary file beside the target (same folder, so the rename is atomic), flushes and
fsyncs it, then renames it over the target: a reader sees the old file or the whole new one. A writer
killed midway leaves only a ``.<name>.*.tmp`` file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf
from safetensors.torch import save as safetensors_bytes
from torch import Tensor


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a binary temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, written atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Indented UTF-8 JSON, written atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
                     ) -> Path:
    """A safetensors file written atomically (tensors made contiguous and detached; a tensor whose memory an
    earlier one already uses, e.g. two rows of one voicepack, is stored as its own copy)."""
    own, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        own[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    data = safetensors_bytes(own, metadata=metadata)
    return atomic_write(path, lambda handle: handle.write(data))


def write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM audio (wave (samples,) or (samples, channels), floats in [-1, 1]) written atomically; the
    container (wav, flac) follows the suffix of `path`."""
    container = Path(path).suffix.lstrip(".").upper()
    return atomic_write(path, lambda handle: sf.write(handle, wave, sample_rate, subtype="PCM_16", format=container))
