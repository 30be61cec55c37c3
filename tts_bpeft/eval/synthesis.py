"""Synthesis of a zero-shot evaluation: one job per (system, speaker, sentence), wavs named by what made
them (so a rerun finds them), written system by system through the model-family interface
(`tts_bpeft.family`): a family's model is built, and its code imported, only for a system with missing wavs.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tts_bpeft.eval.speaker_sets import SpeakerTestSet
from tts_bpeft.eval.systems import SystemSpec, _file_stamp
from tts_bpeft.family import Synthesizer, Voice, family
from tts_bpeft.io import write_audio
from tts_bpeft.runs import load_run

SynthesizerLoader = Callable[[SystemSpec], Synthesizer]


@dataclass(frozen=True)
class SynthesisJob:
    """One utterance to synthesize and score.

    ``output``: the synthesized wav; ``real``: the real recording of ``text`` by ``speaker``; ``seed``: the
    sampling seed (the same for every system, so systems differ only by their weights).
    """

    system: SystemSpec
    speaker: str
    role: str
    accent: str
    gender: str
    utterance_id: str
    text: str
    reference: Path
    real: Path
    output: Path
    seed: int


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("_") or "system"


def job_seed(seed: int, speaker: str, utterance_id: str) -> int:
    """The sampling seed of one utterance: depends on the base seed and the utterance, not on job order."""
    return (seed * 1_000_003 + zlib.crc32(f"{speaker}|{utterance_id}".encode())) % 2**31


def plan_jobs(systems: Sequence[SystemSpec], test_sets: Sequence[SpeakerTestSet], wav_dir: str | Path,
              settings: Mapping[str, Any] | None = None, seed: int = 0) -> list[SynthesisJob]:
    """One job per (system, speaker, test sentence).

    The output is ``<wav_dir>/<system>/<speaker>/<utterance id>-<key>.wav`` where ``key`` hashes the
    system's `SystemSpec.fingerprint`, the text, the reference file (path, size, mtime), ``settings``
    (inference settings) and the seed: the same inputs find the same file again, changed ones a new one.
    """
    jobs = []
    settings_text = json.dumps(dict(settings or {}), sort_keys=True, default=str)
    for system in systems:
        fingerprint = system.fingerprint()
        for test in test_sets:
            ref_stamp = _file_stamp(test.reference.resolve())
            for utt in test.utterances:
                s = job_seed(seed, test.speaker, utt.utterance_id)
                key_text = json.dumps([fingerprint, utt.text, str(test.reference.resolve()), ref_stamp,
                                       settings_text, s])
                key = hashlib.sha256(key_text.encode("utf-8")).hexdigest()[:16]
                out = Path(wav_dir) / _safe(system.name) / test.speaker / f"{utt.utterance_id}-{key}.wav"
                jobs.append(SynthesisJob(system, test.speaker, test.role, test.accent, test.gender,
                                         utt.utterance_id, utt.text, test.reference, utt.path, out, s))
    return jobs


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> Path:
    """A 16-bit PCM wav of ``wave`` (samples,) clipped to [-1, 1], written atomically."""
    return write_audio(path, np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0), sample_rate)


def synthesize_jobs(jobs: Sequence[SynthesisJob], load_synthesizer: SynthesizerLoader, overwrite: bool = False,
                    progress: bool = True, log: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    """Write every job's wav that is missing (all of them with ``overwrite``).

    Jobs are taken system by system; ``load_synthesizer(system)`` is called once for a system that has
    something to write and never for one whose wavs all exist. Returns ``{system: {"written", "reused"}}``.
    """
    by_system: dict[str, list[SynthesisJob]] = {}
    for job in jobs:
        by_system.setdefault(job.system.name, []).append(job)
    counts = {}
    for name, items in by_system.items():
        todo = [j for j in items if overwrite or not j.output.is_file()]
        counts[name] = {"written": len(todo), "reused": len(items) - len(todo)}
        if not todo:
            log(f"{name}: all {len(items)} wavs already synthesized, reusing them")
            continue
        log(f"{name}: synthesizing {len(todo)} of {len(items)} utterances")
        synth = load_synthesizer(items[0].system)
        for job in tqdm(todo, desc=f"synthesizing ({name})", unit="utt", disable=not progress):
            wave = synth(job.text, Voice.clone(job.reference), job.seed)
            if not np.all(np.isfinite(wave)):
                raise ValueError(f"{name}: synthesized non-finite samples for {job.utterance_id} ({job.text!r})")
            write_wav(job.output, wave, int(synth.sample_rate))
        del synth
    return counts


def family_loader(device: str = "cpu", inference: Mapping[str, Any] | None = None, seed: int = 0,
                  phoneme_cache: str | Path | None = None) -> SynthesizerLoader:
    """A loader that builds a system's model through its family: the pre-trained model (``build``) or a
    fine-tuning run (`tts_bpeft.runs.load_run`), as the family's synthesizer with the given inference
    settings (StyleTTS 2: alpha, beta, diffusion_steps, embedding_scale, reference_trim_db,
    max_token_frames). The family's code is imported only when a system is loaded."""

    def load(system: SystemSpec) -> Synthesizer:
        model_family = family(system.family)
        if system.run_dir is not None:
            model, _ = load_run(system.run_dir, device)
        else:
            model = model_family.build(dict(system.model), device, system.seed)
        return model_family.synthesizer(model, inference, device=device, seed=seed, phoneme_cache=phoneme_cache)

    return load
