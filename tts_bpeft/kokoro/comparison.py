"""A new Kokoro voice with and without forgetting: plain LoRA, L2-SP, EWC, KFAC, damped KFAC and self-replay,
each fine-tuned on the same recordings and measured on real speech (`tts_bpeft.eval.forgetting`), compared at
equal target quality on a front over each system's strength. `make demo` and
``benchmarks/forgetting_kokoro.py`` run it at two sizes (:class:`ComparisonSettings`).

Stages, each cached under the output folder (a rerun reuses every finished piece):

1. data: the target speaker's recordings (``speak_target``; the demo: piper's ``en_US-joe-medium``), the
   first ``train`` for training, the next ``heldout`` held out; the built-in voices' held-out sentences,
   self-replay sentences and curvature sentences, all distinct sentences of `tts_bpeft.speech_data.sentences`
   (indices: target 0-199, held-out built-in 200-249, replay 250-319, curvature 320-359, proxies 360-399);
2. examples: targets of the recordings (`tts_bpeft.kokoro.examples.recording_examples`, aligned against the
   initial voice) and self-replay examples (the original model's own outputs, cached as safetensors);
3. curvature of the LoRA targets: the empirical Fisher of the fine-tuning objective on proxy recordings of
   other voices (flite; the default, measured better) or, with ``fisher="data-free"``, the Monte-Carlo Fisher
   of the model's own outputs (`tts_bpeft.kokoro.curvature`, every built-in voice); KFAC and EWC files, and
   for the opt-in system ``kfac-bf16`` the KFAC file's compact form (eigenbasis in bfloat16);
4. runs: plain LoRA, then each prior at every ``strengths`` value and self-replay at every
   ``replay_fractions`` value, for each seed. A prior's lam is set from plain LoRA: strength s gives
   ``lam = s * L / q``, where ``L`` is plain LoRA's held-out target objective and ``q`` the prior's
   penalty (lam = 1) at plain LoRA's weight shift: at strength s the prior would charge plain LoRA's
   solution s times its target loss. The strengths then mean the same for every prior; the comparison is
   a front over them, never one calibrated point;
5. per run: the held-out target objective (the fine-tuning loss on the ``heldout`` recordings: target
   quality), and forgetting on real speech (built-in voices' similarity to their old outputs and WER, the
   new voice's similarity to the held-out recordings and WER).

:func:`analyse` puts each system at equal target quality, on two measures of it: the held-out objective and the
new voice's similarity to the held-out recordings. A system must keep ``1 - tolerance`` of plain LoRA's gain
over the original model on the measure (`budget`); on its path (plain LoRA, then rising strength) the least
built-in drift (1 - built-in SIM) within that budget is its value (`tts_bpeft.selection.front_value`), per
seed, then mean and sd. A budget relative to plain LoRA's loss alone (``(1 + tolerance) x``) would let a
strong prior pass while keeping a fraction of the voice: the objective falls far less than it starts at.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from tts_bpeft.curvature import Curvature
from tts_bpeft.eval.asr import AsrBackend
from tts_bpeft.eval.forgetting import ORIGINAL, ForgettingPlan, Line, measure_forgetting
from tts_bpeft.eval.speaker import SpeakerEncoder
from tts_bpeft.family import DataOptions, TTSModel, estimate_pretraining_curvature
from tts_bpeft.io import atomic_write, save_json, save_safetensors, write_text
from tts_bpeft.kokoro.curvature import OwnOutputLikelihood, estimate_kokoro_curvature, own_output_utterances
from tts_bpeft.kokoro.examples import mean_objective, recording_examples, replay_examples
from tts_bpeft.kokoro.family import KokoroFamily
from tts_bpeft.kokoro.finetune import Replay, VoiceTraining, finetune_voice
from tts_bpeft.kokoro.predict import KokoroUtterance
from tts_bpeft.kokoro.presets import add_preset_lora
from tts_bpeft.kokoro.targets import Targets
from tts_bpeft.kokoro.voice_loss import VoiceObjective
from tts_bpeft.lora import deepcopy_model
from tts_bpeft.prior import LaplacePrior, load_prior
from tts_bpeft.runs import settings_hash
from tts_bpeft.selection import front_value
from tts_bpeft.speech_data.recordings import read_recordings
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.speech_data.sentences import sentence
from tts_bpeft.speech_data.synthesizers import available_voices, piper_voice
from tts_bpeft.speech_data.synthetic import make_recordings

PLAIN, REPLAY = "lora", "replay"


@dataclass(frozen=True)
class PriorSystem:
    """A prior system: the prior's `kind`, whether it is `damped` (by the settings' KFAC ``damping``), and the
    curvature file it reads (`curvature`, a key of `Materials.curvature`: ``"ewc"``, ``"kfac"``, or
    ``"kfac-bf16"``, the KFAC estimate stored as its eigenbasis with every eigenpair in bfloat16: the compact
    file of docs/curvature.md, here to measure what its rounding does to the comparison's result)."""

    kind: str
    damped: bool = False
    curvature: str | None = None


COMPACT_KFAC = "kfac-bf16"
PRIORS = {"l2sp": PriorSystem("l2sp"), "ewc": PriorSystem("ewc", curvature="ewc"),
          "kfac": PriorSystem("kfac", curvature="kfac"), "kfac-damped": PriorSystem("kfac", True, "kfac"),
          COMPACT_KFAC: PriorSystem("kfac", curvature=COMPACT_KFAC)}
"""Prior systems by name."""
DEFAULT_SYSTEMS = (PLAIN, "l2sp", "ewc", "kfac", "kfac-damped", REPLAY)
SYSTEMS = (*DEFAULT_SYSTEMS[:-1], COMPACT_KFAC, REPLAY)
"""Every system; the compact file's KFAC (`COMPACT_KFAC`) is opt-in (``systems``), the rest run by default."""
NEW_VOICE = "new"
FISHERS = ("data-free", "empirical")
SENTENCE_RANGES = {"target": (0, 200), "builtin": (200, 250), "replay": (250, 320), "curvature": (320, 360),
                   "proxy": (360, 400)}


@dataclass(frozen=True)
class ComparisonSettings:
    """Sizes of one comparison. Data: ``train`` / ``heldout`` target recordings, ``builtin_sentences``
    held-out sentences per scored built-in voice (``builtin``), ``replay_sentences`` and
    ``curvature_sentences`` per built-in voice (all voicepacks), ``proxy_sentences`` per proxy voice (empirical
    Fisher). Model: LoRA ``preset`` minus ``exclude`` at rank ``r``; the new voice starts from
    ``initial_voice``. Training: ``steps`` of ``batch_size``, learning rates, decoder crops of
    ``crop_frames`` aligned frames (25 ms). Systems and strengths (module docstring), KFAC ``damping``,
    the ``tolerance`` of equal target quality (the share of plain LoRA's gain a system may give up, `budget`),
    the ``seeds``, and which Fisher."""

    train: int = 16
    heldout: int = 3
    builtin: tuple[str, ...] = ("jf_alpha", "jm_kumo")
    builtin_sentences: int = 2
    replay_sentences: int = 2
    curvature_sentences: int = 1
    proxy_sentences: int = 2
    initial_voice: str = "jm_kumo"
    preset: str = "paper"
    exclude: tuple[str, ...] = (r"bert\..*", "bert_encoder")
    r: int = 8
    alpha: float = 16.0
    steps: int = 12
    batch_size: int = 2
    lr: float = 2e-3
    style_lr: float = 2e-2
    crop_frames: int = 16
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    strengths: tuple[float, ...] = (0.1, 1.0, 10.0)
    replay_fractions: tuple[float, ...] = (0.25, 0.5)
    damping: float = 0.1
    tolerance: float = 0.1
    seeds: tuple[int, ...] = (0,)
    fisher: str = "empirical"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.systems) - set(SYSTEMS))
        if unknown or PLAIN not in self.systems:
            raise ValueError(f"systems must include {PLAIN!r} and come from {SYSTEMS}; unknown: {unknown}")
        if self.fisher not in FISHERS:
            raise ValueError(f"fisher={self.fisher!r}: one of {FISHERS}")
        sizes = {"target": self.train + self.heldout, "builtin": self.builtin_sentences,
                 "replay": self.replay_sentences, "curvature": self.curvature_sentences,
                 "proxy": self.proxy_sentences}
        for what, count in sizes.items():
            low, high = SENTENCE_RANGES[what]
            if not 1 <= count <= high - low:
                raise ValueError(f"{what} sentences: {count}, must be 1..{high - low} (distinct sentence ranges)")
        if not self.strengths or not self.seeds or min(self.strengths) <= 0:
            raise ValueError("need positive strengths and at least one seed")

    def training_identity(self) -> dict[str, Any]:
        """Everything a run's result depends on besides its system, strength and seed."""
        keep = ("train", "heldout", "replay_sentences", "curvature_sentences", "proxy_sentences", "initial_voice",
                "preset", "exclude", "r", "alpha", "steps", "batch_size", "lr", "style_lr", "crop_frames",
                "damping", "fisher", "builtin", "builtin_sentences")
        return {k: getattr(self, k) for k in keep}


