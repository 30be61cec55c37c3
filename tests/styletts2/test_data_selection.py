"""Seeded selection: nested subsets and disjoint, deterministic per-speaker splits."""

from __future__ import annotations

import pytest

from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.speech_data.selection import (
    group_by_speaker,
    sample_nested,
    sample_per_speaker,
    split_per_speaker,
)


def _utterances(speakers: int = 4, per_speaker: int = 30) -> list[Utterance]:
    return [
        Utterance(f"/c/s{s}/s{s}_{i:03d}.wav", f"s{s}", f"text {s} {i}")
        for s in range(speakers)
        for i in range(per_speaker)
    ]


def test_nested_subsets_are_prefixes_and_seeded() -> None:
    pool = _utterances()
    small, large = sample_nested(pool, 10, seed=3), sample_nested(pool, 100, seed=3)
    assert small == large[:10] and len(set(large)) == 100
    assert sample_nested(list(reversed(pool)), 100, seed=3) == large  # input order does not matter
    assert sample_nested(pool, 100, seed=4) != large
    with pytest.raises(ValueError, match="only 120 available"):
        sample_nested(pool, 121)


def test_per_speaker_counts_nested_and_independent_of_other_speakers() -> None:
    pool = _utterances()
    five = group_by_speaker(sample_per_speaker(pool, 5, seed=1))
    ten = group_by_speaker(sample_per_speaker(pool, 10, seed=1))
    assert {s: len(v) for s, v in ten.items()} == {"s0": 10, "s1": 10, "s2": 10, "s3": 10}
    for speaker in five:
        assert set(five[speaker]) <= set(ten[speaker])
    without_s0 = group_by_speaker(sample_per_speaker([u for u in pool if u.speaker != "s0"], 10, seed=1))
    assert without_s0["s1"] == ten["s1"]
    assert len(sample_per_speaker(pool, 50)) == 120  # a speaker with fewer gives all


def test_splits_disjoint_complete_deterministic() -> None:
    pool = _utterances()
    splits = split_per_speaker(pool, val=3, test=0.2, seed=7)
    train, val, test = (set(x) for x in (splits.train, splits.val, splits.test))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(pool)
    assert {s: len(v) for s, v in group_by_speaker(splits.test).items()} == {f"s{i}": 6 for i in range(4)}
    assert {s: len(v) for s, v in group_by_speaker(splits.val).items()} == {f"s{i}": 3 for i in range(4)}
    again = split_per_speaker(list(reversed(pool)), val=3, test=0.2, seed=7)
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)
    other = split_per_speaker(pool, val=3, test=0.2, seed=8)
    assert set(other.test) != test


def test_split_of_a_small_speaker_gives_up_test_first() -> None:
    pool = _utterances(speakers=1, per_speaker=3)
    splits = split_per_speaker(pool, val=2, test=2)
    assert (len(splits.test), len(splits.val), len(splits.train)) == (2, 1, 0)
    with pytest.raises(ValueError, match="fraction"):
        split_per_speaker(pool, test=1.5)
