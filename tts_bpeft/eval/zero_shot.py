"""Zero-shot evaluation of TTS systems: does fine-tuning on one speaker keep the model's voice cloning?

For each system (the pre-trained model, fine-tuning run folders), the held-out test sentences of the target
speaker and of unseen VCTK speakers are synthesized in each speaker's voice (the reference is another
recording of the same speaker), then scored: speaker similarity of every synthesized utterance to the real
recordings of its speaker, and WER / CER of an ASR transcript against the text.

The steps are plain functions with explicit inputs (the recipe ``recipes/styletts2_vctk/evaluate.py`` and
the demo both call them):

1. `tts_bpeft.eval.systems.collect_systems` -> `SystemSpec` list (a hydra multirun folder expands to every
   run folder inside it);
2. `tts_bpeft.eval.speaker_sets.build_test_sets` -> one `SpeakerTestSet` per speaker (texts, real recordings,
   reference);
3. `tts_bpeft.eval.synthesis.plan_jobs` -> `SynthesisJob` list; each output wav is named by a hash of the
   system's weights, the text, the reference and the synthesis settings, so a rerun finds its earlier wavs;
4. `tts_bpeft.eval.synthesis.synthesize_jobs` writes the missing wavs (a system's model is loaded, through
   its model family, only when it has missing wavs);
5. `tts_bpeft.eval.scoring.score_jobs` -> one utterance score per job (embeddings and transcripts cached);
6. :func:`evaluate_zero_shot` (here) runs 3-5, aggregates (`tts_bpeft.eval.report`), writes the result
   files and plots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_bpeft.eval.asr import AsrBackend
from tts_bpeft.eval.report import aggregate, summarize, write_results
from tts_bpeft.eval.scoring import score_jobs, similarity_references
from tts_bpeft.eval.speaker import SpeakerEncoder
from tts_bpeft.eval.speaker_sets import SpeakerTestSet
from tts_bpeft.eval.synthesis import SynthesizerLoader, plan_jobs, synthesize_jobs
from tts_bpeft.eval.systems import SystemSpec


@dataclass
class ZeroShotResult:
    """What `evaluate_zero_shot` produced: utterance scores, per-(system, speaker) rows, per-system
    summaries, the metadata stored with them, the files written and the synthesis counts."""

    utterances: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    meta: dict[str, Any]
    files: dict[str, Path]
    synthesis: dict[str, dict[str, int]]


def evaluate_zero_shot(
    systems: Sequence[SystemSpec],
    test_sets: Sequence[SpeakerTestSet],
    out_dir: str | Path,
    load_synthesizer: SynthesizerLoader,
    encoder: SpeakerEncoder,
    asr: AsrBackend | None = None,
    asr_skipped: str | None = None,
    sim_refs: str = "all",
    inference: Mapping[str, Any] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    plots: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ZeroShotResult:
    """Synthesize, score, aggregate and report the zero-shot evaluation of ``systems`` on ``test_sets``.

    Writes into ``out_dir``: ``wavs/<system>/<speaker>/*.wav`` (reused when present), ``results.csv``,
    ``results.json``, ``utterances.csv``, ``summary.md`` and, with ``plots``, ``tradeoff.png``,
    ``speaker_similarity.png`` and (when some run has a ``log.csv``) ``training_curves.png``.
    ``cache_dir`` (default ``<out_dir>/cache``) holds speaker embeddings and transcripts. ``asr_skipped``
    says why there is no ``asr`` (stored and printed). ``inference`` and ``seed`` are the synthesis settings;
    they name the wavs. The Markdown table is printed through ``log``.
    """
    from tts_bpeft.eval.plots import plot_speaker_similarity, plot_tradeoff, plot_training_curves
    from tts_bpeft.eval.report import describe_backend, markdown_table

    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    asr_info = asr.describe() if asr is not None else {"skipped": asr_skipped or "no ASR backend given"}
    log(f"speaker similarity backend: {describe_backend(encoder.describe())}")
    log(f"ASR: {describe_backend(asr_info)}")
    jobs = plan_jobs(systems, test_sets, out_dir / "wavs", inference, seed)
    counts = synthesize_jobs(jobs, load_synthesizer, overwrite, progress, log)
    scores = score_jobs(jobs, encoder, asr, similarity_references(test_sets, sim_refs), cache_dir, progress, log)
    rows = aggregate(scores)
    summary = summarize(rows)
    meta = {
        "speaker_encoder": encoder.describe(), "asr": asr_info, "sim_references": sim_refs,
        "inference": dict(inference or {}), "seed": seed,
        "systems": [s.describe() for s in systems],
        "speakers": [{"speaker": t.speaker, "role": t.role, "accent": t.accent, "gender": t.gender,
                      "reference": str(t.reference), "utterances": len(t.utterances)} for t in test_sets],
    }
    files = write_results(out_dir, rows, summary, meta, scores)
    if plots:
        try:
            files["tradeoff_png"] = plot_tradeoff(summary, out_dir / "tradeoff.png")
            files["speaker_similarity_png"] = plot_speaker_similarity(rows, out_dir / "speaker_similarity.png")
        except ValueError as error:  # no SIM at all, e.g. no speech detected in any synthesized wav
            log(f"similarity plots skipped: {error}")
        logs = {s.name: s.run_dir / "log.csv" for s in systems if s.run_dir and (s.run_dir / "log.csv").is_file()}
        if logs:
            files["training_curves_png"] = plot_training_curves(logs, out_dir / "training_curves.png")
    log(markdown_table(summary, describe_backend(encoder.describe()), describe_backend(asr_info)))
    log(f"results in {out_dir}")
    return ZeroShotResult(scores, rows, summary, meta, files, counts)
