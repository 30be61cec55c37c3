"""Small real-speech corpora in the exact LibriTTS and VCTK-Corpus-0.92 layouts, and folders of one voice's
recordings, spoken by the local synthesizers of `tts_bpeft.speech_data.synthesizers`.

For tests and demos where the real corpora are absent. Each speaker gets one installed voice of its gender,
round-robin (or the voices given); every writer returns and logs which voice spoke for which speaker.

Generation runs in a thread pool (the work is in synthesizer subprocesses), every file is written
atomically, and a marker file written last (``.synthetic-libritts-<subset>.json`` / ``.synthetic-vctk.json``
/ ``.synthetic-recordings.json``) records the parameters and voices: a second call with the same parameters
returns at once. A lock file in ``root`` makes concurrent writers of the same root (several processes or test
workers) wait for each other.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import librosa
import numpy as np
from scipy.signal import lfilter

from tts_bpeft.io import write_audio, write_text
from tts_bpeft.speech_data.sentences import NUM_SENTENCES, sentence
from tts_bpeft.speech_data.synthesizers import SynthesizerVoice, assign_voices

logger = logging.getLogger(__name__)

LIBRITTS_SAMPLE_RATE = 24000
VCTK_SAMPLE_RATE = 48000

# Real speaker-info.txt rows (ID, AGE, GENDER, ACCENTS, REGION, COMMENT) of the speakers this project uses.
_VCTK_SPEAKERS = {
    "p225": ("23", "F", "English", "Southern England", ""),
    "p234": ("22", "F", "Scottish", "West Dumfries", ""),
    "p238": ("22", "F", "NorthernIrish", "Belfast", ""),
    "p245": ("25", "M", "Irish", "Dublin", ""),
    "p248": ("23", "F", "Indian", "", ""),
    "p261": ("26", "F", "NorthernIrish", "Belfast", ""),
    "p280": ("25", "F", "France", "", "(mic2 files unavailable)"),
    "p294": ("33", "F", "American", "San Francisco", ""),
    "p302": ("20", "M", "Canadian", "Montreal", ""),
    "p315": ("18", "M", "American", "Connecticut", "(Text unavailable)"),
    "p326": ("26", "M", "Australian", "Sydney", ""),
    "p335": ("25", "F", "NewZealand", "English", ""),
    "p347": ("26", "M", "SouthAfrican", "Johannesburg", ""),
}
_OTHER_ACCENTS = ("English", "Scottish", "Irish", "American", "Welsh", "Canadian")


def _speaker_voices(voices: Sequence[SynthesizerVoice] | None, genders: Sequence[str]) -> list[SynthesizerVoice]:
    """``voices`` (one per speaker) when given, else installed voices assigned by gender."""
    if not voices:
        return assign_voices(genders)
    if len(voices) != len(genders):
        raise ValueError(f"got {len(voices)} voices for {len(genders)} speakers")
    return list(voices)


@dataclass
class SyntheticCorpus:
    """What a writer produced: the root, the voice of each speaker, utterance count and seconds of audio."""

    root: Path
    voices: dict[str, str]
    utterances: int
    seconds: float = 0.0
    cached: bool = False
    wall_seconds: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class _Take:
    """One utterance to speak: its voice and text, the sample rate (Hz) to save at, and how to save it
    (``save`` gets the peak-normalised float32 wave (samples,))."""

    voice: SynthesizerVoice
    text: str
    sample_rate: int
    save: Callable[[np.ndarray], None]


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _speak(take: _Take) -> float:
    """Speak a take, resampled and peak-normalised to 0.9, save it; returns its length in seconds."""
    wave, rate = take.voice.synthesize(take.text)
    wave = librosa.resample(wave, orig_sr=rate, target_sr=take.sample_rate)
    peak = float(np.abs(wave).max())
    take.save((wave * (0.9 / peak) if peak > 0 else wave).astype(np.float32))
    return wave.shape[0] / take.sample_rate


def _write_once(marker: Path, params: dict, write: Callable[[], tuple[dict[str, SynthesizerVoice], list[_Take]]],
                workers: int) -> SyntheticCorpus:
    """The corpus in ``marker``'s folder: returned at once when ``marker`` records the same ``params``;
    otherwise ``write`` writes the text files and returns each speaker's voice and the takes, which
    ``workers`` threads speak, and ``marker`` is written last. Holds the folder's lock throughout."""
    root = marker.parent
    with _locked(root):
        if marker.is_file():
            data = json.loads(marker.read_text(encoding="utf-8"))
            if data.get("params") == params:
                return SyntheticCorpus(root, data["voices"], data["utterances"], data["seconds"], cached=True)
        start = time.perf_counter()
        voices, takes = write()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            seconds = float(sum(pool.map(_speak, takes)))
        corpus = SyntheticCorpus(root, {speaker: str(v) for speaker, v in voices.items()}, len(takes), seconds,
                                 wall_seconds=time.perf_counter() - start)
        record = {"params": params, "voices": corpus.voices, "utterances": corpus.utterances,
                  "seconds": corpus.seconds}
        write_text(marker, json.dumps(record, indent=1))
    logger.info("wrote %d utterances (%.1f s of audio) to %s in %.1f s; voices: %s", corpus.utterances,
                corpus.seconds, corpus.root, corpus.wall_seconds, corpus.voices)
    return corpus