def lines(kind: str, count: int) -> tuple[Line, ...]:
    """`count` sentences of the `kind` range (`SENTENCE_RANGES`), ids ``<kind><index>``."""
    low, _ = SENTENCE_RANGES[kind]
    return tuple(Line(f"{kind}{i:03d}", sentence(i)) for i in range(low, low + count))


@dataclass
class Materials:
    """What every run shares: the base model (no adapter), voicepacks by name (files in ``packs``), the
    target's training and held-out examples, self-replay examples, curvature files by their
    `PriorSystem.curvature` key, the plan."""

    base: nn.Module
    packs: dict[str, Path]
    train: list[KokoroUtterance]
    heldout: list[KokoroUtterance]
    replay: list[KokoroUtterance]
    curvature: dict[str, Path]
    plan: ForgettingPlan
    config: dict[str, Any] = field(default_factory=dict)


def _save_examples(examples: Sequence[KokoroUtterance], path: Path, key: str) -> None:
    tensors = {}
    for i, e in enumerate(examples):
        tensors.update({f"{i}.tokens": e.tokens, f"{i}.style": e.style, f"{i}.durations": e.targets.durations,
                        f"{i}.f0": e.targets.f0, f"{i}.energy": e.targets.energy, f"{i}.audio": e.audio})
    names = json.dumps([e.key for e in examples])
    save_safetensors(tensors, path, metadata={"key": key, "names": names})


