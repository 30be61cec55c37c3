"""StyleTTS 2 data lists: one ``path|phonemes|speaker_id`` line per utterance, speaker_id an int index.

StyleTTS 2 reads lines with two fields as speaker 0; :func:`read_datalist` does the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tts_bpeft.io import write_text
from tts_bpeft.speech_data.records import Utterance


@dataclass(frozen=True)
class DataListEntry:
    """One data-list line."""

    path: str
    phonemes: str
    speaker_id: int

    def to_utterance(self) -> Utterance:
        """An :class:`Utterance` with ``speaker`` the id as a string and an empty ``text``."""
        return Utterance(self.path, str(self.speaker_id), "", self.phonemes)


def speaker_index(speakers: Iterable[str]) -> dict[str, int]:
    """Integer ids 0..n-1 for the distinct speakers, in sorted order."""
    return {speaker: i for i, speaker in enumerate(sorted(set(speakers)))}


def write_datalist(
    path: str | os.PathLike,
    utterances: Sequence[Utterance],
    speaker_ids: Mapping[str, int],
    root: str | os.PathLike | None = None,
) -> None:
    """Write a data list atomically.

    Args:
        utterances: phonemized records (``phonemes`` set, without ``|`` or line breaks).
        speaker_ids: the int index of every speaker in ``utterances`` (see :func:`speaker_index`).
        root: when given, audio paths are written relative to it (StyleTTS 2's ``root_path``).

    Raises:
        ValueError: naming the utterance whose phonemes are missing or hold ``|`` / a line break, or
            whose speaker has no id.
    """
    lines = []
    for u in utterances:
        if u.phonemes is None:
            raise ValueError(f"{u.path}: no phonemes; phonemize before writing a data list")
        if "|" in u.phonemes or "\n" in u.phonemes or "\r" in u.phonemes:
            raise ValueError(f"{u.path}: phonemes hold '|' or a line break: {u.phonemes!r}")
        if u.speaker not in speaker_ids:
            raise ValueError(f"{u.path}: speaker {u.speaker!r} has no id in speaker_ids")
        audio = os.path.relpath(u.path, root) if root is not None else u.path
        lines.append(f"{audio}|{u.phonemes}|{int(speaker_ids[u.speaker])}\n")
    write_text(path, "".join(lines))


def read_datalist(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[DataListEntry]:
    """Read a data list; relative audio paths are joined to ``root`` when given.

    Raises:
        ValueError: naming the file and line number of a malformed line.
    """
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (2, 3) or not fields[0]:
            raise ValueError(f"{path}:{number}: expected 'path|phonemes|speaker_id', got {line!r}")
        try:
            speaker_id = int(fields[2]) if len(fields) == 3 else 0
        except ValueError as err:
            raise ValueError(f"{path}:{number}: speaker_id {fields[2]!r} is not an integer") from err
        audio = str(Path(root) / fields[0]) if root is not None else fields[0]
        entries.append(DataListEntry(audio, fields[1], speaker_id))
    return entries
