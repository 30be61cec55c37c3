"""Text to phonemes: espeak-ng through phonemizer (en-us, stress marks, punctuation kept), cached on disk.

This is how StyleTTS 2 and its descendants (Kokoro) phonemize; the phoneme string is then mapped to a
family's own token ids (e.g. `tts_bpeft.styletts2.data.text.tokenize`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tts_bpeft.hub import user_cache_dir
from tts_bpeft.io import write_text

logger = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def default_cache() -> Path:
    """The phoneme cache file used when none is named: ``$TTS_BPEFT_CACHE/phonemes.json``, else
    ``$XDG_CACHE_HOME/tts_bpeft/phonemes.json``, else ``~/.cache/tts_bpeft/phonemes.json``. Its entries are
    keyed by text and espeak settings, so one file serves every corpus, and corpora (often read-only) are
    never written."""
    return user_cache_dir() / "phonemes.json"


class Phonemizer:
    """espeak-ng phonemes as StyleTTS 2 makes them, with an optional json cache on disk.

    Args:
        cache_path: json file mapping normalised text to phonemes; read at start, rewritten atomically
            (temp file + ``os.replace``) after each call that phonemized something new. None: no cache.
        language: espeak language code.
    """

    def __init__(self, cache_path: str | os.PathLike | None = None, language: str = "en-us") -> None:
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.language = language
        self._key = f"phonemizer-espeak|{language}|stress|punctuation|remove-flags"
        self._backend = None
        self.cache: dict[str, str] = self._read_cache()
        self.calls = 0
        """How many texts were sent to espeak (not served from the cache) in this object's life."""

    def _read_cache(self) -> dict[str, str]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("ignoring unreadable phoneme cache %s: %s", self.cache_path, err)
            return {}
        if not isinstance(data, dict) or data.get("key") != self._key:
            logger.warning("ignoring phoneme cache %s made with other settings", self.cache_path)
            return {}
        return dict(data["entries"])

    def _espeak(self, texts: list[str]) -> list[str]:
        if self._backend is None:
            from phonemizer.backend import EspeakBackend

            self._backend = EspeakBackend(
                self.language, preserve_punctuation=True, with_stress=True, language_switch="remove-flags"
            )
        self.calls += len(texts)
        return [p.strip() for p in self._backend.phonemize(texts, strip=False, njobs=1)]

    def __call__(self, texts: Sequence[str]) -> list[str]:
        """Phonemes for each text (whitespace normalised first); one espeak call for all cache misses."""
        normalized = [collapse_whitespace(t) for t in texts]
        missing = sorted({t for t in normalized if t and t not in self.cache})
        if missing:
            self.cache.update(zip(missing, self._espeak(missing), strict=True))
            self._write_cache()
        return [self.cache[t] if t else "" for t in normalized]

    def _write_cache(self) -> None:
        if self.cache_path is None:
            return
        merged = {**self._read_cache(), **self.cache}
        write_text(
            self.cache_path, json.dumps({"key": self._key, "entries": merged}, ensure_ascii=False, indent=0)
        )