def _load_examples(path: Path, key: str) -> list[KokoroUtterance] | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        if meta.get("key") != key:
            return None
        get = handle.get_tensor
        return [KokoroUtterance(name, get(f"{i}.tokens"), get(f"{i}.style"),
                                Targets(get(f"{i}.durations"), get(f"{i}.f0"), get(f"{i}.energy")), get(f"{i}.audio"))
                for i, name in enumerate(json.loads(meta["names"]))]


def cached_replay(model: nn.Module, packs: Mapping[str, torch.Tensor], records: Sequence[Utterance], path: Path,
                  progress: bool = True) -> list[KokoroUtterance]:
    """`tts_bpeft.kokoro.examples.replay_examples` of the ORIGINAL `model`, kept in the safetensors file
    `path` (keyed by the records and a fingerprint of the voicepacks and weights)."""
    key = settings_hash({"records": [asdict(r) for r in records], "weights": _fingerprint(model),
                         "packs": {n: float(p.double().sum()) for n, p in sorted(packs.items())}})
    found = _load_examples(path, key)
    if found is None:
        found = replay_examples(model, packs, records, progress=progress)
        _save_examples(found, path, key)
    return found


def _fingerprint(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def adapted(base: nn.Module, settings: ComparisonSettings, seed: int) -> nn.Module:
    """A copy of `base` with fresh LoRA (the preset minus ``exclude``), its initial draw from `seed`."""
    model = deepcopy_model(base)
    torch.manual_seed(seed)
    add_preset_lora(model, settings.preset, r=settings.r, alpha=settings.alpha, exclude=settings.exclude)
    return model


def objective_of(settings: ComparisonSettings) -> VoiceObjective:
    return VoiceObjective(crop_frames=settings.crop_frames)


def prepare(settings: ComparisonSettings, out_dir: str | Path, base: nn.Module, voicepacks: Mapping[str, torch.Tensor],
            recordings: str | Path, proxies: Mapping[str, str | Path] | None = None,
            progress: bool = True) -> Materials:
    """Stages 1-3 (module docstring) for `base` (a ``KModel``, no adapter) and its `voicepacks`; `recordings`
    is a folder of the target speaker (``<id>.wav`` + ``<id>.txt``, at least ``train + heldout``, read in
    sorted order); `proxies` (empirical Fisher only): name -> folder of another speaker's recordings."""
    out_dir = Path(out_dir)
    missing = sorted({settings.initial_voice, *settings.builtin} - set(voicepacks))
    if missing:
        raise ValueError(f"voices {missing} are not among the model's voicepacks {sorted(voicepacks)}")
    packs = {}
    for name, pack in voicepacks.items():
        path = out_dir / "voices" / f"{name}.pt"
        if not path.is_file():
            copy_of = pack.detach().cpu().clone()
            atomic_write(path, lambda handle, tensor=copy_of: torch.save(tensor, handle))
        packs[name] = path
    found = read_recordings(recordings).utterances
    if len(found) < settings.train + settings.heldout:
        raise ValueError(f"{recordings}: {len(found)} usable recordings, the comparison needs train + heldout = "
                         f"{settings.train + settings.heldout}")
    initial = voicepacks[settings.initial_voice]
    cache = out_dir / "targets"
    examples = recording_examples(base, found[:settings.train + settings.heldout], initial, settings.initial_voice,
                                  cache, progress=progress)
    train, heldout = examples[:settings.train], examples[settings.train:]
    plan = ForgettingPlan(tuple(settings.builtin), lines("builtin", settings.builtin_sentences),
                          tuple(Line(f"heldout_{Path(r.path).stem}", r.text) for r in found[settings.train:][
                              :settings.heldout]),
                          tuple(Path(r.path) for r in found[settings.train:settings.train + settings.heldout]))
    replay = []
    if REPLAY in settings.systems:
        records = [Utterance("", voice, line.text) for voice in sorted(voicepacks)
                   for line in lines("replay", settings.replay_sentences)]
        replay = cached_replay(base, voicepacks, records, out_dir / "replay.safetensors", progress)
    uses = [PRIORS[s] for s in settings.systems if s in PRIORS and PRIORS[s].curvature]
    methods = sorted({spec.kind for spec in uses})  # the estimates the files come from
    curvature = {m: _curvature(settings, out_dir, base, voicepacks, m, proxies, progress) for m in methods}
    if any(spec.curvature == COMPACT_KFAC for spec in uses):
        curvature[COMPACT_KFAC] = compact_curvature(curvature["kfac"])
    return Materials(base, packs, train, heldout, replay, curvature, plan)


def compact_curvature(path: Path) -> Path:
    """The compact form of the KFAC file at `path` (``<name>-bf16.safetensors`` beside it, written once): its
    eigenbasis with every eigenpair (`Curvature.compress`, ``energy=1.0``) stored in bfloat16."""
    compact = path.with_name(f"{path.stem}-bf16{path.suffix}")
    if not compact.is_file():
        Curvature.load(path).compress(energy=1.0).save(compact, dtype=torch.bfloat16)
    return compact


def _curvature(settings: ComparisonSettings, out_dir: Path, base: nn.Module, voicepacks: Mapping[str, torch.Tensor],
               method: str, proxies: Mapping[str, str | Path] | None, progress: bool) -> Path:
    """The curvature file of `method` for the settings' LoRA targets (estimated once, then reused)."""
    ident = {k: getattr(settings, k) for k in ("preset", "exclude", "r", "crop_frames", "fisher",
                                                 "curvature_sentences", "proxy_sentences", "initial_voice")}
    path = out_dir / "curvature" / f"{settings.fisher}-{method}-{settings_hash(ident)}.safetensors"
    if path.is_file():
        return path
    model = adapted(base, settings, 0)
    if settings.fisher == "data-free":
        records = [Utterance("", voice, line.text) for voice in sorted(voicepacks)
                   for line in lines("curvature", settings.curvature_sentences)]
        utterances = own_output_utterances(model.vocab, voicepacks, records)
        estimate = estimate_kokoro_curvature(model, utterances, method,
                                             OwnOutputLikelihood(crop_frames=settings.crop_frames), progress=progress)
    else:
        if not proxies:
            raise ValueError("fisher='empirical' needs proxy recordings (other speakers' folders)")
        recordings = [u for _, folder in sorted(proxies.items())
                      for u in read_recordings(folder).utterances[:settings.proxy_sentences]]
        settings_of_model = {"source": "offline", "targets_cache": str(out_dir / "targets" / "proxies"),
                             "voicepacks": {n: str(out_dir / "voices" / f"{n}.pt") for n in voicepacks}}
        tts = TTSModel(family="kokoro", net=model, settings=settings_of_model)
        estimate = estimate_pretraining_curvature(  # each proxy speaker aligned to its nearest built-in voice
            KokoroFamily(), tts, recordings, method, fisher="empirical",
            options=DataOptions(max_frames=2 * settings.crop_frames), progress=progress,
            description=f"Kokoro empirical Fisher on {len(recordings)} proxy recordings")
    return estimate.save(path)


def run_folder(out_dir: str | Path, settings: ComparisonSettings, system: str, strength: float, seed: int) -> Path:
    """``<out_dir>/runs/<system>-<strength>-seed<seed>-<hash of everything else it depends on>`` (the Fisher and
    the damping only for the systems that use them, so plain LoRA, L2-SP and replay runs are shared)."""
    identity = settings.training_identity()
    if system not in PRIORS or PRIORS[system].curvature is None:
        identity.pop("fisher"), identity.pop("curvature_sentences"), identity.pop("proxy_sentences")
    if system not in PRIORS or not PRIORS[system].damped:
        identity.pop("damping")
    key = settings_hash({**identity, "system": system, "strength": strength, "seed": seed})
    return Path(out_dir) / "runs" / f"{system}-{strength:g}-seed{seed}-{key}"


def _synthesizer(model: nn.Module, packs: Mapping[str, Path], extra: Mapping[str, Path] | None = None):
    voices = {name: str(path) for name, path in {**packs, **(extra or {})}.items()}
    tts = TTSModel(family="kokoro", net=model, settings={"source": "offline", "voicepacks": voices})
    return lambda: KokoroFamily().synthesizer(tts)


def _prior(settings: ComparisonSettings, materials: Materials, model: nn.Module, system: str,
           lam: float) -> LaplacePrior:
    spec = PRIORS[system]
    return load_prior(model, spec.kind, lam, curvature=materials.curvature.get(spec.curvature),
                      damping=settings.damping if spec.damped else 0.0)


def run_one(settings: ComparisonSettings, materials: Materials, out_dir: str | Path, system: str, strength: float,
            seed: int, lam: float, encoder: SpeakerEncoder, asr: AsrBackend | None,
            progress: bool = True) -> dict[str, Any]:
    """Fine-tune one system (``result.json`` in its run folder is the cache) and measure it."""
    folder = run_folder(out_dir, settings, system, strength, seed)
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    model = adapted(materials.base, settings, seed)
    prior, replay = None, None
    if system in PRIORS:
        prior = _prior(settings, materials, model, system, lam)
    if system == REPLAY:
        replay = Replay(materials.replay, strength)
    training = VoiceTraining(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                             style_lr=settings.style_lr, seed=seed, checkpoint_every=min(settings.steps, 10),
                             progress=progress)
    objective = objective_of(settings)
    initial = torch.load(materials.packs[settings.initial_voice], weights_only=True)
    result = finetune_voice(model, materials.train, initial, folder, training, objective, prior, replay,
                            export=False)
    heldout = mean_objective(model, materials.heldout, objective, seed=0, shifted=result.voice)
    penalties = {}
    if system == PLAIN:  # each prior's penalty (lam = 1) at plain LoRA's shift: what the strengths scale
        for name in PRIORS:
            if name in settings.systems:
                penalties[name] = float(_prior(settings, materials, model, name, 1.0).penalty(model).detach())
    original = _synthesizer(materials.base, materials.packs)
    speech = measure_forgetting(materials.plan, folder.name, _synthesizer(model, materials.packs,
                                                                          {NEW_VOICE: result.voicepack}),
                                NEW_VOICE, original, Path(out_dir) / "wavs", encoder, asr,
                                Path(out_dir) / "scores", progress)
    record = {"system": system, "strength": strength, "seed": seed, "lam": lam, "heldout_objective": heldout,
              "train_last": result.summary["last"], "penalties_at_plain": penalties, **speech.summary(),
              "voices": speech.voices, "folder": str(folder)}
    save_json(record, done)
    return record


def original_row(settings: ComparisonSettings, materials: Materials, out_dir: str | Path, encoder: SpeakerEncoder,
                 asr: AsrBackend | None, progress: bool = True) -> dict[str, Any]:
    """The original model with the initial voice: where fine-tuning starts (cached as ``original.json``)."""
    path = Path(out_dir) / f"original-{settings_hash(settings.training_identity())}.json"
    if path.is_file():
        return json.loads(path.read_text())
    heldout = mean_objective(materials.base, materials.heldout, objective_of(settings), seed=0)
    source = _synthesizer(materials.base, materials.packs)
    speech = measure_forgetting(materials.plan, ORIGINAL, source, settings.initial_voice, source,
                                Path(out_dir) / "wavs", encoder, asr, Path(out_dir) / "scores", progress)
    record = {"system": ORIGINAL, "strength": 0.0, "seed": None, "lam": 0.0, "heldout_objective": heldout,
              **speech.summary(), "voices": speech.voices}
    save_json(record, path)
    return record


def run_comparison(settings: ComparisonSettings, materials: Materials, out_dir: str | Path, encoder: SpeakerEncoder,
                   asr: AsrBackend | None, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 4-5 for every system, strength and seed; returns ``{"original": row, "runs": [rows]}``."""
    original = original_row(settings, materials, out_dir, encoder, asr, progress)
    runs = []
    jobs = [(s, x) for s in settings.systems if s != PLAIN
            for x in (settings.replay_fractions if s == REPLAY else settings.strengths)]
    for seed in settings.seeds:
        plain = run_one(settings, materials, out_dir, PLAIN, 0.0, seed, 0.0, encoder, asr, progress)
        runs.append(plain)
        log(f"seed {seed}: plain LoRA held-out objective {plain['heldout_objective']:.4g}, built-in SIM "
            f"{plain['builtin_SIM']:.3f}")
        for system, strength in tqdm(jobs, desc=f"systems (seed {seed})", unit="run", disable=not progress):
            lam = 0.0
            if system in PRIORS:
                lam = strength * plain["heldout_objective"] / max(plain["penalties_at_plain"][system], 1e-30)
            row = run_one(settings, materials, out_dir, system, strength, seed, lam, encoder, asr, progress)
            log(f"seed {seed}: {system} strength {strength:g} (lam {lam:.3g}): held-out objective "
                f"{row['heldout_objective']:.4g}, built-in SIM {row['builtin_SIM']:.3f}, target SIM "
                f"{row['target_SIM']:.3f}")
            runs.append(row)
    return {"settings": asdict(settings), "original": original, "runs": runs}


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": statistics.fmean(finite), "sd": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "n": len(finite)}


TARGET_QUALITY = {"objective": ("heldout_objective", False), "target SIM": ("target_SIM", True)}
"""The two measures of target quality a system is held to: name -> (result key, higher is better)."""


def _loss(run: Mapping[str, Any], key: str, higher_is_better: bool) -> float:
    return 1.0 - run[key] if higher_is_better else run[key]


def budget(plain: Mapping[str, Any], original: Mapping[str, Any], key: str, higher_is_better: bool,
           tolerance: float) -> float:
    """The most a system may lose on `key` (as a loss: ``1 - value`` where higher is better): plain LoRA's loss
    plus `tolerance` of plain LoRA's gain over the original model (no slack when plain LoRA gained nothing).
    A system within it keeps at least ``1 - tolerance`` of what plain LoRA learned."""
    gain = _loss(original, key, higher_is_better) - _loss(plain, key, higher_is_better)
    return _loss(plain, key, higher_is_better) + tolerance * max(gain, 0.0)


def analyse(results: Mapping[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """One row per system, per seed then mean and sd over seeds:

    - for each measure of target quality (`TARGET_QUALITY`): the built-in SIM on the system's path (plain LoRA,
      then rising strength) where it keeps ``1 - tolerance`` of plain LoRA's gain on that measure (`budget`,
      `tts_bpeft.selection.front_value`), so a prior cannot win by not learning the voice;
    - the selected run: the least built-in drift among the system's runs within the held-out objective's
      budget (plain LoRA when none is), with its numbers."""
    runs, original = results["runs"], results["original"]
    systems = list(dict.fromkeys(r["system"] for r in runs))
    rows = []
    for system in systems:
        fronts = {name: [] for name in TARGET_QUALITY}
        chosen = []
        for seed in sorted({r["seed"] for r in runs}):
            plain = next(r for r in runs if r["system"] == PLAIN and r["seed"] == seed)
            mine = sorted((r for r in runs if r["system"] == system and r["seed"] == seed),
                          key=lambda r: r["strength"])
            if not mine:
                continue
            path = ([plain] if system != PLAIN else []) + mine
            for name, (key, higher) in TARGET_QUALITY.items():
                points = [(_loss(r, key, higher), 1.0 - r["builtin_SIM"]) for r in path]
                fronts[name].append(1.0 - front_value(points, budget(plain, original, key, higher, tolerance)))
            limit = budget(plain, original, "heldout_objective", False, tolerance)
            feasible = [r for r in mine if r["heldout_objective"] <= limit]
            chosen.append(max(feasible, key=lambda r: (r["builtin_SIM"], r["strength"])) if feasible else plain)
        rows.append({
            "system": system, "builtin_SIM_at_budget": {name: _mean_sd(v) for name, v in fronts.items()},
            "selected_strength": [r["strength"] for r in chosen],
            **{k: _mean_sd([r[k] for r in chosen]) for k in ("heldout_objective", "builtin_SIM", "builtin_WER",
                                                             "target_SIM", "target_WER")},
        })
    return rows


def _cell(stats: Mapping[str, float], digits: int = 3) -> str:
    if not stats["n"]:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['sd']:.{digits}f}" if stats["n"] > 1 else "")


def _value(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], tolerance: float) -> str:
    """The comparison table (equal target quality) and every run (markdown)."""
    o = results["original"]
    keep = f"{1 - tolerance:.0%}"
    out = [f"Equal target quality: a system keeps at least {keep} of plain LoRA's gain over the original model "
           "(same seed) on the held-out target objective, or on the target SIM; the built-in SIM at that budget is "
           "read off the system's front over its strength. The selected run: the least built-in drift within the "
           "objective's budget. SIM: cosine of speaker embeddings; built-in: new vs old output of the same "
           "sentence; target: new voice vs held-out recordings. WER pooled over sentences.", "",
           "| system | built-in SIM at equal objective | built-in SIM at equal target SIM | selected strength | "
           "held-out objective | built-in SIM | built-in WER | target SIM | target WER |",
           "|---|---|---|---|---|---|---|---|---|",
           f"| original ({o['run']}: initial voice) | 1.000 | 1.000 | - | {o['heldout_objective']:.3f} | "
           f"{o['builtin_SIM']:.3f} | {_value(o['builtin_WER'])} | {o['target_SIM']:.3f} | "
           f"{_value(o['target_WER'])} |"]
    for row in rows:
        fronts = row["builtin_SIM_at_budget"]
        out.append(f"| {row['system']} | {_cell(fronts['objective'])} | {_cell(fronts['target SIM'])} | "
                   f"{', '.join(f'{s:g}' for s in row['selected_strength'])} | {_cell(row['heldout_objective'])} | "
                   f"{_cell(row['builtin_SIM'])} | {_cell(row['builtin_WER'])} | {_cell(row['target_SIM'])} | "
                   f"{_cell(row['target_WER'])} |")
    out += ["", "Every run:", "", "| system | strength | lam | seed | held-out objective | built-in SIM | built-in WER "
            "| target SIM | target WER |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        out.append(f"| {r['system']} | {r['strength']:g} | {r['lam']:.3g} | {r['seed']} | "
                   f"{r['heldout_objective']:.3f} | {r['builtin_SIM']:.3f} | {_value(r['builtin_WER'])} | "
                   f"{r['target_SIM']:.3f} | {_value(r['target_WER'])} |")
    return "\n".join(out) + "\n"


def plot(results: Mapping[str, Any], path: str | Path, tolerance: float) -> Path:
    """Trade-off plot (PNG), one panel per measure of target quality (`TARGET_QUALITY`: held-out objective,
    lower = better; target SIM, higher = better) on x against built-in SIM (y): one line per system over its
    strengths (seed means) from plain LoRA on, the original model as a star, the budget as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, original = results["runs"], results["original"]
    fig, axes = plt.subplots(1, len(TARGET_QUALITY), figsize=(12, 5), sharey=True)
    for ax, (name, (key, higher)) in zip(axes, TARGET_QUALITY.items()):
        def mean_point(rows, key=key):
            return statistics.fmean(r[key] for r in rows), statistics.fmean(r["builtin_SIM"] for r in rows)

        plain_runs = [r for r in runs if r["system"] == PLAIN]
        plain = mean_point(plain_runs)
        for system in dict.fromkeys(r["system"] for r in runs):
            if system == PLAIN:
                continue
            strengths = sorted({r["strength"] for r in runs if r["system"] == system})
            points = [plain] + [mean_point([r for r in runs if r["system"] == system and r["strength"] == s])
                                for s in strengths]
            ax.plot(*zip(*points), marker="o", label=system)
        ax.plot(*plain, marker="s", color="black", linestyle="none", label="plain LoRA")
        ax.plot(original[key], original["builtin_SIM"], marker="*", markersize=14, color="gold",
                markeredgecolor="black", linestyle="none", label="original (initial voice)")
        limit = budget({key: plain[0]}, original, key, higher, tolerance)
        ax.axvline(1.0 - limit if higher else limit, color="gray", linestyle=":",
                   label=f"budget (keeps {1 - tolerance:.0%} of plain LoRA's gain)")
        ax.set_xlabel("new voice: SIM to held-out recordings (higher = closer)" if higher
                      else "held-out target objective (lower = closer to the new voice)")
        ax.set_title(f"at equal {name}")
    axes[0].set_ylabel("built-in voices: SIM to their old output (higher = less forgetting)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Kokoro: a new voice vs the voices it had")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".tmp.png"), dpi=120)
    plt.close(fig)
    return path.with_suffix(".tmp.png").replace(path)


