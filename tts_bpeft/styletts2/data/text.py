"""Phonemes to StyleTTS 2 tokens: one id per phoneme character.

StyleTTS 2 maps every character of an espeak phoneme string (`tts_bpeft.speech_data.phonemes`) to its
index in the 178-symbol table of ``styletts2.text_utils``.
"""

from __future__ import annotations

from collections import Counter

from styletts2.text_utils import dicts as _SYMBOL_IDS
from styletts2.text_utils import symbols as _SYMBOLS

SYMBOLS: tuple[str, ...] = tuple(_SYMBOLS)
"""StyleTTS 2's 178 symbols; index 0 is the pad ``$``. The apostrophe appears twice; like StyleTTS 2's
TextCleaner we map it to its last index."""
PAD_ID = 0


def tokenize(phonemes: str) -> tuple[list[int], Counter[str]]:
    """Map each character of ``phonemes`` to its StyleTTS 2 id.

    Returns:
        The ids of the known characters, in order, and a count of every character not in the table
        (those are left out of the ids; callers report them rather than lose them silently).
    """
    ids: list[int] = []
    unknown: Counter[str] = Counter()
    for char in phonemes:
        index = _SYMBOL_IDS.get(char)
        if index is None:
            unknown[char] += 1
        else:
            ids.append(index)
    return ids, unknown
