"""Zero-shot evaluation of TTS systems: does fine-tuning on one speaker keep the model's voice cloning?

For each system (the pre-trained model, fine-tuning run folders), the held-out test sentences of the target
speaker and of unseen VCTK speakers are synthesized in each speaker's voice (the reference is another
recording of the same speaker), then scored: speaker similarity of every synthesized utterance to the real
recordings of its speaker, and WER / CER of an ASR transcript against the text.

The steps are plain functions with explicit inputs (the recipe ``recipes/styletts2_vctk/evaluate.py`` and
the demo both call them):

1. `collect_systems` -> `SystemSpec` list (a hydra multirun folder expands to every run folder inside it);
2. `build_test_sets` -> one `SpeakerTestSet` per speaker (texts, real recordings, reference);
3. `plan_jobs` -> `SynthesisJob` list; each output wav is named by a hash of the system's weights, the text,
   the reference and the synthesis settings, so a rerun finds its earlier wavs;
4. `synthesize_jobs` writes the missing wavs (a system's model is loaded only when it has missing wavs);
5. `score_jobs` -> one utterance score per job (embeddings and transcripts cached on disk);
6. `evaluate_zero_shot` runs 2-5, aggregates (`tts_bpeft.eval.report`), writes the result files and plots.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from tts_bpeft.eval.asr import SAMPLE_RATE as ASR_SAMPLE_RATE
from tts_bpeft.eval.asr import AsrBackend, error_rates, load_asr
from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.report import aggregate, summarize, write_results
from tts_bpeft.eval.speaker import SpeakerEncoder, cosine_similarity, embed_audio
from tts_bpeft.eval.text_norm import normalize_text
from tts_bpeft.eval.transcript_cache import TranscriptCache
from tts_bpeft.io import write_audio
from tts_bpeft.styletts2.data.selection import split_per_speaker
from tts_bpeft.styletts2.data.vctk import read_vctk

PAPER_TARGET_SPEAKER = "p248"
PAPER_UNSEEN_SPEAKERS = ("p225", "p234", "p238", "p245", "p261", "p294", "p302", "p326", "p335", "p347")
PRETRAINED = "pretrained"
RUN_SETTINGS = "run.json"
SIM_REFERENCE_MODES = ("all", "same")


class IncompleteRunError(ValueError):
    """A run folder without its result (no ``adapter/`` and no ``trainable.safetensors``)."""


# ----------------------------------------------------------------------------------------------- systems


def _file_stamp(path: Path) -> list[Any]:
    """(name, size, mtime ns) of ``path`` and, for a folder, of every file inside it."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files if p.exists()]