def _sentence_indices(speakers: int, per_speaker: int, distinct: bool, offset: int) -> list[list[int]]:
    """Built-in sentence index of each (speaker, utterance)."""
    needed = offset + per_speaker * (speakers if distinct else 1)
    if needed > NUM_SENTENCES:
        logger.warning("%d sentences needed, %d built in: some repeat", needed, NUM_SENTENCES)
    return [
        [offset + j + (k * per_speaker if distinct else 0) for j in range(per_speaker)]
        for k in range(speakers)
    ]


def make_libritts(
    root: str | os.PathLike,
    speakers: int | Sequence[str] = 4,
    utterances_per_speaker: int = 10,
    subset: str = "train-clean-360",
    chapters_per_speaker: int = 2,
    distinct_sentences: bool = True,
    sentence_offset: int = 0,
    workers: int = 2,
    voices: Sequence[SynthesizerVoice] | None = None,
) -> SyntheticCorpus:
    """Write a LibriTTS-layout corpus: 24 kHz 16-bit wavs, .normalized/.original.txt, trans.tsv, speakers.tsv.

    Args:
        root: the LibriTTS root; ``<root>/<subset>/...`` is written and ``<root>/speakers.tsv`` updated.
        speakers: a count (ids 1001, 1012, ... alternating F/M) or explicit reader ids (genders alternate).
        utterances_per_speaker: utterances per speaker, spread over ``chapters_per_speaker`` chapters.
        distinct_sentences: every speaker reads different sentences (else all read the same ones).
        sentence_offset: first built-in sentence used (so other subsets can read other sentences).
        workers: synthesizer processes run at once.
        voices: one voice per speaker (default: assigned by gender, round-robin).
    """
    root = Path(root)
    ids = (
        [str(1001 + 11 * k) for k in range(speakers)]
        if isinstance(speakers, int)
        else [str(s) for s in speakers]
    )
    if not all(s.isdigit() for s in ids):
        raise ValueError(f"LibriTTS reader ids are numbers, got {ids}")
    genders = ["F" if k % 2 == 0 else "M" for k in range(len(ids))]
    params = {"speakers": ids, "utterances_per_speaker": utterances_per_speaker, "subset": subset,
              "chapters_per_speaker": chapters_per_speaker, "distinct_sentences": distinct_sentences,
              "sentence_offset": sentence_offset, "voices": [str(v) for v in voices] if voices else None}

    def write() -> tuple[dict[str, SynthesizerVoice], list[_Take]]:
        chosen = _speaker_voices(voices, genders)
        texts = _sentence_indices(len(ids), utterances_per_speaker, distinct_sentences, sentence_offset)
        takes, trans = [], {}
        for k, (speaker, voice) in enumerate(zip(ids, chosen, strict=True)):
            for j in range(utterances_per_speaker):
                chapter = str(100 * int(speaker) + 1 + j % chapters_per_speaker)
                paragraph, sent = divmod(j // chapters_per_speaker, 2)
                utt = f"{speaker}_{chapter}_{paragraph:06d}_{sent:06d}"
                folder, text = root / subset / speaker / chapter, sentence(texts[k][j])
                write_text(folder / f"{utt}.normalized.txt", text)
                write_text(folder / f"{utt}.original.txt", text)
                trans.setdefault(folder, []).append(f"{utt}\t{text}\t{text}\n")
                takes.append(_Take(voice, text, LIBRITTS_SAMPLE_RATE, partial(
                    write_audio, folder / f"{utt}.wav", sample_rate=LIBRITTS_SAMPLE_RATE)))
        for folder, lines in trans.items():
            write_text(folder / f"{folder.parent.name}_{folder.name}.trans.tsv", "".join(lines))
        _write_speakers_tsv(root / "speakers.tsv", ids, genders, subset)
        return dict(zip(ids, chosen, strict=True)), takes

    return _write_once(root / f".synthetic-libritts-{subset}.json", params, write, workers)


def _write_speakers_tsv(path: Path, ids: Sequence[str], genders: Sequence[str], subset: str) -> None:
    rows: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith(";"):
                rows[line.split("\t")[0]] = line
    for speaker, gender in zip(ids, genders, strict=True):
        rows[speaker] = f"{speaker}\t{gender}\t{subset}\tSynthetic Reader {speaker}"
    body = "".join(f"{rows[s]}\n" for s in sorted(rows, key=lambda s: (len(s), s)))
    write_text(path, ";READER\tGENDER\tSUBSET\tNAME\n" + body)


def _vctk_row(k: int, speaker: str) -> tuple[str, str, str, str, str]:
    if speaker in _VCTK_SPEAKERS:
        return _VCTK_SPEAKERS[speaker]
    return (str(20 + k % 15), "F" if k % 2 == 0 else "M", _OTHER_ACCENTS[k % len(_OTHER_ACCENTS)], "", "")


def _save_vctk_mics(folder: Path, utt: str, with_mic2: bool, wave: np.ndarray) -> None:
    """``<utt>_mic1.flac`` and, unless the speaker has none, ``<utt>_mic2.flac``: mic1 through a one-pole
    low-pass at 0.7 gain."""
    write_audio(folder / f"{utt}_mic1.flac", wave, VCTK_SAMPLE_RATE)
    if with_mic2:
        mic2 = lfilter([0.7 * 0.3], [1.0, -0.7], wave).astype(np.float32)
        write_audio(folder / f"{utt}_mic2.flac", mic2, VCTK_SAMPLE_RATE)


def make_vctk(
    root: str | os.PathLike,
    speakers: int | Sequence[str] = ("p225", "p248", "p302", "p347"),
    utterances_per_speaker: int = 10,
    distinct_sentences: bool = True,
    sentence_offset: int = 0,
    workers: int = 2,
    voices: Sequence[SynthesizerVoice] | None = None,
) -> SyntheticCorpus:
    """Write a VCTK-Corpus-0.92-layout corpus: speaker-info.txt, txt/, 48 kHz flac mic1 and mic2.

    The real corpus's gaps are reproduced: p280 gets no mic2 files and p315 no transcripts. mic2 is the
    mic1 signal through a one-pole low-pass at 0.7 gain, so the two files differ as two microphones would.

    Args:
        speakers: a count (p901, p902, ...) or VCTK ids; ids this project uses carry their real
            speaker-info row (age, gender, accent, region), others get made-up ones.
        utterances_per_speaker: utterances p<id>_001 ... per speaker.
        distinct_sentences: every speaker reads different sentences (else all read the same ones).
        sentence_offset: first built-in sentence used.
        workers: synthesizer processes run at once.
        voices: one voice per speaker (default: assigned by gender, round-robin).
    """
    root = Path(root)
    ids = [f"p{901 + k}" for k in range(speakers)] if isinstance(speakers, int) else list(speakers)
    rows = [_vctk_row(k, s) for k, s in enumerate(ids)]
    params = {"speakers": ids, "utterances_per_speaker": utterances_per_speaker,
              "distinct_sentences": distinct_sentences, "sentence_offset": sentence_offset,
              "voices": [str(v) for v in voices] if voices else None}

    def write() -> tuple[dict[str, SynthesizerVoice], list[_Take]]:
        chosen = _speaker_voices(voices, [row[1] for row in rows])
        lines = ["ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n"]
        lines += [
            f"{s:<5} {a:<4} {g:<6} {acc:<13} {reg}  {com}".rstrip() + "\n"
            for s, (a, g, acc, reg, com) in zip(ids, rows, strict=True)
        ]
        write_text(root / "speaker-info.txt", "".join(lines))
        texts = _sentence_indices(len(ids), utterances_per_speaker, distinct_sentences, sentence_offset)
        takes = []
        for k, (speaker, voice) in enumerate(zip(ids, chosen, strict=True)):
            for j in range(utterances_per_speaker):
                utt, text = f"{speaker}_{j + 1:03d}", sentence(texts[k][j])
                if speaker != "p315":
                    write_text(root / "txt" / speaker / f"{utt}.txt", text + "\n")
                save = partial(_save_vctk_mics, root / "wav48_silence_trimmed" / speaker, utt, speaker != "p280")
                takes.append(_Take(voice, text, VCTK_SAMPLE_RATE, save))
        return dict(zip(ids, chosen, strict=True)), takes

    return _write_once(root / ".synthetic-vctk.json", params, write, workers)


def make_recordings(
    root: str | os.PathLike,
    voice: SynthesizerVoice,
    utterances: int = 10,
    sentence_offset: int = 0,
    sample_rate: int = LIBRITTS_SAMPLE_RATE,
    workers: int = 2,
) -> SyntheticCorpus:
    """Write a folder of recordings of one voice: ``<root>/<id>.wav`` (16-bit, ``sample_rate`` Hz) + ``<id>.txt``.

    The layout :func:`tts_bpeft.speech_data.recordings.read_recordings` reads; ids are ``utt_001`` ...;
    sentences are the built-in ones from ``sentence_offset`` on. The speaker is named ``str(voice)``.
    """
    root = Path(root)
    params = {"voice": str(voice), "utterances": utterances, "sentence_offset": sentence_offset,
              "sample_rate": sample_rate}

    def write() -> tuple[dict[str, SynthesizerVoice], list[_Take]]:
        takes = []
        for j, k in enumerate(_sentence_indices(1, utterances, False, sentence_offset)[0]):
            utt, text = f"utt_{j + 1:03d}", sentence(k)
            write_text(root / f"{utt}.txt", text + "\n")
            takes.append(_Take(voice, text, sample_rate, partial(write_audio, root / f"{utt}.wav",
                                                                 sample_rate=sample_rate)))
        return {root.name: voice}, takes

    return _write_once(root / ".synthetic-recordings.json", params, write, workers)
