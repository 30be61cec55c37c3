"""Synthetic corpora: exact official layouts, sample rates, the real corpus's gaps, voices and caching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from test_data_support import LIBRITTS_SPEAKERS, LIBRITTS_UTTERANCES, VCTK_SPEAKERS, VCTK_UTTERANCES

from tts_bpeft.speech_data.sentences import NUM_SENTENCES, SENTENCES, sentence
from tts_bpeft.speech_data.synthesizers import assign_voices, available_voices
from tts_bpeft.speech_data.synthetic import make_libritts, make_vctk


def test_sentences_distinct_and_plain() -> None:
    assert NUM_SENTENCES == len(set(SENTENCES)) == 400
    assert all(re.fullmatch(r"[A-Z][a-z ,]+[.!]", s) for s in SENTENCES)
    assert sentence(NUM_SENTENCES + 5) == SENTENCES[5]


def test_voices_detected_and_assigned_by_gender() -> None:
    voices = available_voices()
    assert voices and {v.engine for v in voices} <= {"flite", "espeak-ng", "festival"}
    chosen = assign_voices(["F", "M", "F", "M"])
    assert [v.gender for v in chosen] == ["F", "M", "F", "M"]
    assert len(set(chosen)) == 4


def test_vctk_layout(vctk_root: Path) -> None:
    lines = (vctk_root / "speaker-info.txt").read_text().splitlines()
    assert lines[0].split() == ["ID", "AGE", "GENDER", "ACCENTS", "REGION", "COMMENTS"]
    assert [line.split()[0] for line in lines[1:]] == list(VCTK_SPEAKERS)
    assert lines[2].split() == ["p248", "23", "F", "Indian"]
    audio = vctk_root / "wav48_silence_trimmed"
    for speaker in VCTK_SPEAKERS:
        names = sorted(p.name for p in (audio / speaker).iterdir())
        mics = ("mic1",) if speaker == "p280" else ("mic1", "mic2")
        assert names == sorted(
            f"{speaker}_{i:03d}_{m}.flac" for i in range(1, VCTK_UTTERANCES + 1) for m in mics
        )
        texts = sorted(p.name for p in (vctk_root / "txt" / speaker).glob("*")) if speaker != "p315" else []
        assert texts == (
            [] if speaker == "p315" else [f"{speaker}_{i:03d}.txt" for i in range(1, VCTK_UTTERANCES + 1)]
        )
    assert not (vctk_root / "txt" / "p315").exists()
    mic1, rate = sf.read(audio / "p225" / "p225_001_mic1.flac")
    mic2, rate2 = sf.read(audio / "p225" / "p225_001_mic2.flac")
    assert rate == rate2 == 48000 and sf.info(audio / "p225" / "p225_001_mic1.flac").channels == 1
    assert mic1.shape == mic2.shape and not np.allclose(mic1, mic2, atol=1e-2)
    assert 1.0 < mic1.shape[0] / rate < 8.0 and np.abs(mic1).max() > 0.5
    texts = [(vctk_root / "txt" / s / f"{s}_001.txt").read_text().strip() for s in ("p225", "p248", "p302")]
    assert len(set(texts)) == 3


def test_libritts_layout(libritts_root: Path) -> None:
    speakers = (libritts_root / "speakers.tsv").read_text().splitlines()
    assert speakers[0] == ";READER\tGENDER\tSUBSET\tNAME"
    assert [line.split("\t")[:3] for line in speakers[1:]] == [
        [s, g, "train-clean-360"] for s, g in zip(LIBRITTS_SPEAKERS, "FMF", strict=True)
    ]
    waves = sorted((libritts_root / "train-clean-360").rglob("*.wav"))
    assert len(waves) == len(LIBRITTS_SPEAKERS) * LIBRITTS_UTTERANCES
    for wav in waves:
        speaker, chapter = wav.parts[-3], wav.parts[-2]
        assert re.fullmatch(rf"{speaker}_{chapter}_\d{{6}}_\d{{6}}\.wav", wav.name)
        utt = wav.name[: -len(".wav")]
        normalized = wav.with_name(f"{utt}.normalized.txt").read_text()
        assert wav.with_name(f"{utt}.original.txt").read_text() == normalized
        tsv = (wav.parent / f"{speaker}_{chapter}.trans.tsv").read_text().splitlines()
        assert f"{utt}\t{normalized}\t{normalized}" in tsv
        info = sf.info(wav)
        assert info.samplerate == 24000 and info.channels == 1 and info.subtype == "PCM_16"
    texts = [w.with_name(w.name.replace(".wav", ".normalized.txt")).read_text() for w in waves]
    assert len(set(texts)) == len(texts)  # distinct sentences across speakers


def test_second_call_is_cached_and_reports_voices(vctk_root: Path, libritts_root: Path) -> None:
    again = make_vctk(vctk_root, speakers=VCTK_SPEAKERS, utterances_per_speaker=VCTK_UTTERANCES)
    assert again.cached and again.utterances == len(VCTK_SPEAKERS) * VCTK_UTTERANCES
    assert set(again.voices) == set(VCTK_SPEAKERS)
    marker = json.loads((vctk_root / ".synthetic-vctk.json").read_text())
    assert marker["voices"] == again.voices and marker["seconds"] > len(VCTK_SPEAKERS) * VCTK_UTTERANCES
    libri = make_libritts(
        libritts_root, speakers=LIBRITTS_SPEAKERS, utterances_per_speaker=LIBRITTS_UTTERANCES
    )
    assert libri.cached and len(set(libri.voices.values())) == len(LIBRITTS_SPEAKERS)


def test_changed_parameters_regenerate(tmp_path: Path) -> None:
    first = make_libritts(tmp_path, speakers=["7"], utterances_per_speaker=1, chapters_per_speaker=1)
    assert not first.cached and first.utterances == 1
    second = make_libritts(tmp_path, speakers=["7"], utterances_per_speaker=2, chapters_per_speaker=1)
    assert not second.cached
    assert len(list((tmp_path / "train-clean-360" / "7").rglob("*.wav"))) == 2
    assert make_libritts(tmp_path, speakers=["7"], utterances_per_speaker=2, chapters_per_speaker=1).cached
