"""On-disk cache of ASR transcripts, keyed by audio file (path, mtime, size) and the ASR model that heard it."""

from __future__ import annotations

import json
from pathlib import Path

from tts_bpeft.eval.embedding_cache import cache_entry
from tts_bpeft.io import save_json


class TranscriptCache:
    """One small JSON file per (audio file, ASR model) pair under ``root``.

    ``tag`` names the backend and model (e.g. ``"faster-whisper:/models/tiny.en"``); the key also holds the
    absolute path of the audio file, its modification time in ns and its size in bytes, so a re-synthesized
    file is transcribed again. Entries are written atomically.
    """

    def __init__(self, root: str | Path, tag: str) -> None:
        self.root = Path(root)
        self.tag = tag

    def entry_path(self, audio_path: str | Path) -> Path:
        """The cache file that holds (or would hold) the transcript of ``audio_path``."""
        return cache_entry(self.root, self.tag, audio_path, ".json")

    def get(self, audio_path: str | Path) -> str | None:
        """The cached transcript of ``audio_path``, or None when absent."""
        entry = self.entry_path(audio_path)
        if not entry.is_file():
            return None
        try:
            return str(json.loads(entry.read_text(encoding="utf-8"))["text"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"corrupt transcript cache entry {entry} (for {audio_path}): {err}") from err

    def put(self, audio_path: str | Path, text: str) -> Path:
        """Store the transcript ``text`` of ``audio_path``; returns the cache file."""
        return save_json({"audio": str(Path(audio_path).resolve()), "text": text}, self.entry_path(audio_path))
