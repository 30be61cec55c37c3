"""LibriTTS reader on a synthetic corpus in the official layout, intact and damaged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_data_support import (
    LIBRITTS_SPEAKERS,
    LIBRITTS_UTTERANCES,
    copy_corpus,
    make_empty,
    make_short,
    make_stereo,
)

from tts_bpeft.speech_data.issues import (
    EMPTY,
    MISSING_AUDIO,
    MISSING_TRANSCRIPT,
    TOO_SHORT,
    UNKNOWN_SPEAKER,
    WRONG_CHANNELS,
    BadInputError,
)
from tts_bpeft.speech_data.libritts import LibriTTSSpeaker, read_libritts, read_speakers_tsv

NAME = re.compile(r"(\d+)_(\d+)_(\d{6})_(\d{6})\.wav")


def test_speakers_tsv(tmp_path: Path) -> None:
    path = tmp_path / "speakers.tsv"
    path.write_text(
        ";READER\tGENDER\tSUBSET\tNAME\n14\tF\ttrain-clean-360\tKristin LeMoine\n16\tF\ttrain-clean-360\n"
    )
    assert read_speakers_tsv(path) == {
        "14": LibriTTSSpeaker("14", "F", "train-clean-360", "Kristin LeMoine"),
        "16": LibriTTSSpeaker("16", "F", "train-clean-360", ""),
    }


def test_reads_everything_with_transcripts(libritts_root: Path) -> None:
    corpus = read_libritts(libritts_root)
    assert len(corpus.utterances) == len(LIBRITTS_SPEAKERS) * LIBRITTS_UTTERANCES and not corpus.report
    assert sorted(corpus.speakers) == list(LIBRITTS_SPEAKERS)
    assert corpus.speakers["1012"].gender == "M" and corpus.speakers["1012"].subset == "train-clean-360"
    for u in corpus.utterances:
        path = Path(u.path)
        match = NAME.fullmatch(path.name)
        assert match and match[1] == u.speaker == path.parts[-3] and match[2] == path.parts[-2]
        assert u.text == path.with_name(path.name.replace(".wav", ".normalized.txt")).read_text()


def test_nested_subsets_and_seed(libritts_root: Path) -> None:
    ten = read_libritts(libritts_root, num_utterances=10, seed=2).utterances
    twenty = read_libritts(libritts_root, num_utterances=20, seed=2).utterances
    assert twenty[:10] == ten and len(set(twenty)) == 20
    assert read_libritts(libritts_root, num_utterances=10, seed=2).utterances == ten
    assert read_libritts(libritts_root, num_utterances=10, seed=3).utterances != ten


def test_speaker_and_subset_selection(libritts_root: Path) -> None:
    corpus = read_libritts(libritts_root, speakers=["1012", 1023])
    assert {u.speaker for u in corpus.utterances} == {"1012", "1023"}
    assert read_libritts(libritts_root, speakers=["1012", "77"]).report.counts() == {UNKNOWN_SPEAKER: 1}
    with pytest.raises(FileNotFoundError, match="train-other-500"):
        read_libritts(libritts_root, subsets=["train-other-500"])


def test_trans_tsv_fallback_and_original_text(libritts_root: Path, tmp_path: Path) -> None:
    root = copy_corpus(libritts_root, tmp_path)
    wav = next(iter(sorted((root / "train-clean-360" / "1001").rglob("*.wav"))))
    tsv = wav.parent / f"1001_{wav.parent.name}.trans.tsv"
    lines = tsv.read_text().splitlines()
    utt = wav.name[: -len(".wav")]
    tsv.write_text(
        "\n".join(
            f"{utt}\tOriginal TEXT.\tnormalized text." if line.startswith(utt) else line for line in lines
        )
    )
    wav.with_name(f"{utt}.normalized.txt").unlink()
    wav.with_name(f"{utt}.original.txt").write_text("Beside the wav, original.")
    texts = {u.path: u.text for u in read_libritts(root, speakers=["1001"]).utterances}
    assert texts[str(wav)] == "normalized text."
    originals = {u.path: u.text for u in read_libritts(root, speakers=["1001"], text="original").utterances}
    assert originals[str(wav)] == "Beside the wav, original."
    with pytest.raises(ValueError, match="text must be"):
        read_libritts(root, text="raw")


@pytest.fixture
def broken_libritts(libritts_root: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = copy_corpus(libritts_root, tmp_path)
    waves = sorted((root / "train-clean-360" / "1023").rglob("*.wav"))
    bad = dict(zip(["empty", "stereo", "short", "no_text", "no_audio"], waves, strict=False))
    make_empty(bad["empty"])
    make_stereo(bad["stereo"])
    make_short(bad["short"])
    utt = bad["no_text"].name[: -len(".wav")]
    bad["no_text"].with_name(f"{utt}.normalized.txt").unlink()
    tsv = bad["no_text"].parent / f"1023_{bad['no_text'].parent.name}.trans.tsv"
    tsv.write_text("".join(line for line in tsv.read_text().splitlines(True) if not line.startswith(utt)))
    bad["no_audio"].unlink()
    return root, bad


def test_broken_files_skipped_and_reported(broken_libritts: tuple[Path, dict[str, Path]]) -> None:
    root, bad = broken_libritts
    corpus = read_libritts(root)
    assert len(corpus.utterances) == len(LIBRITTS_SPEAKERS) * LIBRITTS_UTTERANCES - 5
    assert not {str(p) for p in bad.values()} & {u.path for u in corpus.utterances}
    report = corpus.report
    assert report.by_reason(EMPTY) == [str(bad["empty"])]
    assert report.by_reason(WRONG_CHANNELS) == [str(bad["stereo"])]
    assert report.by_reason(TOO_SHORT) == [str(bad["short"])]
    assert report.by_reason(MISSING_TRANSCRIPT) == [str(bad["no_text"]).replace(".wav", ".normalized.txt")]
    assert report.by_reason(MISSING_AUDIO) == [str(bad["no_audio"])]
    assert len(read_libritts(root, num_utterances=19).utterances) == 19  # draws replacements


def test_strict_raises(broken_libritts: tuple[Path, dict[str, Path]]) -> None:
    root, _ = broken_libritts
    with pytest.raises(BadInputError, match="1023_"):
        read_libritts(root, strict=True)
    assert len(read_libritts(root, speakers=["1001"], strict=True).utterances) == LIBRITTS_UTTERANCES
