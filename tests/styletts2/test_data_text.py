"""Phonemization, the symbol table, unknown-symbol reporting and the phoneme cache."""

from __future__ import annotations

import json
from pathlib import Path

from tts_bpeft.speech_data.phonemes import Phonemizer, collapse_whitespace
from tts_bpeft.styletts2.data.text import PAD_ID, SYMBOLS, tokenize

# Ids read by hand off StyleTTS 2's table: 0 '$', 1-16 ';:,.!?¡¿—…"«»“” ' (',' 3, '.' 4, ' ' 16),
# 17-42 'A'-'Z', 43-68 'a'-'z' (h 50, l 54, o 57, w 65, d 46), then the IPA letters.
HELLO_PHONEMES = "həlˈoʊ, wˈɜːld."
HELLO_IDS = [50, 83, 54, 156, 57, 135, 3, 16, 65, 156, 87, 158, 54, 46, 4]


def test_symbol_table_is_styletts2s() -> None:
    from styletts2.text_utils import symbols

    assert len(SYMBOLS) == 178 and list(SYMBOLS) == symbols
    assert SYMBOLS[PAD_ID] == "$"


def test_known_sentence_phonemes_and_tokens() -> None:
    phonemes = Phonemizer()(["Hello,   world.", "The birch canoe slid on the smooth planks."])
    assert phonemes == [HELLO_PHONEMES, "ðə bˈɜːtʃ kənˈuː slˈɪd ɔnðə smˈuːð plˈæŋks."]
    ids, unknown = tokenize(phonemes[0])
    assert ids == HELLO_IDS and not unknown
    assert "".join(SYMBOLS[i] for i in ids) == HELLO_PHONEMES


def test_punctuation_and_stress_are_kept() -> None:
    (phonemes,) = Phonemizer()(["Yes? No! Maybe; well: fine."])
    for mark in "?!;:.":
        assert mark in phonemes
    assert "ˈ" in phonemes


def test_unknown_symbols_are_counted_not_silently_dropped() -> None:
    ids, unknown = tokenize("a#b#\u0303")
    assert ids == [43, 44]
    assert unknown == {"#": 2, "\u0303": 1}


def test_apostrophe_maps_like_styletts2s_textcleaner() -> None:
    from styletts2.text_utils import TextCleaner

    ids, _ = tokenize("'")
    assert ids == TextCleaner()("'") == [176]


def test_collapse_whitespace() -> None:
    assert collapse_whitespace("  a\n b\t\tc  ") == "a b c"


def test_cache_is_reused_across_instances_and_written_atomically(tmp_path: Path) -> None:
    cache = tmp_path / "phonemes.json"
    first = Phonemizer(cache)
    assert first(["Hello, world.", "Hello, world.", ""]) == [HELLO_PHONEMES, HELLO_PHONEMES, ""]
    assert first.calls == 1
    assert json.loads(cache.read_text(encoding="utf-8"))["entries"] == {"Hello, world.": HELLO_PHONEMES}
    assert [p.name for p in tmp_path.iterdir()] == ["phonemes.json"]  # no temp file left behind
    second = Phonemizer(cache)
    assert second(["Hello,\nworld."]) == [HELLO_PHONEMES]
    assert second.calls == 0


def test_cache_from_other_settings_or_corrupt_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "phonemes.json"
    cache.write_text(json.dumps({"key": "other", "entries": {"Hello, world.": "wrong"}}), encoding="utf-8")
    assert Phonemizer(cache)(["Hello, world."]) == [HELLO_PHONEMES]
    cache.write_text("{not json", encoding="utf-8")
    phonemizer = Phonemizer(cache)
    assert phonemizer.cache == {}
    assert phonemizer(["Hello, world."]) == [HELLO_PHONEMES]
    assert json.loads(cache.read_text(encoding="utf-8"))["entries"] == {"Hello, world.": HELLO_PHONEMES}
