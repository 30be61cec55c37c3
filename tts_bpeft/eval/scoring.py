"""Scoring of a zero-shot evaluation: speaker similarity of each synthesized wav to real recordings of its
speaker, and WER / CER of an ASR transcript against the text (embeddings and transcripts cached on disk)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tts_bpeft.eval.asr import SAMPLE_RATE as ASR_SAMPLE_RATE
from tts_bpeft.eval.asr import AsrBackend, error_rates
from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.speaker import SpeakerEncoder, cosine_similarity, embed_audio
from tts_bpeft.eval.speaker_sets import SpeakerTestSet
from tts_bpeft.eval.synthesis import SynthesisJob
from tts_bpeft.eval.text_norm import normalize_text
from tts_bpeft.eval.transcript_cache import TranscriptCache

SIM_REFERENCE_MODES = ("all", "same")


def similarity_references(test_sets: Sequence[SpeakerTestSet], mode: str = "all") -> dict[tuple[str, str], list[Path]]:
    """The real recordings each synthesized utterance is compared with, by (speaker, utterance id).

    ``"all"``: every test recording of the speaker (the mean cosine over them); ``"same"``: the real
    recording of the same sentence.
    """
    if mode not in SIM_REFERENCE_MODES:
        raise ValueError(f"similarity reference mode must be one of {SIM_REFERENCE_MODES}, got {mode!r}")
    refs = {}
    for test in test_sets:
        every = [u.path for u in test.utterances]
        for utt in test.utterances:
            refs[(test.speaker, utt.utterance_id)] = every if mode == "all" else [utt.path]
    return refs


def _embed_each(encoder: SpeakerEncoder, paths: Sequence[Path], cache_dir: Path | None, progress: bool,
                log: Callable[[str], None]) -> list[np.ndarray | None]:
    """Embeddings of ``paths``; None for a file the encoder finds no speech in (reported through ``log``)."""
    try:
        return list(embed_audio(encoder, paths, cache_dir, progress=progress))
    except ValueError:
        pass
    out: list[np.ndarray | None] = []
    for path in paths:
        try:
            out.append(embed_audio(encoder, [path], cache_dir, progress=False)[0])
        except ValueError as err:
            log(f"no speaker embedding for {path}: {err}")
            out.append(None)
    return out


def transcribe_cached(asr: AsrBackend, paths: Sequence[Path], cache_dir: Path | None = None,
                      progress: bool = True) -> list[str]:
    """ASR transcripts of ``paths``; with ``cache_dir``, read from and written to a `TranscriptCache`."""
    cache = TranscriptCache(cache_dir, f"{asr.name}:{asr.model_id}") if cache_dir is not None else None
    texts = []
    for path in tqdm(paths, desc=f"transcribing ({asr.name})", unit="file", disable=not progress):
        text = cache.get(path) if cache is not None else None
        if text is None:
            text = asr.transcribe([load_mono(path, ASR_SAMPLE_RATE)])[0]
            if cache is not None:
                cache.put(path, text)
        texts.append(text)
    return texts


def score_jobs(jobs: Sequence[SynthesisJob], encoder: SpeakerEncoder, asr: AsrBackend | None,
               sim_refs: Mapping[tuple[str, str], Sequence[Path]], cache_dir: str | Path | None = None,
               progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One utterance score per job (the fields `tts_bpeft.eval.report.aggregate` reads).

    ``SIM``: mean cosine between the synthesized wav's speaker embedding and those of ``sim_refs[(speaker,
    utterance id)]`` (NaN when the encoder finds no speech in the wav). With ``asr``: ``hypothesis``,
    ``WER`` / ``CER`` of it against the text (normalised), ``words`` / ``chars`` (normalised reference
    length); without, those are None. Embeddings and transcripts are cached under ``cache_dir``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    synth_paths = [j.output for j in jobs]
    ref_paths = list(dict.fromkeys(p for j in jobs for p in sim_refs[(j.speaker, j.utterance_id)]))
    emb_dir = cache_dir / "embeddings" if cache_dir is not None else None
    ref_embs = dict(zip(ref_paths, embed_audio(encoder, ref_paths, emb_dir, progress=progress), strict=True))
    synth_embs = _embed_each(encoder, synth_paths, emb_dir, progress, log)
    hyps: list[str | None] = [None] * len(jobs)
    if asr is not None:
        tr_dir = cache_dir / "transcripts" if cache_dir is not None else None
        hyps = list(transcribe_cached(asr, synth_paths, tr_dir, progress))
    scores = []
    for job, emb, hyp in zip(jobs, synth_embs, hyps, strict=True):
        refs = np.stack([ref_embs[p] for p in sim_refs[(job.speaker, job.utterance_id)]])
        sim = math.nan if emb is None else float(cosine_similarity(emb[None], refs).mean())
        score: dict[str, Any] = {
            "system": job.system.name, "method": job.system.system, "prior": job.system.prior,
            "lam": job.system.lam, "speaker": job.speaker, "accent": job.accent, "gender": job.gender,
            "role": job.role, "utterance_id": job.utterance_id, "text": job.text, "wav": str(job.output),
            "reference": str(job.reference), "SIM": sim, "hypothesis": hyp, "WER": None, "CER": None,
            "words": None, "chars": None,
        }
        if hyp is not None:
            rates = error_rates([job.text], [hyp])
            score.update(WER=rates.wer, CER=rates.cer, words=rates.reference_words,
                         chars=len(normalize_text(job.text)))
        scores.append(score)
    return scores
