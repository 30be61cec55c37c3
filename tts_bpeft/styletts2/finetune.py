"""Fine-tuning StyleTTS 2 on one target speaker: LoRA (+ Laplace prior), or the reference's baselines.

Systems (``system``):

- ``lora``: LoRA on a preset (`tts_bpeft.styletts2.presets`), base frozen, with the prior ``none``,
  ``l2sp``, ``ewc``, ``kfac`` or ``ekfac`` (global lam and per-layer patterns, damping, a mixed-in form; the
  curvature file of the base model; see `tts_bpeft.prior.load_prior`);
- ``full``: every weight of the generator modules trained (the reference's full fine-tuning);
- ``linear``: the weights and biases of every nn.Linear in the paper preset's modules trained
  (the reference's "Linear-only" fine-tuning).

The objective is the official ``train_finetune.py``'s (`tts_bpeft.styletts2.losses`): the generator loss
with the adversarial (mpd/msd), WavLM feature and SLM adversarial terms, style diffusion from
``loss.diff_epoch``, SLM adversarial from ``loss.joint_epoch``, the discriminators trained every step
(`tts_bpeft.styletts2.adversarial`; their weights and optimizers are in ``checkpoint.pt``); every term
switchable in ``loss.terms``. The optimiser is the reference's: AdamW, betas (0, 0.99), eps 1e-9, weight
decay 1e-4, constant lr 1e-4 (1e-5 for PL-BERT); the discriminators' the same at ``optim.lr``.
The run folder (``run.json``, the result, ``checkpoint.pt``, ``log.csv``, ``summary.json``) is written
through `tts_bpeft.runs`, which also rebuilds the fine-tuned model from it (``load_run``) and exports it.
Batches and the objective come from the StyleTTS 2 family (`tts_bpeft.styletts2.family`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from munch import Munch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..family import DataOptions, TTSModel
from ..io import save_json
from ..prior import LaplacePrior, check_strengths, load_prior
from ..runs import flatten_settings, run_lock, save_result, write_run
from ..speech_data.issues import MISSING_TRANSCRIPT, UNKNOWN_SPEAKER, SkipReport
from ..speech_data.phonemes import Phonemizer, default_cache
from ..speech_data.records import Utterance
from ..speech_data.selection import split_per_speaker
from ..speech_data.vctk import AUDIO_FOLDER, read_speaker_info, read_vctk
from ..training import TrainSettings, train
from .build import GENERATOR_MODULES
from .curvature import LIKELIHOOD_TERMS, utterance_seed
from .data.dataset import TTSDataset, collate
from .family import StyleTTS2Family
from .losses import GeneratorObjective
from .presets import PRESETS

SYSTEMS = ("lora", "full", "linear")


def _plain(cfg: Any) -> Any:
    """A hydra/OmegaConf config (or plain dict) as plain Python containers."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def target_splits(data_cfg: Mapping[str, Any], speaker: str, train_utterances: int | None, seed: int = 0,
                  report: SkipReport | None = None):
    """Train / val / test utterances of the target speaker (disjoint; test first, then val, then train). The
    files the reader skipped are added to `report`. Raises ValueError naming the speaker, the folder and the
    reason when the speaker is unknown, has no transcripts or no usable recording, or no training
    utterance is left after the held-out splits."""
    root = Path(data_cfg["vctk_root"])
    corpus = read_vctk(root, speakers=[speaker], mic=data_cfg.get("mic", "mic1"), seed=seed)
    if report is not None:
        report.merge(corpus.report)
    if not corpus.utterances:
        info_file = root / "speaker-info.txt"
        known = ", ".join(sorted(read_speaker_info(info_file)))
        reasons = {UNKNOWN_SPEAKER: f"it is neither in {info_file} nor a folder of {root / AUDIO_FOLDER}; "
                                    f"speakers there: {known}",
                   MISSING_TRANSCRIPT: f"it has no transcripts (no folder {root / 'txt' / speaker})"}
        reason = next((reasons[r] for r in reasons if corpus.report.by_reason(r)), None)
        unusable = f"none of its recordings in {root / AUDIO_FOLDER / speaker} could be used:\n"
        raise ValueError(f"speaker={speaker}: " + (reason or unusable + corpus.report.summary()))
    val, test = data_cfg.get("val_utterances", 5), data_cfg.get("test_utterances", 20)
    splits = split_per_speaker(corpus.utterances, val=val, test=test, seed=seed)
    train_set = splits.train[:train_utterances] if train_utterances else splits.train
    if not train_set:
        raise ValueError(f"speaker={speaker}: its {len(corpus.utterances)} usable utterances in {root} all went to "
                         f"the held-out splits (data.test_utterances={test}, data.val_utterances={val}); lower them")
    return train_set, splits.val, splits.test