@dataclass(frozen=True)
class SystemSpec:
    """One system to evaluate.

    ``name``: unique label (``"pretrained"`` or the run folder's name); ``method``: ``"pretrained"``,
    ``"lora"``, ``"full"`` or ``"linear"``; ``prior``: the run's ``prior.kind`` (``"none"`` for the
    pre-trained model); ``lam``: the run's ``prior.lam`` (None for the pre-trained model); ``speaker``: the
    run's target speaker (None for the pre-trained model); ``run_dir``: the run folder (None for the
    pre-trained model); ``model``: the base-model settings (``{config, checkpoint, aux}``); ``data``: the
    run's data settings (``{vctk_root, mic, val_utterances, test_utterances, ...}``; empty for the
    pre-trained model); ``seed``: the run's seed (random-weight builds depend on it).
    """

    name: str
    method: str
    prior: str = "none"
    lam: float | None = None
    speaker: str | None = None
    run_dir: Path | None = None
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def fingerprint(self) -> str:
        """A hash of what determines the system's weights: the base-model settings and files, and for a run
        its settings and result files (sizes and modification times). Retraining a run changes it."""
        parts: dict[str, Any] = {"method": self.method, "model": dict(self.model), "seed": self.seed}
        files = [self.model.get("config"), self.model.get("checkpoint"),
                 *(self.model.get("aux") or {}).values()]
        parts["model_files"] = [_file_stamp(Path(f)) for f in files if f and f != "tiny" and Path(f).exists()]
        if self.run_dir is not None:
            run = Path(self.run_dir)
            parts["run"] = [str(run.resolve()), _file_stamp(run / RUN_SETTINGS), _file_stamp(run / "adapter"),
                            _file_stamp(run / "trainable.safetensors")]
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The spec as JSON-ready values (stored in results.json)."""
        return {"name": self.name, "method": self.method, "prior": self.prior, "lam": self.lam,
                "speaker": self.speaker, "run_dir": str(self.run_dir) if self.run_dir else None,
                "model": dict(self.model), "seed": self.seed}


def pretrained_system(model: Mapping[str, Any], name: str = PRETRAINED, seed: int = 0) -> SystemSpec:
    """The pre-trained model: ``model = {config: path | "tiny", checkpoint: path | None, aux: {...}}``."""
    return SystemSpec(name=name, method=PRETRAINED, prior="none", lam=None, model=dict(model), seed=seed)


def run_system(run_dir: str | Path, name: str | None = None) -> SystemSpec:
    """A fine-tuning run folder (``run.json`` + ``adapter/`` or ``trainable.safetensors``) as a system.

    Raises FileNotFoundError without ``run.json`` and `IncompleteRunError` when the run has no result yet.
    """
    run_dir = Path(run_dir)
    settings_path = run_dir / RUN_SETTINGS
    if not settings_path.is_file():
        raise FileNotFoundError(f"{settings_path}: missing; not a fine-tuning run folder")
    cfg = json.loads(settings_path.read_text(encoding="utf-8"))
    method = cfg.get("system", "lora")
    result = run_dir / ("adapter" if method == "lora" else "trainable.safetensors")
    if not result.exists():
        raise IncompleteRunError(f"{run_dir}: no {result.name} (the run has not finished)")
    prior = cfg.get("prior") or {}
    lam = prior.get("lam")
    return SystemSpec(
        name=name or run_dir.name, method=method, prior=str(prior.get("kind", "none")),
        lam=None if lam is None else float(lam), speaker=cfg.get("speaker"), run_dir=run_dir,
        model=dict(cfg.get("model") or {}), data=dict(cfg.get("data") or {}), seed=int(cfg.get("seed", 0)),
    )


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run folder (holds ``run.json``), else every run folder below it (a hydra
    multirun folder), sorted. Raises FileNotFoundError when there is none."""
    path = Path(path)
    if (path / RUN_SETTINGS).is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    runs = sorted({p.parent for p in path.rglob(RUN_SETTINGS)})
    if not runs:
        raise FileNotFoundError(f"{path}: no fine-tuning run folder (no {RUN_SETTINGS}) inside")
    return runs


def _unique_names(run_dirs: Sequence[Path], taken: set[str]) -> list[str]:
    """Folder names, extended with parent folders while two runs (or a taken name) collide."""
    depth = 1
    while True:
        names = ["/".join(Path(r).resolve().parts[-depth:]) for r in run_dirs]
        clash = len(set(names)) < len(names) or bool(set(names) & taken)
        if not clash or depth >= max(len(Path(r).resolve().parts) for r in run_dirs):
            return names
        depth += 1


def collect_systems(runs: Sequence[str | Path] = (), pretrained: Mapping[str, Any] | None = None,
                    seed: int = 0, log: Callable[[str], None] = print) -> list[SystemSpec]:
    """The systems to evaluate: the pre-trained model (when ``pretrained`` model settings are given) and
    every run folder of ``runs`` (each a run folder or a folder of runs). Unfinished runs are skipped with a
    message through ``log``; a folder named twice is evaluated once. Raises ValueError when nothing is
    left."""
    systems = [pretrained_system(pretrained, seed=seed)] if pretrained is not None else []
    run_dirs = list(dict.fromkeys(d.resolve() for r in runs for d in find_run_dirs(r)))
    names = _unique_names(run_dirs, {s.name for s in systems}) if run_dirs else []
    for run_dir, name in zip(run_dirs, names, strict=True):
        try:
            systems.append(run_system(run_dir, name))
        except IncompleteRunError as err:
            log(f"skipping {err}")
    if not systems:
        raise ValueError("no system to evaluate: give the pre-trained model and/or finished run folders")
    return systems


