"""English text -> Kokoro phonemes -> Kokoro token ids.

Kokoro-82M was trained on the phoneme alphabet of hexgrad's ``misaki`` G2P (American English set), in which
diphthongs and affricates are single letters and r-colouring and flaps are spelled out. Its pipeline needs
spacy models that cannot be installed offline, so this module phonemizes with espeak-ng (through
``phonemizer``, already a project dependency; the system espeak-ng library) and rewrites espeak's IPA into
that alphabet:

==================  ============  ==============================================================
espeak (tie ``^``)  Kokoro        meaning
==================  ============  ==============================================================
e^ɪ a^ɪ a^ʊ ɔ^ɪ     A I W Y       diphthongs of "day", "my", "now", "boy"
o^ʊ (ə^ʊ)           O             "go" (American)
d^ʒ t^ʃ             ʤ ʧ           "judge", "church"
ɚ, ɜː               əɹ, ɜɹ        r-coloured vowels spelled with ɹ
r                   ɹ             English r
ɾ, ʔ                T, t          flap ("water"), glottal stop ("button")
ə^l, C + U+0329     ᵊl, ᵊC        syllabic consonants ("little", "button")
ɐ, o, ː             ə, ɔ, (none)  espeak's near-open schwa, bare o, American vowels carry no length
x ç ɬ ʲ             k k l (none)  loan sounds English speakers replace
==================  ============  ==============================================================

Stress marks (ˈ ˌ), spaces and the punctuation ``; : , . ! ? — … " ( ) “ ”`` pass through. A symbol that
is still outside the model's vocabulary is reported (:class:`UnknownPhonemes` names the symbols and the
text), never dropped silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache

logger = logging.getLogger(__name__)

MAX_PHONEMES = 510
"""Kokoro's PL-BERT has 512 positions; two are the boundary tokens (id 0) around the phonemes."""

_REWRITES: tuple[tuple[str, str], ...] = (
    ("ʔn\u0329", "ʔn"), ("ə^l", "ᵊl"),
    ("e^ɪ", "A"), ("a^ɪ", "I"), ("a^ʊ", "W"), ("ɔ^ɪ", "Y"), ("o^ʊ", "O"), ("ə^ʊ", "O"),
    ("d^ʒ", "ʤ"), ("t^ʃ", "ʧ"),
    ("ɚ", "əɹ"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("r", "ɹ"),
    ("ɾ", "T"), ("ʔ", "t"), ("ɐ", "ə"), ("o", "ɔ"), ("x", "k"), ("ç", "k"), ("ɬ", "l"), ("ʲ", ""),
)
"""Applied in order: ties first (``o^ʊ`` before bare ``o``), length marks and remaining ties are removed last."""
_SYLLABIC = re.compile("(\\S)\u0329")


class UnknownPhonemes(ValueError):
    """Phonemes outside Kokoro's vocabulary; ``symbols`` lists them."""

    def __init__(self, symbols: Sequence[str], text: str):
        self.symbols = list(symbols)
        shown = ", ".join(f"{s!r} (U+{ord(s):04X})" for s in self.symbols)
        super().__init__(f"phonemes outside Kokoro's vocabulary: {shown} in {text!r}; remove or spell out the "
                         "characters that produce them")


def espeak_to_kokoro(ipa: str) -> str:
    """Rewrite one espeak-ng IPA string (American English, stress marks, ties as ``^``) into Kokoro's
    alphabet (table in the module docstring)."""
    out = ipa.strip()
    for old, new in _REWRITES:
        out = out.replace(old, new)
    out = _SYLLABIC.sub(lambda m: "ᵊ" + m.group(1), out)
    return out.replace("ː", "").replace("^", "")


@lru_cache(maxsize=2)
def _espeak(language: str):
    from phonemizer.backend import EspeakBackend

    return EspeakBackend(language, preserve_punctuation=True, with_stress=True, tie="^")


def english_phonemes(texts: Sequence[str], language: str = "en-us") -> list[str]:
    """Kokoro phoneme strings for English `texts` (espeak-ng ``language``: ``en-us``; ``en-gb`` works too,
    with American vowel conventions). One string per text; an empty text gives ``""``."""
    texts = [" ".join(t.split()) for t in texts]
    spoken = [t for t in texts if t]
    ipa = iter(_espeak(language).phonemize(spoken) if spoken else [])
    return [espeak_to_kokoro(next(ipa)) if t else "" for t in texts]


def token_ids(phonemes: str, vocab: dict[str, int], text: str | None = None) -> list[int]:
    """Kokoro token ids for a phoneme string: ``[0, id(p_1), ..., id(p_n), 0]``.

    Raises :class:`UnknownPhonemes` for symbols outside `vocab` (``text`` names the source in the message) and
    ValueError when the string is longer than :data:`MAX_PHONEMES` (split the text into sentences).
    """
    unknown = sorted({p for p in phonemes if p not in vocab})
    if unknown:
        raise UnknownPhonemes(unknown, text if text is not None else phonemes)
    if len(phonemes) > MAX_PHONEMES:
        raise ValueError(f"{len(phonemes)} phonemes exceed Kokoro's {MAX_PHONEMES} for {text or phonemes!r}: "
                         "split the text into shorter sentences")
    return [0, *(vocab[p] for p in phonemes), 0]


_SENTENCE_END = re.compile(r"(?<=[.!?;:…])\s+")


def split_sentences(text: str) -> list[str]:
    """`text` split after sentence punctuation (. ! ? ; : …) followed by whitespace; empty pieces removed."""
    return [piece.strip() for piece in _SENTENCE_END.split(" ".join(text.split())) if piece.strip()]
