"""VCTK-Corpus-0.92 reader on a synthetic corpus in the official layout, intact and damaged."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_support import VCTK_UTTERANCES, copy_corpus, make_empty, make_short, make_stereo

from tts_bpeft.speech_data.issues import (
    EMPTY,
    MISSING_AUDIO,
    MISSING_TRANSCRIPT,
    TOO_SHORT,
    UNKNOWN_SPEAKER,
    WRONG_CHANNELS,
    BadInputError,
)
from tts_bpeft.speech_data.sentences import sentence
from tts_bpeft.speech_data.vctk import VCTKSpeaker, parse_speaker_line, read_speaker_info, read_vctk

REAL_LINES = {
    "p225  23  F    English    Southern  England": VCTKSpeaker(
        "p225", 23, "F", "English", "Southern England", ""
    ),
    "p248  23  F    Indian": VCTKSpeaker("p248", 23, "F", "Indian", "", ""),
    "p280  25  F    France     (mic2 files unavailable)": VCTKSpeaker(
        "p280", 25, "F", "France", "", "mic2 files unavailable"
    ),
    "p335  25  F    NewZealand  English": VCTKSpeaker("p335", 25, "F", "NewZealand", "English", ""),
    "p362  29  F": VCTKSpeaker("p362", 29, "F", "", "", ""),
    "s5": VCTKSpeaker("s5", None, "", "", "", ""),
}


@pytest.mark.parametrize("line", list(REAL_LINES))
def test_speaker_lines(line: str) -> None:
    assert parse_speaker_line(line) == REAL_LINES[line]


def test_speaker_info_file_skips_header(tmp_path: Path) -> None:
    path = tmp_path / "speaker-info.txt"
    path.write_text("ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n" + "\n".join(REAL_LINES) + "\n\n")
    assert read_speaker_info(path) == {s.id: s for s in REAL_LINES.values()}
    with pytest.raises(FileNotFoundError, match="speaker-info.txt"):
        read_speaker_info(tmp_path / "missing.txt")


def test_reads_all_speakers_and_reports_p315(vctk_root: Path) -> None:
    corpus = read_vctk(vctk_root)
    assert sorted({u.speaker for u in corpus.utterances}) == ["p225", "p248", "p280", "p302"]
    assert len(corpus.utterances) == 4 * VCTK_UTTERANCES
    assert corpus.report.by_reason(MISSING_TRANSCRIPT) == [str(vctk_root / "txt" / "p315")]
    assert corpus.speakers["p248"].accent == "Indian" and corpus.speakers["p302"].accent == "Canadian"
    first = next(u for u in corpus.utterances if u.path.endswith("p248_001_mic1.flac"))
    speaker_index = ["p225", "p248", "p280", "p302", "p315"].index("p248")
    assert first.text == sentence(speaker_index * VCTK_UTTERANCES)  # the text of its own txt file
    assert all(u.path.endswith("_mic1.flac") for u in corpus.utterances)


def test_p315_asked_by_name_raises_when_strict(vctk_root: Path) -> None:
    with pytest.raises(BadInputError, match="p315"):
        read_vctk(vctk_root, speakers=["p315"], strict=True)
    assert read_vctk(vctk_root, strict=True).report.by_reason(
        MISSING_TRANSCRIPT
    )  # listed by default: skipped


def test_mic2_and_p280_fallback(vctk_root: Path) -> None:
    corpus = read_vctk(vctk_root, speakers=["p225", "p280"], mic="mic2")
    by_speaker = {s: [u.path for u in corpus.utterances if u.speaker == s] for s in ("p225", "p280")}
    assert all(p.endswith("_mic2.flac") for p in by_speaker["p225"])
    assert len(by_speaker["p280"]) == VCTK_UTTERANCES and all(
        p.endswith("_mic1.flac") for p in by_speaker["p280"]
    )
    assert corpus.report.notes == [f"p280: {VCTK_UTTERANCES} utterances have no mic2 file, used mic1 instead"]
    with pytest.raises(ValueError, match="mic"):
        read_vctk(vctk_root, mic="mic3")


def test_utterance_count_seeded_and_nested(vctk_root: Path) -> None:
    three = read_vctk(vctk_root, speakers=["p225", "p248"], utterances_per_speaker=3, seed=5).utterances
    five = read_vctk(vctk_root, speakers=["p225", "p248"], utterances_per_speaker=5, seed=5).utterances
    assert [u.speaker for u in three] == ["p225"] * 3 + ["p248"] * 3
    assert set(three) <= set(five) and len(five) == 10
    assert (
        read_vctk(vctk_root, speakers=["p225", "p248"], utterances_per_speaker=3, seed=5).utterances == three
    )
    other = read_vctk(vctk_root, speakers=["p225", "p248"], utterances_per_speaker=3, seed=6).utterances
    assert set(other) != set(three)


def test_unknown_speaker(vctk_root: Path) -> None:
    corpus = read_vctk(vctk_root, speakers=["p225", "p999"])
    assert corpus.report.counts() == {UNKNOWN_SPEAKER: 1}
    with pytest.raises(BadInputError, match="p999"):
        read_vctk(vctk_root, speakers=["p999"], strict=True)


@pytest.fixture
def broken_vctk(vctk_root: Path, tmp_path: Path) -> Path:
    root = copy_corpus(vctk_root, tmp_path)
    wav = root / "wav48_silence_trimmed" / "p225"
    make_empty(wav / "p225_002_mic1.flac")
    make_stereo(wav / "p225_003_mic1.flac")
    (root / "txt" / "p225" / "p225_004.txt").unlink()
    make_short(wav / "p225_005_mic1.flac")
    (root / "txt" / "p225" / "p225_006.txt").write_text("  \n")
    for mic in ("mic1", "mic2"):
        (wav / f"p225_007_{mic}.flac").unlink()
    return root


def test_broken_files_skipped_counted_and_reported(broken_vctk: Path) -> None:
    corpus = read_vctk(broken_vctk, speakers=["p225", "p248"])
    wav = broken_vctk / "wav48_silence_trimmed" / "p225"
    kept = {Path(u.path).name for u in corpus.utterances if u.speaker == "p225"}
    assert kept == {"p225_001_mic1.flac", "p225_008_mic1.flac"}
    assert len([u for u in corpus.utterances if u.speaker == "p248"]) == VCTK_UTTERANCES
    report = corpus.report
    assert report.by_reason(EMPTY) == [str(wav / "p225_002_mic1.flac")]
    assert report.by_reason(WRONG_CHANNELS) == [str(wav / "p225_003_mic1.flac")]
    assert sorted(report.by_reason(MISSING_TRANSCRIPT)) == [
        str(broken_vctk / "txt" / "p225" / "p225_004.txt"),
        str(broken_vctk / "txt" / "p225" / "p225_006.txt"),
    ]
    assert report.by_reason(TOO_SHORT) == [str(wav / "p225_005_mic1.flac")]
    assert report.by_reason(MISSING_AUDIO) == [str(wav / "p225_007_mic1.flac")]
    summary = report.summary()
    assert summary.startswith("6 skipped: ") and "too_short=1" in summary and "p225_005_mic1.flac" in summary
    # With mixing allowed the stereo file is kept.
    mixed = read_vctk(broken_vctk, speakers=["p225"], mix_to_mono=True)
    assert "p225_003_mic1.flac" in {Path(u.path).name for u in mixed.utterances}


def test_broken_count_draws_replacements(broken_vctk: Path) -> None:
    corpus = read_vctk(broken_vctk, speakers=["p225"], utterances_per_speaker=2)
    assert {Path(u.path).name for u in corpus.utterances} == {"p225_001_mic1.flac", "p225_008_mic1.flac"}
    short = read_vctk(broken_vctk, speakers=["p225"], utterances_per_speaker=3)
    assert len(short.utterances) == 2
    assert short.report.notes == ["p225: asked for 3 utterances, only 2 usable"]


def test_strict_raises_on_first_bad_file(broken_vctk: Path) -> None:
    with pytest.raises(BadInputError) as err:
        read_vctk(broken_vctk, speakers=["p225"], strict=True)
    assert "p225_00" in str(err.value)