def target_speaker(systems: Sequence[SystemSpec], default: str | None = None) -> str:
    """The one target speaker of the runs (``default`` when there are no runs, or to check against).

    Raises ValueError when runs fine-tuned different speakers or disagree with ``default``: evaluate one
    target at a time.
    """
    speakers = sorted({s.speaker for s in systems if s.speaker})
    if len(speakers) > 1:
        raise ValueError(f"the runs fine-tuned different speakers {speakers}: evaluate one target at a time")
    if speakers and default and speakers[0] != default:
        raise ValueError(f"speaker={default} but the runs fine-tuned {speakers[0]}")
    if speakers:
        return speakers[0]
    if not default:
        raise ValueError("no run names a target speaker: give one")
    return default


# --------------------------------------------------------------------------------------------- test sets


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
    """How fine-tuning held out the target's test sentences (`tts_bpeft.styletts2.finetune.target_splits`):
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


# -------------------------------------------------------------------------------------------- synthesis


class SpeechSynthesizer(Protocol):
    """Zero-shot TTS: ``synth(text, reference, seed)`` -> float32 waveform (samples,) at ``sample_rate`` Hz."""

    sample_rate: int

    def __call__(self, text: str, reference: str | Path, seed: int) -> np.ndarray: ...


SynthesizerLoader = Callable[[SystemSpec], SpeechSynthesizer]


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
            wave = synth(job.text, job.reference, job.seed)
            if not np.all(np.isfinite(wave)):
                raise ValueError(f"{name}: synthesized non-finite samples for {job.utterance_id} ({job.text!r})")
            write_wav(job.output, wave, int(synth.sample_rate))
        del synth
    return counts


@dataclass
class StyleTTS2Speech:
    """A StyleTTS 2 `tts_bpeft.styletts2.synthesize.Synthesizer` as a `SpeechSynthesizer` (24 kHz)."""

    synthesizer: Any
    sample_rate: int = 24000

    def __call__(self, text: str, reference: str | Path, seed: int) -> np.ndarray:
        return self.synthesizer(text, reference, seed=seed)


def styletts2_loader(device: str = "cpu", inference: Mapping[str, Any] | None = None, seed: int = 0,
                     phoneme_cache: str | Path | None = None) -> SynthesizerLoader:
    """A loader that builds a system's StyleTTS 2: the pre-trained model (`build_base`) or a fine-tuning run
    (`load_run`), wrapped in a `Synthesizer` with the given inference settings (alpha, beta,
    diffusion_steps, embedding_scale, reference_trim_db). Imports the model code only when called."""

    def load(system: SystemSpec) -> SpeechSynthesizer:
        from tts_bpeft.styletts2.data.audio import SAMPLE_RATE
        from tts_bpeft.styletts2.data.text import Phonemizer
        from tts_bpeft.styletts2.finetune import build_base, load_run
        from tts_bpeft.styletts2.synthesize import InferenceSettings, Synthesizer

        if system.run_dir is not None:
            model, config, _ = load_run(system.run_dir, device)
        else:
            model, config = build_base(dict(system.model), device, system.seed)
        phonemizer = Phonemizer(str(phoneme_cache)) if phoneme_cache else None
        synth = Synthesizer.from_config(model, config, phonemizer=phonemizer,
                                        settings=InferenceSettings(**dict(inference or {})), device=device,
                                        seed=seed)
        return StyleTTS2Speech(synth, SAMPLE_RATE)

    return load


# ------------------------------------------------------------------------------------------------ scoring


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
            "system": job.system.name, "method": job.system.method, "prior": job.system.prior,
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


# ------------------------------------------------------------------------------------------ the whole run


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


__all__ = [
    "PAPER_TARGET_SPEAKER", "PAPER_UNSEEN_SPEAKERS", "IncompleteRunError", "SpeakerTestSet", "SpeechSynthesizer",
    "StyleTTS2Speech", "SynthesisJob", "SystemSpec", "TargetSplit", "TestUtterance", "ZeroShotResult",
    "build_test_sets", "collect_systems", "evaluate_zero_shot", "find_run_dirs", "job_seed", "load_asr",
    "plan_jobs", "pretrained_system", "run_system", "score_jobs", "similarity_references", "styletts2_loader",
    "synthesize_jobs", "target_speaker", "transcribe_cached", "write_wav",
]