def collect_wavs(plan: ForgettingPlan, results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 out_dir: str | Path, dest: str | Path) -> list[Path]:
    """Before/after wavs of the first held-out target sentence (the real recording, the original model in the
    initial voice, each system's selected run of the first seed in the new voice) and of the first held-out
    sentence of each scored built-in voice (original, each system), copied into `dest`."""
    wavs, dest = Path(out_dir) / "wavs", Path(dest)
    settings = results["settings"]
    target, sentence_id = plan.target_lines[0].id, plan.sentences[0].id
    copies = [(plan.target_recordings[0], "target_recording.wav"),
              (wavs / ORIGINAL / settings["initial_voice"] / f"{target}.wav", "target_before.wav")]
    copies += [(wavs / ORIGINAL / voice / f"{sentence_id}.wav", f"{voice}_before.wav") for voice in plan.builtin]
    seed = settings["seeds"][0]
    for row in rows:
        strength = row["selected_strength"][0] if row["selected_strength"] else 0.0
        system = row["system"] if strength else PLAIN
        run = Path(next(r["folder"] for r in results["runs"] if r["system"] == system and r["strength"] == strength
                        and r["seed"] == seed)).name
        copies.append((wavs / run / NEW_VOICE / f"{target}.wav", f"target_after_{row['system']}.wav"))
        copies += [(wavs / run / voice / f"{sentence_id}.wav", f"{voice}_after_{row['system']}.wav")
                   for voice in plan.builtin]
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source, name in copies:
        if Path(source).is_file():
            shutil.copyfile(source, dest / name)
            written.append(dest / name)
    return written


