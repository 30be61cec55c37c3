"""StyleTTS 2 data lists: round trip, relative paths, malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.styletts2.data.datalist import DataListEntry, read_datalist, speaker_index, write_datalist

UTTERANCES = [
    Utterance("/data/LibriTTS/train-clean-360/14/208/14_208_000001_000000.wav", "14", "Hi.", "hˈaɪ."),
    Utterance(
        "/data/LibriTTS/train-clean-360/16/122/16_122_000000_000002.wav", "16", "Yes, so.", "jˈɛs, sˈoʊ."
    ),
    Utterance("/data/LibriTTS/train-clean-360/14/208/14_208_000002_000000.wav", "14", "Oh!", "ˈoʊ!"),
]


def test_round_trip_with_root(tmp_path: Path) -> None:
    ids = speaker_index(u.speaker for u in UTTERANCES)
    assert ids == {"14": 0, "16": 1}
    path = tmp_path / "train_list.txt"
    write_datalist(path, UTTERANCES, ids, root="/data/LibriTTS")
    assert path.read_text(encoding="utf-8").splitlines() == [
        "train-clean-360/14/208/14_208_000001_000000.wav|hˈaɪ.|0",
        "train-clean-360/16/122/16_122_000000_000002.wav|jˈɛs, sˈoʊ.|1",
        "train-clean-360/14/208/14_208_000002_000000.wav|ˈoʊ!|0",
    ]
    entries = read_datalist(path, root="/data/LibriTTS")
    assert [e.path for e in entries] == [u.path for u in UTTERANCES]
    assert [(e.phonemes, e.speaker_id) for e in entries] == [("hˈaɪ.", 0), ("jˈɛs, sˈoʊ.", 1), ("ˈoʊ!", 0)]
    assert entries[1].to_utterance() == Utterance(UTTERANCES[1].path, "1", "", "jˈɛs, sˈoʊ.")
    assert [p.name for p in tmp_path.iterdir()] == ["train_list.txt"]


def test_two_field_lines_are_speaker_zero_and_bad_lines_named(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("a.wav|ə\n\nb.wav|bˈiː|3\n", encoding="utf-8")
    assert read_datalist(path) == [DataListEntry("a.wav", "ə", 0), DataListEntry("b.wav", "bˈiː", 3)]
    path.write_text("a.wav|ə|0\nb.wav\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"list.txt:2: expected"):
        read_datalist(path)
    path.write_text("a.wav|ə|x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"list.txt:1: speaker_id 'x'"):
        read_datalist(path)


@pytest.mark.parametrize(
    ("utterance", "message"),
    [
        (Utterance("/a.wav", "14", "text"), "no phonemes"),
        (Utterance("/a.wav", "14", "text", "a|b"), "hold '|'"),
        (Utterance("/a.wav", "14", "text", "a\nb"), "line break"),
        (Utterance("/a.wav", "99", "text", "ab"), "speaker '99'"),
    ],
)
def test_write_refuses_bad_records(tmp_path: Path, utterance: Utterance, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_datalist(tmp_path / "list.txt", [utterance], {"14": 0})
    assert not (tmp_path / "list.txt").exists()
