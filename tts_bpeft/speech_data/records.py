"""The utterance record every reader produces and the dataset consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Utterance:
    """One recording: its audio file, its speaker's corpus id, its transcript, and (when known) phonemes.

    ``phonemes`` is None until phonemized; a record read from a StyleTTS 2 data list has phonemes and an
    empty ``text``.
    """

    path: str
    speaker: str
    text: str
    phonemes: str | None = None

    @property
    def utterance_id(self) -> str:
        """File name without folders and suffixes (``p225_001_mic1.flac`` -> ``p225_001_mic1``)."""
        name = self.path.replace("\\", "/").rsplit("/", 1)[-1]
        return name.split(".", 1)[0]