RECORDING_RATE = 24000


def proxy_recordings(out: Path, count: int) -> dict[str, Path]:
    """Recordings of the flite voices (speakers other than the target) for the empirical Fisher."""
    low, _ = SENTENCE_RANGES["proxy"]
    voices = [v for v in available_voices() if v.engine == "flite"]
    if not voices:
        raise RuntimeError("fisher='empirical' needs flite voices as proxies: apt-get install flite")
    return {v.name: make_recordings(out / f"proxy-{v.name}", v, count, low, RECORDING_RATE).root for v in voices}


def compare_systems(settings: ComparisonSettings, out_dir: str | Path, speaker_backend: str = "auto",
                    asr_backend: str = "auto", progress: bool = True, log: Callable[[str], None] = print,
                    report_dir: str | Path | None = None) -> dict[str, Any]:
    """The whole comparison on Kokoro-82M's offline weights with piper's ``en_US-joe-medium`` as the target:
    every stage of the module docstring (cached in `out_dir`), then ``table.md``, ``results.json``,
    ``tradeoff.png`` and ``before_after/*.wav`` in `report_dir` (default `out_dir`). Returns the results (with
    ``"analysis"`` and ``"wall_seconds"``)."""
    from tts_bpeft.eval.asr import load_asr
    from tts_bpeft.eval.report import describe_backend
    from tts_bpeft.eval.speaker import load_speaker_encoder
    from tts_bpeft.kokoro.offline import offline_voices

    started = time.time()
    out = Path(out_dir)
    log("== target speaker: piper en_US-joe-medium reads sentences ==")
    data = make_recordings(out / "data" / "joe", piper_voice(), settings.train + settings.heldout,
                           SENTENCE_RANGES["target"][0], RECORDING_RATE)
    proxies = proxy_recordings(out / "data", settings.proxy_sentences) if settings.fisher == "empirical" else None
    log("== Kokoro-82M (offline weights) and the scorers ==")
    base = KokoroFamily().build({"source": "offline"}, seed=0).net.eval()  # seeded: bert.pooler's unused draw
    encoder = load_speaker_encoder(speaker_backend)
    asr, why = load_asr(asr_backend)
    log(f"speaker similarity: {describe_backend(encoder.describe())}; ASR: "
        f"{describe_backend(asr.describe()) if asr else why}")
    log("== targets, self-replay examples, curvature ==")
    materials = prepare(settings, out, base, offline_voices(), data.root, proxies, progress)
    log("== fine-tuning and measuring every system ==")
    results = run_comparison(settings, materials, out, encoder, asr, progress, log)
    rows = analyse(results, settings.tolerance)
    results.update(analysis=rows, scorers={"speaker": encoder.describe(), "asr": asr.describe() if asr else why},
                   wall_seconds=time.time() - started)
    table = markdown(results, rows, settings.tolerance)
    report = Path(report_dir) if report_dir is not None else out
    save_json(results, report / "results.json")
    write_text(report / "table.md", table)
    plot(results, report / "tradeoff.png", settings.tolerance)
    wavs = collect_wavs(materials.plan, results, rows, out, report / "before_after")
    log(table)
    log(f"table: {report / 'table.md'}; plot: {report / 'tradeoff.png'}; {len(wavs)} wavs in "
        f"{report / 'before_after'}; wall time {results['wall_seconds']:.0f} s")
    return results
