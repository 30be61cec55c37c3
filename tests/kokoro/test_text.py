"""English text -> Kokoro phonemes -> token ids."""

from __future__ import annotations

import shutil

import pytest

from tts_bpeft.kokoro.text import (
    MAX_PHONEMES,
    UnknownPhonemes,
    english_phonemes,
    espeak_to_kokoro,
    split_sentences,
    token_ids,
)

VOCAB = {s: i for i, s in enumerate(" ,.!?;:ˈˌAIOWYTabdefhijklmnoprstuvwzæðŋɑɔəɛɜɡɪɹʃʊʌʒʤʧθᵊᵻ", start=1)}


@pytest.mark.parametrize(("espeak", "kokoro"), [
    ("həlˈo^ʊ wˈɜːld", "həlˈO wˈɜɹld"),  # o^ʊ -> O, ɜː -> ɜɹ
    ("ðə lˈe^ɪzi dˈɑːɡ", "ðə lˈAzi dˈɑɡ"),  # e^ɪ -> A, length dropped
    ("ˌa^ʊɚ vˈɔ^ɪsᵻz", "ˌWəɹ vˈYsᵻz"),  # a^ʊ -> W, ɚ -> əɹ, ɔ^ɪ -> Y
    ("d^ʒˈʌmps t^ʃˈɜːt^ʃ", "ʤˈʌmps ʧˈɜɹʧ"),  # affricates
    ("wˈɔːɾɚ bˈʌʔn̩ lˈɪɾə^l", "wˈɔTəɹ bˈʌtn lˈɪTᵊl"),  # flap T, glottal stop t, syllabic l
    ("fɔː^ɹ fˈoː^ɹθ", "fɔɹ fˈɔɹθ"),  # tie before r, bare o -> ɔ
    ("bˈɑːx ɐbˈa^ʊt", "bˈɑk əbˈWt"),  # x -> k, ɐ -> ə
    ("mˈɪtn̩", "mˈɪtᵊn"),  # syllabic n after t
])
def test_espeak_ipa_is_rewritten_into_kokoros_alphabet(espeak, kokoro):
    assert espeak_to_kokoro(espeak) == kokoro


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_known_sentence_gives_the_expected_phonemes():
    phonemes, empty = english_phonemes(["The quick brown fox jumps over the lazy dog.", ""])
    assert empty == ""
    # espeak versions differ in details (vowel reduction of "the"), not in these words
    for word in ("kwˈɪk", "bɹˈWn", "fˈɑks", "ʤˈʌmps", "ˌOvəɹ", "lˈAzi", "dˈɑɡ."):
        assert word in phonemes.split(" "), (word, phonemes)
    ids = token_ids(phonemes, VOCAB)
    assert ids[0] == ids[-1] == 0 and len(ids) == len(phonemes) + 2
    assert [VOCAB[p] for p in phonemes] == ids[1:-1]


def test_unknown_symbols_are_reported_with_their_code_points():
    with pytest.raises(UnknownPhonemes) as err:
        token_ids("hˈɛlO ☃ wɜɹld#", VOCAB, text="hello ☃ world#")
    assert err.value.symbols == ["#", "☃"]
    assert "U+2603" in str(err.value) and "hello ☃ world#" in str(err.value)


def test_too_many_phonemes_are_refused():
    token_ids("a" * MAX_PHONEMES, VOCAB)
    with pytest.raises(ValueError, match="split the text"):
        token_ids("a" * (MAX_PHONEMES + 1), VOCAB)


def test_sentences_split_after_sentence_punctuation():
    assert split_sentences("  One. Two!  Three?\nFour; five: six… Mr.Smith ") == [
        "One.", "Two!", "Three?", "Four;", "five:", "six…", "Mr.Smith"]
    assert split_sentences("   ") == []
