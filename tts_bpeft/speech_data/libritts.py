"""Reader for LibriTTS.

Layout::

    <root>/speakers.tsv                   READER GENDER SUBSET NAME (tab-separated, ';' header)
    <root>/<subset>/<spk>/<chapter>/<spk>_<chapter>.trans.tsv          id, original text, normalized text
    <root>/<subset>/<spk>/<chapter>/<spk>_<chapter>_<para:06d>_<sent:06d>.wav             24 kHz
    ... beside each wav: .normalized.txt and .original.txt

The transcript comes from the ``.normalized.txt`` (or ``.original.txt``) beside the wav, and from the
chapter's trans.tsv when that file is missing.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .audio import first_usable
from .issues import MISSING_AUDIO, MISSING_TRANSCRIPT, UNKNOWN_SPEAKER, BadInputError, SkipReport, handle
from .records import Corpus, Utterance
from .selection import sample_nested

TEXT_KINDS = ("normalized", "original")
_TSV_COLUMN = {"original": 1, "normalized": 2}  # trans.tsv columns: id, original text, normalized text


@dataclass(frozen=True)
class LibriTTSSpeaker:
    """One row of speakers.tsv."""

    id: str
    gender: str
    subset: str
    name: str


class LibriTTSCorpus(Corpus[LibriTTSSpeaker]):
    """The LibriTTS utterances :func:`read_libritts` selected, with speakers.tsv rows."""


def read_speakers_tsv(path: str | os.PathLike) -> dict[str, LibriTTSSpeaker]:
    """Speakers by id from speakers.tsv; lines starting with ``;`` (the header) are skipped."""
    speakers = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        cells = [c.strip() for c in line.split("\t")] + ["", "", ""]
        speakers[cells[0]] = LibriTTSSpeaker(cells[0], cells[1], cells[2], cells[3])
    return speakers


def _read_trans_tsv(path: Path, kind: str) -> dict[str, str]:
    if not path.is_file():
        return {}
    column = _TSV_COLUMN[kind]
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        return {
            row[0]: row[column]
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if len(row) > 2
        }


def _chapter_candidates(
    chapter: Path, speaker: str, kind: str, report: SkipReport, strict: bool
) -> list[Utterance]:
    table = _read_trans_tsv(chapter / f"{speaker}_{chapter.name}.trans.tsv", kind)
    waves = {p.name[: -len(".wav")]: p for p in chapter.glob(f"{speaker}_{chapter.name}_*.wav")}
    texts = {p.name.split(".", 1)[0] for p in chapter.glob(f"{speaker}_{chapter.name}_*.{kind}.txt")}
    candidates = []
    for utt in sorted(set(waves) | texts):
        text_file = chapter / f"{utt}.{kind}.txt"
        try:
            if utt not in waves:
                raise BadInputError(str(chapter / f"{utt}.wav"), MISSING_AUDIO, "no recording for transcript")
            text = (
                text_file.read_text(encoding="utf-8", errors="replace")
                if utt in texts
                else table.get(utt, "")
            )
            if not text.strip():
                raise BadInputError(
                    str(text_file), MISSING_TRANSCRIPT, f"no {kind} transcript file or trans.tsv entry"
                )
        except BadInputError as err:
            handle(err, report, strict)
            continue
        candidates.append(Utterance(str(waves[utt]), speaker, " ".join(text.split())))
    return candidates


def read_libritts(
    root: str | os.PathLike,
    subsets: Sequence[str] = ("train-clean-360",),
    speakers: Sequence[str] | None = None,
    num_utterances: int | None = None,
    seed: int = 0,
    text: str = "normalized",
    check_audio: bool = True,
    mix_to_mono: bool = False,
    strict: bool = False,
) -> LibriTTSCorpus:
    """Read LibriTTS utterances with their transcripts.

    Args:
        root: the folder holding speakers.tsv and the subset folders.
        subsets: subset folder names, e.g. ``("train-clean-360",)``; a missing one is an error.
        speakers: reader ids to keep (``["14", "16"]``); None keeps all.
        num_utterances: draw this many over all kept speakers with ``seed``; the draw is nested (the 10
            utterances of a seed lie inside its 100). None keeps all. Bad files met while drawing are
            replaced by the next ones in the draw.
        text: ``"normalized"`` or ``"original"``.
        check_audio: probe each kept file's header (readable, mono, >= 80 mel frames at 24 kHz).
        mix_to_mono: accept multi-channel files (they will be averaged when loaded).
        strict: raise :class:`BadInputError` on the first bad file instead of skipping it.

    Returns:
        A :class:`LibriTTSCorpus` whose utterances are in the order of the seeded draw.
    """
    if text not in TEXT_KINDS:
        raise ValueError(f"text must be one of {TEXT_KINDS}, got {text!r}")
    root = Path(root)
    report = SkipReport()
    info_path = root / "speakers.tsv"
    info = read_speakers_tsv(info_path) if info_path.is_file() else {}
    if not info:
        report.note(f"{info_path}: missing or empty, speaker metadata unknown")
    wanted_speakers = None if speakers is None else {str(s) for s in speakers}
    candidates: list[Utterance] = []
    found: set[str] = set()
    for subset in subsets:
        subset_dir = root / subset
        if not subset_dir.is_dir():
            raise FileNotFoundError(f"{subset_dir}: LibriTTS subset folder not found")
        for speaker_dir in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
            if wanted_speakers is not None and speaker_dir.name not in wanted_speakers:
                continue
            found.add(speaker_dir.name)
            for chapter in sorted(p for p in speaker_dir.iterdir() if p.is_dir()):
                candidates += _chapter_candidates(chapter, speaker_dir.name, text, report, strict)
    for missing in sorted((wanted_speakers or set()) - found):
        handle(
            BadInputError(f"{root}/{{{','.join(subsets)}}}/{missing}", UNKNOWN_SPEAKER, "speaker not found"),
            report,
            strict,
        )
    wanted = len(candidates) if num_utterances is None else num_utterances
    utterances = first_usable(sample_nested(candidates, len(candidates), seed), wanted, report, strict,
                              check_audio, mix_to_mono)
    if len(utterances) < wanted:
        report.note(f"asked for {wanted} utterances, only {len(utterances)} usable")
    return LibriTTSCorpus(root, {s: info[s] for s in sorted(found) if s in info}, utterances, report)
