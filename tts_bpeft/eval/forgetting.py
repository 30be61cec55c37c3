"""Forgetting measured on real speech: what fine-tuning for a new voice did to the voices a model already had,
and how well it speaks the new one.

A model family with built-in voices (Kokoro) is compared with its original self. For one fine-tuned model
(a *run*):

- each built-in voice speaks the held-out sentences ``plan.sentences`` with the run and with the original
  model, with the same seed per (voice, sentence), so the two waves differ only by the weights.
  ``SIM``: the cosine between the speaker embeddings of the run's wave and the original's wave of the same
  sentence, mean over sentences (1 when nothing changed); ``WER``: the run's words wrong, pooled over the
  sentences (errors / reference words, may exceed 1); ``WER_original``: the same for the original model, the
  level the run is to keep.
- the new voice (``target_voice``: its name in the run's synthesizer) speaks the target's held-out
  sentences ``plan.target_lines``. ``SIM``: the mean cosine of each wave to every held-out recording of the
  target (``plan.target_recordings``, the ``"all"`` references of `tts_bpeft.eval.scoring`), mean over
  sentences; ``WER`` pooled. For the original model itself the target voice is the voice the new one starts
  from: its row says where fine-tuning began.

Every synthesis is cached as ``<folder>/<run>/<voice>/<sentence id>.wav`` (written atomically; a file that
exists is reused, and the synthesizer is not even built when all exist), every speaker embedding and
transcript in the file-keyed caches of `tts_bpeft.eval` under ``cache_dir``: per (run, voice, sentence).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tts_bpeft.eval.asr import AsrBackend, error_rates
from tts_bpeft.eval.scoring import transcribe_cached
from tts_bpeft.eval.speaker import SpeakerEncoder, cosine_similarity, embed_audio
from tts_bpeft.eval.synthesis import job_seed, write_wav
from tts_bpeft.family import Synthesizer, Voice

ORIGINAL = "original"
BUILTIN, TARGET = "built-in", "target"


@dataclass(frozen=True)
class Line:
    """One sentence to speak: ``id`` names its wav file (letters, digits, ``._-``), ``text`` is what is said."""

    id: str
    text: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.id) or not self.text.strip():
            raise ValueError(f"a line needs an id of letters, digits, '._-' and a non-empty text; got {self}")


@dataclass(frozen=True)
class ForgettingPlan:
    """What is spoken and against what: the built-in voices (names) and their held-out sentences, the
    target's held-out sentences and real held-out recordings (any sample rate), and the base seed."""

    builtin: tuple[str, ...]
    sentences: tuple[Line, ...]
    target_lines: tuple[Line, ...]
    target_recordings: tuple[Path, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        for what, lines in (("sentences", self.sentences), ("target_lines", self.target_lines)):
            ids = [line.id for line in lines]
            if len(set(ids)) != len(ids):
                raise ValueError(f"ForgettingPlan.{what}: sentence ids repeat: {ids}")
        shared = {line.id for line in self.sentences} & {line.id for line in self.target_lines}
        if shared:
            raise ValueError(f"ForgettingPlan: target lines and built-in sentences share ids {sorted(shared)} "
                             "(their wavs would share files)")
        if not self.builtin or not self.sentences or not self.target_lines:
            raise ValueError("a ForgettingPlan needs built-in voices, their sentences and target lines")
        missing = [str(p) for p in self.target_recordings if not Path(p).is_file()]
        if missing or not self.target_recordings:
            raise FileNotFoundError(f"held-out target recordings missing: {missing or 'none given'}")


SynthesizerSource = Callable[[], Synthesizer]
"""Builds the synthesizer of a model when called (called only when some wav is missing)."""


def speak(source: SynthesizerSource, voice: str, lines: Sequence[Line], folder: str | Path, seed: int = 0,
          progress: bool = True) -> list[Path]:
    """The wavs of `voice` saying `lines`: ``<folder>/<voice>/<id>.wav``, synthesized when missing with seed
    ``job_seed(seed, voice, id)`` (so every model says a sentence with the same random draws)."""
    paths = [Path(folder) / voice / f"{line.id}.wav" for line in lines]
    todo = [(line, path) for line, path in zip(lines, paths, strict=True) if not path.is_file()]
    if todo:
        synth = source()
        for line, path in tqdm(todo, desc=f"speaking ({voice})", unit="sentence", disable=not progress):
            wave = synth(line.text, Voice.builtin(voice), job_seed(seed, voice, line.id))
            if not np.all(np.isfinite(wave)):
                raise ValueError(f"voice {voice!r}: non-finite samples for sentence {line.id} ({line.text!r})")
            write_wav(path, wave, int(synth.sample_rate))
    return paths


@dataclass
class ForgettingResult:
    """One run's scores: ``utterances`` (one dict per wav: run, voice, role, id, text, wav, SIM, hypothesis,
    hypothesis_original (built-in voices), WER), ``voices`` (one dict per voice: run, voice, role, SIM, WER,
    WER_original (built-in voices), n) and the run's summary (:meth:`summary`). WERs are None without ASR."""

    run: str
    utterances: list[dict[str, Any]]
    voices: list[dict[str, Any]]
    encoder: dict[str, str]
    asr: dict[str, str] | None

    def summary(self) -> dict[str, Any]:
        """``builtin_SIM`` (mean of the built-in voices' SIM), ``builtin_WER`` and ``original_WER`` (pooled over
        all their sentences), ``target_SIM``, ``target_WER``."""
        builtin = [u for u in self.utterances if u["role"] == BUILTIN]
        target = [u for u in self.utterances if u["role"] == TARGET]
        return {
            "run": self.run,
            "builtin_SIM": float(np.mean([v["SIM"] for v in self.voices if v["role"] == BUILTIN])),
            "builtin_WER": pooled_wer(builtin),
            "original_WER": pooled_wer(builtin, "hypothesis_original"),
            "target_SIM": float(np.mean([u["SIM"] for u in target])),
            "target_WER": pooled_wer(target),
        }


def pooled_wer(utterances: Sequence[dict[str, Any]], field: str = "hypothesis") -> float | None:
    """Word errors over reference words of the utterances' ``text`` against their `field` (None when a
    transcript is missing, i.e. no ASR ran)."""
    hypotheses = [u.get(field) for u in utterances]
    if not utterances or any(h is None for h in hypotheses):
        return None
    return error_rates([u["text"] for u in utterances], hypotheses).wer


def measure_forgetting(plan: ForgettingPlan, run: str, source: SynthesizerSource, target_voice: str,
                       original: SynthesizerSource, folder: str | Path, encoder: SpeakerEncoder,
                       asr: AsrBackend | None, cache_dir: str | Path | None = None,
                       progress: bool = True) -> ForgettingResult:
    """Score run `run` (module docstring): its model from `source`, the original model from `original`
    (its wavs are cached under ``<folder>/original``, shared by every run; ``run="original"`` scores the
    original model itself, with `target_voice` the voice the new one starts from). Without `asr` the WER
    fields are None."""
    folder = Path(folder)
    items: list[tuple[str, str, Line, Path, Path | None]] = []  # role, voice, line, wav, original wav
    for voice in plan.builtin:
        old = speak(original, voice, plan.sentences, folder / ORIGINAL, plan.seed, progress)
        new = old if run == ORIGINAL else speak(source, voice, plan.sentences, folder / run, plan.seed, progress)
        items += [(BUILTIN, voice, line, n, o) for line, n, o in zip(plan.sentences, new, old, strict=True)]
    said = speak(source, target_voice, plan.target_lines, folder / run, plan.seed, progress)
    items += [(TARGET, target_voice, line, path, None) for line, path in zip(plan.target_lines, said, strict=True)]

    emb_dir = Path(cache_dir) / "embeddings" if cache_dir is not None else None
    refs = list(plan.target_recordings)
    wavs = list(dict.fromkeys([item[3] for item in items] + [item[4] for item in items if item[4] is not None]))
    embs = dict(zip(wavs + refs, embed_audio(encoder, wavs + refs, emb_dir, progress=progress), strict=True))
    ref_embs = np.stack([embs[p] for p in refs])
    texts: dict[Path, str | None] = dict.fromkeys(wavs)
    if asr is not None:
        tr_dir = Path(cache_dir) / "transcripts" if cache_dir is not None else None
        texts = dict(zip(wavs, transcribe_cached(asr, wavs, tr_dir, progress), strict=True))

    utterances = []
    for role, voice, line, wav, old in items:
        against = embs[old][None] if old is not None else ref_embs
        utterance = {"run": run, "voice": voice, "role": role, "id": line.id, "text": line.text, "wav": str(wav),
                     "SIM": float(cosine_similarity(embs[wav][None], against).mean()), "hypothesis": texts[wav]}
        utterance["WER"] = pooled_wer([utterance])
        if old is not None:
            utterance["hypothesis_original"] = texts[old]
        utterances.append(utterance)
    voices = []
    for role, voice in dict.fromkeys((u["role"], u["voice"]) for u in utterances):
        mine = [u for u in utterances if u["voice"] == voice and u["role"] == role]
        row = {"run": run, "voice": voice, "role": role, "SIM": float(np.mean([u["SIM"] for u in mine])),
               "WER": pooled_wer(mine), "n": len(mine)}
        if role == BUILTIN:
            row["WER_original"] = pooled_wer(mine, "hypothesis_original")
        voices.append(row)
    return ForgettingResult(run, utterances, voices, encoder.describe(), asr.describe() if asr else None)
