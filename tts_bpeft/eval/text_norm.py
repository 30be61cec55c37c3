"""Text normalisation applied to references and ASR hypotheses before WER/CER scoring."""

from __future__ import annotations

import re

import jiwer

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def integer_to_words(n: int) -> str:
    """English words for a non-negative integer below 10**12, without hyphens or "and" (42 -> forty two)."""
    if not 0 <= n < 10**12:
        raise ValueError(f"integer_to_words handles 0 <= n < 10**12, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        head, rest = _ONES[n // 100] + " hundred", n % 100
    else:
        scale, name = next((scale, name) for scale, name in _SCALES if n >= scale)
        head, rest = f"{integer_to_words(n // scale)} {name}", n % scale
    return head if rest == 0 else f"{head} {integer_to_words(rest)}"


def _number_to_words(match: re.Match[str]) -> str:
    whole, _, fraction = match.group(0).replace(",", "").partition(".")
    words = integer_to_words(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return f" {words} "


class NumbersToWords(jiwer.AbstractTransform):
    """Spell out numbers: "1,234" -> "one thousand two hundred thirty four", "2.5" -> "two point five"."""

    pattern = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")

    def process_string(self, s: str) -> str:
        return self.pattern.sub(_number_to_words, s)


def normalizer(numbers_to_words: bool = True) -> jiwer.Compose:
    """The jiwer transform used for scoring: lowercase, optionally spell out numbers, turn hyphens and
    slashes into spaces, drop punctuation (apostrophes included: "don't" -> "dont"), collapse whitespace."""
    steps: list[jiwer.AbstractTransform] = [jiwer.ToLowerCase()]
    if numbers_to_words:
        steps.append(NumbersToWords())
    steps += [
        jiwer.SubstituteRegexes({r"[-\u2010-\u2015/]": " "}),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
    ]
    return jiwer.Compose(steps)


def normalize_text(text: str, numbers_to_words: bool = True) -> str:
    """Normalise one string for WER/CER scoring (see `normalizer`)."""
    return normalizer(numbers_to_words)(text)
