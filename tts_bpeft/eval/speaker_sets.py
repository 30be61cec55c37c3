"""Test sets of a zero-shot evaluation: each speaker's held-out sentences, their real recordings, and the
reference recording the voice is cloned from, read from a VCTK corpus (`tts_bpeft.speech_data`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_bpeft.eval.systems import SystemSpec
from tts_bpeft.speech_data.selection import split_per_speaker
from tts_bpeft.speech_data.vctk import read_vctk

PAPER_TARGET_SPEAKER = "p248"
PAPER_UNSEEN_SPEAKERS = ("p225", "p234", "p238", "p245", "p261", "p294", "p302", "p326", "p335", "p347")


@dataclass(frozen=True)
class TestUtterance:
    """One held-out sentence: its id, text and the real recording of it."""

    utterance_id: str
    text: str
    path: Path


@dataclass(frozen=True)
class SpeakerTestSet:
    """A speaker's test sentences and the reference recording its voice is cloned from.

    ``role``: ``"target"`` (the fine-tuning speaker) or ``"unseen"``; ``reference`` is never one of the
    test recordings.
    """

    speaker: str
    role: str
    accent: str
    gender: str
    reference: Path
    utterances: tuple[TestUtterance, ...]


@dataclass(frozen=True)
class TargetSplit:
    """How fine-tuning held out the target's test sentences (StyleTTS 2: ``finetune.target_splits``):
    ``test_utterances`` test first, then ``val_utterances`` val, from a permutation seeded by ``seed``;
    ``limit`` evaluates only the first ``limit`` test sentences (None: all)."""

    test_utterances: int = 20
    val_utterances: int = 5
    seed: int = 0
    mic: str = "mic1"
    limit: int | None = None

    @classmethod
    def from_runs(cls, systems: Sequence[SystemSpec], limit: int | None = None,
                  log: Callable[[str], None] = print, **defaults: Any) -> TargetSplit:
        """The split of the runs' settings (the first run's; a message when runs differ), else ``defaults``."""
        def of(s: SystemSpec) -> TargetSplit:
            return cls(int(s.data.get("test_utterances", 20)), int(s.data.get("val_utterances", 5)), s.seed,
                       str(s.data.get("mic", "mic1")), limit)

        splits = [of(s) for s in systems if s.run_dir is not None]
        if not splits:
            return cls(**{**defaults, "limit": limit})
        if len(set(splits)) > 1:
            log(f"runs held out their target test sentences differently; using the first run's: {splits[0]}")
        return splits[0]


def build_test_sets(
    vctk_root: str | Path,
    target: str | None,
    unseen: Sequence[str] = PAPER_UNSEEN_SPEAKERS,
    unseen_utterances: int = 20,
    split: TargetSplit = TargetSplit(),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[SpeakerTestSet]:
    """Test sets of the target speaker and the unseen speakers of a VCTK-Corpus-0.92 folder.

    Target: the test sentences fine-tuning held out (``split``, the same draw as ``target_splits``); its
    reference is the first validation utterance (else the first training one). Unseen speaker:
    ``unseen_utterances`` sentences drawn with ``seed`` (fewer when the speaker has fewer recordings, one is
    always kept back) and one other utterance as the reference. The target is dropped from ``unseen``.
    Unseen speakers missing from the corpus are skipped with a message; a missing target raises.
    """
    unseen = [s for s in unseen if s != target]
    sets: list[SpeakerTestSet] = []
    if target:
        corpus = read_vctk(vctk_root, speakers=[target], mic=split.mic, seed=split.seed)
        splits = split_per_speaker(corpus.utterances, val=split.val_utterances, test=split.test_utterances,
                                   seed=split.seed)
        rest = [*splits.val, *splits.train]
        if not splits.test or not rest:
            raise ValueError(f"target {target}: needs test utterances and one more for the reference in {vctk_root}")
        info = corpus.speakers.get(target)
        tests = splits.test[: split.limit] if split.limit else splits.test
        sets.append(_test_set(target, "target", info, rest[0].path, tests))
    if unseen:
        corpus = read_vctk(vctk_root, speakers=unseen, mic=split.mic, seed=seed)
        for speaker in unseen:
            mine = [u for u in corpus.utterances if u.speaker == speaker]
            if len(mine) < 2:
                log(f"skipping unseen speaker {speaker}: {len(mine)} usable utterance(s) in {vctk_root}")
                continue
            n_test = min(unseen_utterances, len(mine) - 1)
            splits = split_per_speaker(mine, test=n_test, seed=seed)
            sets.append(_test_set(speaker, "unseen", corpus.speakers.get(speaker), splits.train[0].path,
                                  splits.test))
    return sets


def _test_set(speaker: str, role: str, info: Any, reference: str, utterances: Sequence[Any]) -> SpeakerTestSet:
    return SpeakerTestSet(
        speaker=speaker, role=role, accent=getattr(info, "accent", "") or "", gender=getattr(info, "gender", "") or "",
        reference=Path(reference),
        utterances=tuple(TestUtterance(u.utterance_id, u.text, Path(u.path)) for u in utterances),
    )
