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

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from munch import Munch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..family import DataOptions, TTSModel
from ..io import save_json
from ..prior import LaplacePrior, load_prior
from ..runs import save_result, write_run
from ..speech_data.phonemes import Phonemizer
from ..speech_data.records import Utterance
from ..speech_data.selection import split_per_speaker
from ..speech_data.vctk import read_vctk
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


def target_splits(data_cfg: Mapping[str, Any], speaker: str, train_utterances: int | None, seed: int = 0):
    """Train / val / test utterances of the target speaker (disjoint; test first, then val, then train)."""
    corpus = read_vctk(data_cfg["vctk_root"], speakers=[speaker], mic=data_cfg.get("mic", "mic1"), seed=seed)
    splits = split_per_speaker(corpus.utterances, val=data_cfg.get("val_utterances", 5),
                               test=data_cfg.get("test_utterances", 20), seed=seed)
    train_set = splits.train[:train_utterances] if train_utterances else splits.train
    if not train_set:
        raise ValueError(f"speaker {speaker}: no training utterances left in {data_cfg['vctk_root']}")
    return train_set, splits.val, splits.test


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


def finetune(cfg: Mapping[str, Any], out_dir: str | Path, utterances: Sequence[Utterance] | None = None
             ) -> dict[str, Any]:
    """Fine-tune as `cfg` says (the hydra config of ``recipes/styletts2_vctk/finetune.py``) into `out_dir`.

    The training utterances are the target speaker's VCTK train split, or `utterances` when given (e.g.
    LibriTTS for pre-training). Launched by ``torchrun --nproc_per_node N``, the processes share each global
    batch (``optim.batch_size`` utterances each) and average gradients; rank 0 writes the files. Rerunning
    the same command in the same folder resumes from ``checkpoint.pt``. Returns the summary that is also
    written to ``summary.json``.
    """
    cfg = _plain(cfg)
    out_dir = Path(out_dir)
    device = torch.device(cfg.get("device", "cpu"))
    seed = int(cfg.get("seed", 0))
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # launched by torchrun
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    family = StyleTTS2Family()
    run = write_run(out_dir, cfg, family.name) if rank == 0 else None
    model = family.build(cfg["model"], device, seed)
    trainable = configure_system(family, model, cfg)
    prior = build_prior(model.net, cfg["prior"])

    data_cfg = cfg["data"]
    if utterances is None:
        train_set, _, _ = target_splits(data_cfg, cfg["speaker"], cfg.get("train_utterances"), seed)
    else:
        train_set = list(utterances)
    cache = data_cfg.get("phoneme_cache") or Path(data_cfg["vctk_root"]) / ".phonemes.json"
    options = DataOptions(phoneme_cache=Path(cache), trim_db=data_cfg.get("trim_db"),
                          max_frames=cfg["loss"].get("max_frames"))
    optim = cfg["optim"]
    batches = family.training_batches(model, train_set, optim["batch_size"], seed, rank, world, options)
    step_loss = family.training_loss(model, cfg["loss"]["terms"], cfg["loss"].get("weights"), seed, options,
                                     amp=bool(cfg.get("amp")), adversarial={**cfg["loss"], **optim})

    bert = [p for n, p in trainable.items() if n.startswith("bert.")]
    rest = [p for n, p in trainable.items() if not n.startswith("bert.")]
    groups = [g for g in ({"params": rest, "lr": optim["lr"]}, {"params": bert, "lr": optim["bert_lr"]})
              if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                  weight_decay=optim["weight_decay"])
    settings = TrainSettings(epochs=optim["epochs"], max_steps=optim.get("max_steps"),
                             grad_accum=optim.get("grad_accum", 1), max_grad_norm=optim.get("max_grad_norm"),
                             checkpoint_every=cfg.get("checkpoint_every", 50), progress=cfg.get("progress", True))
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
               "skipped_files": len(batches.dataset.report.skipped), **result}
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