def check_settings(cfg: Mapping[str, Any], need_corpus: bool = True) -> None:
    """Refuse, before anything is built or read, a configuration with an unset (``???``) value, bad numbers
    (prior strengths, learning rates, counts) or a missing corpus folder or curvature file; each message names
    the setting and the fix."""
    unset = [k for k, v in flatten_settings(cfg).items() if v == "???"]
    if unset:
        raise ValueError(f"settings {unset} are not set (???); give them on the command line, e.g. {unset[0]}=...")
    prior = cfg["prior"]
    if prior["kind"] != "none":
        check_strengths(prior.get("lam", 1.0), prior.get("damping") or 0.0, prior.get("mu") or 0.0,
                        prior.get("lam_per_layer"))
    optim = cfg["optim"]
    for key in ("lr", "bert_lr", "eps", "weight_decay"):
        value = optim[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"optim.{key} = {value!r}: must be a finite number >= 0")
    for key, value in (("optim.batch_size", optim["batch_size"]), ("train_utterances", cfg.get("train_utterances"))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} = {value!r}: must be an integer >= 1 (train_utterances: or null, all)")
    if need_corpus and not Path(cfg["data"]["vctk_root"]).is_dir():
        raise FileNotFoundError(f"data.vctk_root={cfg['data']['vctk_root']}: no such folder (a VCTK-Corpus-0.92 "
                                "folder holding speaker-info.txt, txt/ and wav48_silence_trimmed/)")
    for key in ("curvature", "mix"):
        path = prior.get(key)
        if prior["kind"] != "none" and path and path != "l2sp" and (key == "mix" or prior["kind"] != "l2sp") \
                and not Path(path).is_file():
            raise FileNotFoundError(f"prior.{key}={path}: no such curvature file (write it with "
                                    "estimate_curvature.py)")


def configure_system(family: StyleTTS2Family, model: TTSModel, cfg: Mapping[str, Any]
                     ) -> dict[str, torch.Tensor]:
    """Freeze the model, then make the system's parameters trainable; returns them by name."""
    system = cfg["system"]
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    if system != "lora" and cfg["prior"]["kind"] != "none":
        raise ValueError(f"the prior acts on LoRA weight shifts; system {system!r} needs prior=none")
    for module in model.modules():
        module.requires_grad_(False)
    if system == "lora":
        lora = cfg["lora"]
        family.add_preset(model, lora["preset"], r=lora["r"], alpha=lora["alpha"], dropout=lora.get("dropout", 0.0),
                          extra=lora.get("extra") or [], exclude=lora.get("exclude") or [])
        return {f"{key}.{n}": p for key in GENERATOR_MODULES for n, p in model.net[key].named_parameters()
                if ".lora_" in f".{n}"}
    if system == "full":
        chosen = {f"{key}.{n}": p for key in GENERATOR_MODULES for n, p in model.net[key].named_parameters()}
    else:
        paper = re.compile(PRESETS["paper"][0][1])
        chosen = {".".join(filter(None, (key, mn, n))): p for key in GENERATOR_MODULES
                  for mn, m in model.net[key].named_modules()
                  if isinstance(m, torch.nn.Linear) and paper.fullmatch(".".join(filter(None, (key, mn))))
                  for n, p in m.named_parameters(recurse=False)}
    for p in chosen.values():
        p.requires_grad_(True)
    return chosen


def build_prior(model: Munch, prior_cfg: Mapping[str, Any]) -> LaplacePrior | None:
    """The Laplace prior of a LoRA run (None for ``kind: none``); see `tts_bpeft.prior.load_prior`."""
    options = {k: prior_cfg[k] for k in ("lam", "curvature", "lam_per_layer", "scaling", "damping", "mix", "mu")
               if prior_cfg.get(k) is not None}
    return load_prior(model, prior_cfg["kind"], **options)


