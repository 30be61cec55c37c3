"""The records every reader produces and the dataset consumes: an utterance, and a corpus of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from tts_bpeft.speech_data.issues import SkipReport

SpeakerInfo = TypeVar("SpeakerInfo")


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


@dataclass
class Corpus(Generic[SpeakerInfo]):
    """What a corpus reader selected: the root, the kept speakers' metadata by id, the utterances (paths
    absolute) and what was skipped."""

    root: Path
    speakers: dict[str, SpeakerInfo]
    utterances: list[Utterance]
    report: SkipReport = field(default_factory=SkipReport)
