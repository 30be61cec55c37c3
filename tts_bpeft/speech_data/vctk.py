"""Reader for VCTK-Corpus-0.92.

Layout::

    <root>/speaker-info.txt                              ID  AGE  GENDER  ACCENTS  REGION  COMMENTS
    <root>/txt/p<id>/p<id>_<n>.txt                         one line of text
    <root>/wav48_silence_trimmed/p<id>/p<id>_<n>_mic1.flac 48 kHz (and _mic2.flac)

Known gaps of the real corpus: p315 has no transcripts (the speaker is skipped and reported), and p280 has
no mic2 recordings: when mic2 is asked for and a file only exists for the other microphone, that file is
used instead and the fallback is noted in the report (``report.notes``), per speaker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .audio import first_usable
from .issues import MISSING_AUDIO, MISSING_TRANSCRIPT, UNKNOWN_SPEAKER, BadInputError, SkipReport, handle
from .records import Corpus, Utterance
from .selection import sample_per_speaker

AUDIO_FOLDER = "wav48_silence_trimmed"
MICS = ("mic1", "mic2")
_COMMENT = re.compile(r"\(([^)]*)\)")


@dataclass(frozen=True)
class VCTKSpeaker:
    """One line of speaker-info.txt; missing columns are None (age) or empty strings."""

    id: str
    age: int | None
    gender: str
    accent: str
    region: str
    comment: str


class VCTKCorpus(Corpus[VCTKSpeaker]):
    """The VCTK utterances :func:`read_vctk` selected, with speaker-info.txt rows."""


def parse_speaker_line(line: str) -> VCTKSpeaker:
    """Parse one whitespace-aligned speaker-info line (``p248  23  F    Indian``).

    The accent is one word (``NewZealand``, ``NorthernIrish``); the region is the rest of the line; a
    parenthesised remark such as ``(mic2 files unavailable)`` goes to ``comment``.
    """
    comment = " ".join(m.strip() for m in _COMMENT.findall(line))
    fields = _COMMENT.sub(" ", line).split()
    age = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return VCTKSpeaker(
        id=fields[0],
        age=age,
        gender=fields[2] if len(fields) > 2 else "",
        accent=fields[3] if len(fields) > 3 else "",
        region=" ".join(fields[4:]),
        comment=comment,
    )


def read_speaker_info(path: str | os.PathLike) -> dict[str, VCTKSpeaker]:
    """All speakers of a speaker-info.txt, by id; the header line (starting with ``ID``) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: VCTK speaker-info.txt not found (is the root a VCTK-Corpus-0.92 folder?)"
        )
    speakers = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.split()[0] == "ID":
            continue
        speaker = parse_speaker_line(line)
        speakers[speaker.id] = speaker
    return speakers


def _read_transcript(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError as err:
        raise BadInputError(str(path), MISSING_TRANSCRIPT, "transcript file not found") from err
    if not text:
        raise BadInputError(str(path), MISSING_TRANSCRIPT, "transcript file is empty")
    return " ".join(text.split())


def _speaker_candidates(
    root: Path, speaker: str, mic: str, report: SkipReport, strict: bool
) -> list[Utterance]:
    """Utterances of one speaker that have both a transcript and a recording, sorted by id."""
    txt_dir = root / "txt" / speaker
    wav_dir = root / AUDIO_FOLDER / speaker
    other = MICS[1 - MICS.index(mic)]
    audio = {p.name[: -len(f"_{mic}.flac")]: p for p in wav_dir.glob(f"{speaker}_*_{mic}.flac")}
    fallback = {p.name[: -len(f"_{other}.flac")]: p for p in wav_dir.glob(f"{speaker}_*_{other}.flac")}
    texts = {p.stem: p for p in txt_dir.glob(f"{speaker}_*.txt")}
    candidates = []
    fallbacks = 0
    for utt in sorted(set(audio) | set(fallback) | set(texts)):
        wav = audio.get(utt, fallback.get(utt))
        try:
            if wav is None:
                raise BadInputError(
                    str(wav_dir / f"{utt}_{mic}.flac"), MISSING_AUDIO, "no recording for transcript"
                )
            text = _read_transcript(texts.get(utt, txt_dir / f"{utt}.txt"))
        except BadInputError as err:
            handle(err, report, strict)
            continue
        fallbacks += utt not in audio
        candidates.append(Utterance(str(wav), speaker, text))
    if fallbacks:
        report.note(f"{speaker}: {fallbacks} utterances have no {mic} file, used {other} instead")
    return candidates


def read_vctk(
    root: str | os.PathLike,
    speakers: Sequence[str] | None = None,
    mic: str = "mic1",
    utterances_per_speaker: int | None = None,
    seed: int = 0,
    check_audio: bool = True,
    mix_to_mono: bool = False,
    strict: bool = False,
) -> VCTKCorpus:
    """Read VCTK-Corpus-0.92 utterances with their transcripts.

    Args:
        root: the corpus folder (holding speaker-info.txt, txt/, wav48_silence_trimmed/).
        speakers: ids to read (``["p248"]``); None reads every speaker of speaker-info.txt. A speaker
            without transcripts (p315) is skipped and reported; when it was asked for by name it counts
            as a bad input (raises when ``strict``).
        mic: ``"mic1"`` or ``"mic2"``; see the module docstring for p280.
        utterances_per_speaker: keep this many per speaker, drawn with ``seed`` (nested in the count);
            None keeps all. Bad files met while drawing are replaced by the next ones in the draw.
        check_audio: probe each kept file's header (readable, mono, >= 80 mel frames at 24 kHz).
        mix_to_mono: accept multi-channel files (they will be averaged when loaded).
        strict: raise :class:`BadInputError` on the first bad file instead of skipping it.

    Returns:
        A :class:`VCTKCorpus` whose utterances are ordered by speaker then by the seeded draw.
    """
    if mic not in MICS:
        raise ValueError(f"mic must be one of {MICS}, got {mic!r}")
    root = Path(root)
    info = read_speaker_info(root / "speaker-info.txt")
    report = SkipReport()
    chosen = sorted(info) if speakers is None else list(speakers)
    utterances: list[Utterance] = []
    for speaker in chosen:
        if speaker not in info and not (root / AUDIO_FOLDER / speaker).is_dir():
            handle(
                BadInputError(str(root / AUDIO_FOLDER / speaker), UNKNOWN_SPEAKER, "speaker not found"),
                report,
                strict,
            )
            continue
        if not (root / "txt" / speaker).is_dir():
            error = BadInputError(
                str(root / "txt" / speaker), MISSING_TRANSCRIPT, "speaker has no transcripts"
            )
            handle(error, report, strict and speakers is not None)
            continue
        candidates = _speaker_candidates(root, speaker, mic, report, strict)
        wanted = len(candidates) if utterances_per_speaker is None else utterances_per_speaker
        kept = first_usable(sample_per_speaker(candidates, len(candidates), seed), wanted, report, strict,
                            check_audio, mix_to_mono)
        utterances += kept
        if len(kept) < wanted:
            report.note(f"{speaker}: asked for {wanted} utterances, only {len(kept)} usable")
    return VCTKCorpus(root, {s: info[s] for s in chosen if s in info}, utterances, report)
