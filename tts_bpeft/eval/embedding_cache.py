"""On-disk cache of per-file embeddings, keyed by file path, mtime, size and the model that embedded it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tts_bpeft.io import atomic_write


def cache_entry(root: Path, tag: str, audio_path: str | Path, suffix: str) -> Path:
    """The cache file of `audio_path` under `root`: a sha256 of `tag`, the absolute path, the modification
    time (ns) and the size (bytes), so an edited or replaced file gets a new entry."""
    audio_path = Path(audio_path).resolve()
    stat = audio_path.stat()
    key = f"{tag}\0{audio_path}\0{stat.st_mtime_ns}\0{stat.st_size}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return root / digest[:2] / f"{digest}{suffix}"


class EmbeddingCache:
    """One ``.npy`` file per (audio file, model) pair under ``root``.

    The key hashes ``tag`` (which names the model), the absolute path of the audio file, its modification
    time in ns and its size in bytes, so an edited or replaced file is embedded again. Entries are written
    atomically, so concurrent writers and interrupted runs leave no partial files.
    """

    def __init__(self, root: str | Path, tag: str) -> None:
        self.root = Path(root)
        self.tag = tag

    def entry_path(self, audio_path: str | Path) -> Path:
        """The cache file that holds (or would hold) the embedding of ``audio_path``."""
        return cache_entry(self.root, self.tag, audio_path, ".npy")

    def get(self, audio_path: str | Path) -> np.ndarray | None:
        """The cached embedding (D,) of ``audio_path``, or None when absent."""
        entry = self.entry_path(audio_path)
        if not entry.is_file():
            return None
        try:
            return np.load(entry, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"corrupt embedding cache entry {entry} (for {audio_path}): {err}") from err

    def put(self, audio_path: str | Path, embedding: np.ndarray) -> Path:
        """Store ``embedding`` (D,) for ``audio_path``; returns the cache file."""
        array = np.asarray(embedding, dtype=np.float32)
        return atomic_write(self.entry_path(audio_path), lambda handle: np.save(handle, array))
