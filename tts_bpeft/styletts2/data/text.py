"""Text to StyleTTS 2 tokens: espeak phonemes (cached on disk), then one id per phoneme character.

StyleTTS 2 phonemizes with phonemizer's espeak backend (en-us, stress marks, punctuation kept) and maps
every character of the phoneme string to its index in the 178-symbol table of ``styletts2.text_utils``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from styletts2.text_utils import dicts as _SYMBOL_IDS
from styletts2.text_utils import symbols as _SYMBOLS

from tts_bpeft.io import write_text

logger = logging.getLogger(__name__)

SYMBOLS: tuple[str, ...] = tuple(_SYMBOLS)
"""StyleTTS 2's 178 symbols; index 0 is the pad ``$``. The apostrophe appears twice; like StyleTTS 2's
TextCleaner we map it to its last index."""
PAD_ID = 0

_WHITESPACE = re.compile(r"\s+")


def tokenize(phonemes: str) -> tuple[list[int], Counter[str]]:
    """Map each character of ``phonemes`` to its StyleTTS 2 id.

    Returns:
        The ids of the known characters, in order, and a count of every character not in the table
        (those are left out of the ids; callers report them rather than lose them silently).
    """
    ids: list[int] = []
    unknown: Counter[str] = Counter()
    for char in phonemes:
        index = _SYMBOL_IDS.get(char)
        if index is None:
            unknown[char] += 1
        else:
            ids.append(index)
    return ids, unknown


def normalize_text(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


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
        normalized = [normalize_text(t) for t in texts]
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
