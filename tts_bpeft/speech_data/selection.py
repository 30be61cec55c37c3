"""Deterministic, seed-driven selection of utterances: nested subsets and per-speaker splits.

Every choice is a prefix of a seeded permutation of the records sorted by path, so the same seed always
picks the same files whatever the order the files were listed in, and a smaller selection is always
contained in a larger one made with the same seed (the 10-utterance subset lies inside the 100 one).
Per-speaker permutations are seeded from (seed, speaker) with a stable hash, so adding or removing a
speaker does not change what the others get.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tts_bpeft.speech_data.records import Utterance


def _permuted(utterances: Iterable[Utterance], seed: int, salt: str = "") -> list[Utterance]:
    ordered = sorted(utterances, key=lambda u: u.path)
    random.Random(zlib.crc32(f"{seed}|{salt}".encode())).shuffle(ordered)
    return ordered


def group_by_speaker(utterances: Iterable[Utterance]) -> dict[str, list[Utterance]]:
    """Utterances per speaker, speakers sorted, each list sorted by path."""
    groups: dict[str, list[Utterance]] = {}
    for u in utterances:
        groups.setdefault(u.speaker, []).append(u)
    return {s: sorted(groups[s], key=lambda u: u.path) for s in sorted(groups)}


def sample_nested(utterances: Sequence[Utterance], n: int, seed: int = 0) -> list[Utterance]:
    """``n`` utterances drawn at random over all speakers; nested in ``n`` for a fixed seed.

    Raises:
        ValueError: when fewer than ``n`` utterances are available.
    """
    if n > len(utterances):
        raise ValueError(f"asked for {n} utterances, only {len(utterances)} available")
    return _permuted(utterances, seed)[:n]


def sample_per_speaker(utterances: Sequence[Utterance], n: int, seed: int = 0) -> list[Utterance]:
    """Up to ``n`` utterances of each speaker (all of a speaker who has fewer); nested in ``n``."""
    chosen: list[Utterance] = []
    for speaker, group in group_by_speaker(utterances).items():
        chosen.extend(_permuted(group, seed, speaker)[:n])
    return chosen


@dataclass(frozen=True)
class Splits:
    """Disjoint train / val / test lists of utterances."""

    train: list[Utterance]
    val: list[Utterance]
    test: list[Utterance]


def _count(size: int | float, available: int, name: str) -> int:
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1), got {size}")
        return round(size * available)
    if size < 0:
        raise ValueError(f"{name} count must be >= 0, got {size}")
    return min(size, available)


def split_per_speaker(
    utterances: Sequence[Utterance], val: int | float = 0, test: int | float = 0, seed: int = 0
) -> Splits:
    """Split every speaker's utterances into test, val and train without overlap.

    Args:
        val, test: an int is a count per speaker, a float a fraction of each speaker's utterances.
            Test is taken first, then val, and the rest is train; a speaker with too few utterances gives
            up test first, so train may be empty for that speaker.
        seed: fixes the permutation; splits of the same records with the same seed are identical.
    """
    train: list[Utterance] = []
    val_list: list[Utterance] = []
    test_list: list[Utterance] = []
    for speaker, group in group_by_speaker(utterances).items():
        order = _permuted(group, seed, f"split|{speaker}")
        n_test = _count(test, len(order), "test")
        n_val = _count(val, len(order) - n_test, "val")
        test_list.extend(order[:n_test])
        val_list.extend(order[n_test : n_test + n_val])
        train.extend(order[n_test + n_val :])
    return Splits(train, val_list, test_list)