def run_finetuning(cfg: Mapping[str, Any], out_dir: str | Path, utterances: Sequence[Utterance] | None = None
                   ) -> dict[str, Any]:
    """Fine-tune as `cfg` says (the hydra config of ``recipes/styletts2_vctk/finetune.py``) into `out_dir`.

    The training utterances are the target speaker's VCTK train split, or `utterances` when given (e.g.
    LibriTTS for pre-training). Launched by ``torchrun --nproc_per_node N``, the processes share each global
    batch (``optim.batch_size`` utterances each) and average gradients; rank 0 writes the files. Rerunning
    the same command in the same folder resumes from ``checkpoint.pt``. Returns the summary that is also
    written to ``summary.json``.
    """
    cfg = _plain(cfg)
    check_settings(cfg, need_corpus=utterances is None)
    optim = cfg["optim"]
    settings = TrainSettings(epochs=optim["epochs"], max_steps=optim.get("max_steps"),
                             grad_accum=optim.get("grad_accum", 1), max_grad_norm=optim.get("max_grad_norm"),
                             checkpoint_every=cfg.get("checkpoint_every", 50), progress=cfg.get("progress", True))
    out_dir = Path(out_dir)
    device = torch.device(cfg.get("device", "cpu"))
    seed = int(cfg.get("seed", 0))
    opened_here = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized()
    if opened_here:  # launched by torchrun: the group is ours to close (a process that exits with it open can abort)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        with run_lock(out_dir) if rank == 0 else nullcontext():
            return _run_finetuning(cfg, settings, out_dir, utterances, device, seed, rank, world)
    finally:
        if opened_here:
            dist.destroy_process_group()


def _run_finetuning(cfg: dict[str, Any], settings: TrainSettings, out_dir: Path, utterances: Sequence[Utterance] | None,
              device: torch.device, seed: int, rank: int, world: int) -> dict[str, Any]:
    """`finetune` once the settings are checked and the folder is locked: data first, then the model."""
    family = StyleTTS2Family()
    run = write_run(out_dir, cfg, family.name) if rank == 0 else None
    data_cfg, optim = cfg["data"], cfg["optim"]
    read_report = SkipReport()
    if utterances is None:
        train_set, _, _ = target_splits(data_cfg, cfg["speaker"], cfg.get("train_utterances"), seed, read_report)
    else:
        train_set = list(utterances)
    options = DataOptions(phoneme_cache=Path(data_cfg.get("phoneme_cache") or default_cache()),
                          trim_db=data_cfg.get("trim_db"), max_frames=cfg["loss"].get("max_frames"))
    model = family.build(cfg["model"], device, seed)
    trainable = configure_system(family, model, cfg)
    prior = build_prior(model.net, cfg["prior"])
    batches = family.training_batches(model, train_set, optim["batch_size"], seed, rank, world, options)
    step_loss = family.training_loss(model, cfg["loss"]["terms"], cfg["loss"].get("weights"), seed, options,
                                     amp=bool(cfg.get("amp")), adversarial={**cfg["loss"], **optim})

    bert = [p for n, p in trainable.items() if n.startswith("bert.")]
    rest = [p for n, p in trainable.items() if not n.startswith("bert.")]
    groups = [g for g in ({"params": rest, "lr": optim["lr"]}, {"params": bert, "lr": optim["bert_lr"]})
              if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                  weight_decay=optim["weight_decay"])
    buffers = {f"{key}.{name}": b for key, module in model.net.items() for name, b in module.named_buffers()}
    result = train(trainable, optimizer, batches, step_loss, out_dir, settings,
                   penalty=(lambda: prior.penalty(model.net)) if prior is not None else None, buffers=buffers,
                   extra_state=step_loss.extra_state)
    if run is None:
        return result
    save_result(run, model, trainable)
    summary = {"speaker": cfg["speaker"], "system": cfg["system"], "prior": cfg["prior"]["kind"],
               "lam": cfg["prior"]["lam"], "train_utterances": len(train_set),
               "trainable_parameters": sum(p.numel() for p in trainable.values()),
               "skipped_files": len(read_report) + len(batches.dataset.report.skipped), **result}
    save_json(summary, out_dir / "summary.json")
    return summary


@torch.no_grad()
def heldout_loss(model: Munch, config: Mapping[str, Any], utterances: Sequence[Utterance],
                 terms: Sequence[str] = LIKELIHOOD_TERMS, phonemizer: Phonemizer | None = None, seed: int = 0,
                 batch_size: int = 4, max_frames: int | None = None) -> float:
    """Mean per-utterance generator loss (the chosen likelihood terms, eval mode, fixed random draws) on
    `utterances`: on held-out pre-training data, the direct measure of forgetting."""
    for module in model.values():
        module.eval()
    dataset = TTSDataset(list(utterances), phonemizer)
    objective = GeneratorObjective(model, dict(config), terms=tuple(terms), max_frames=max_frames)
    device = objective.device
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(items, [dataset.reference(it, torch.Generator().manual_seed(seed)) for it in items],
                        dataset.ref_frames).to(device)
        out = objective(batch, seeds=[utterance_seed(seed, p) for p in batch.paths])
        total += float(out.total.sum())
        count += len(items)
    return total / count
