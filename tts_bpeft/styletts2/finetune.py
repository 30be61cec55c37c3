"""Fine-tuning StyleTTS 2 on one target speaker: LoRA (+ Laplace prior), or the reference's baselines.

Systems (``system``):

- ``lora``: LoRA on a preset (`tts_bpeft.styletts2.presets`), base frozen, with the prior ``none``,
  ``l2sp``, ``ewc``, ``kfac`` or ``ekfac`` (global lam and per-layer patterns, damping, a mixed-in form; the
  curvature file of the base model; see `tts_bpeft.prior.load_prior`);
- ``full``: every weight of the generator modules trained (the reference's full fine-tuning);
- ``linear``: the weights and biases of every nn.Linear in the paper preset's modules trained
  (the reference's "Linear-only" fine-tuning).

The objective is StyleTTS 2's second-stage generator loss (`tts_bpeft.styletts2.losses`); the optimiser
the reference's: AdamW, betas (0, 0.99), eps 1e-9, weight decay 1e-4, constant lr 1e-4 (1e-5 for PL-BERT).
A run folder holds ``run.json`` (resolved settings), ``checkpoint.pt`` (resumable), ``log.csv``, and the
result: ``adapter/`` (peft files) for LoRA or ``trainable.safetensors`` for the baselines.
`load_run` rebuilds the fine-tuned model from a run folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from munch import Munch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader, DistributedSampler

from ..io import save_json, save_safetensors
from ..lora import load_adapter, merged_state_dict, save_adapter
from ..prior import LaplacePrior, load_prior
from ..training import TrainSettings, train
from .curvature import LIKELIHOOD_TERMS, utterance_seed
from .data.dataset import TTSDataset, collate
from .data.records import Utterance
from .data.selection import split_per_speaker
from .data.text import Phonemizer
from .data.vctk import read_vctk
from .losses import GeneratorObjective
from .model import GENERATOR_MODULES, TINY_CONFIG, build_styletts2, load_checkpoint, load_config, save_checkpoint
from .presets import PRESETS, add_preset_lora

SYSTEMS = ("lora", "full", "linear")


def _plain(cfg: Any) -> Any:
    """A hydra/OmegaConf config (or plain dict) as plain Python containers."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build_base(model_cfg: Mapping[str, Any], device: str | torch.device = "cpu", seed: int = 0
               ) -> tuple[Munch, dict[str, Any]]:
    """The pre-trained StyleTTS 2 of a run: ``model_cfg = {config: path | "tiny", checkpoint: path | None,
    aux: {asr, pitch, plbert}: paths | None}``. Returns (model, official config dict)."""
    config = load_config(TINY_CONFIG if model_cfg.get("config", "tiny") == "tiny" else model_cfg["config"])
    aux = {k: v for k, v in (model_cfg.get("aux") or {}).items() if v}
    torch.manual_seed(seed)
    model = build_styletts2(config, device=device, aux_checkpoints=aux)
    if model_cfg.get("checkpoint"):
        load_checkpoint(model, model_cfg["checkpoint"])
    return model, config


def target_splits(data_cfg: Mapping[str, Any], speaker: str, train_utterances: int | None, seed: int = 0):
    """Train / val / test utterances of the target speaker (disjoint; test first, then val, then train)."""
    corpus = read_vctk(data_cfg["vctk_root"], speakers=[speaker], mic=data_cfg.get("mic", "mic1"), seed=seed)
    splits = split_per_speaker(corpus.utterances, val=data_cfg.get("val_utterances", 5),
                               test=data_cfg.get("test_utterances", 20), seed=seed)
    train_set = splits.train[:train_utterances] if train_utterances else splits.train
    if not train_set:
        raise ValueError(f"speaker {speaker}: no training utterances left in {data_cfg['vctk_root']}")
    return train_set, splits.val, splits.test


def configure_system(model: Munch, cfg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Freeze the model, then make the system's parameters trainable; returns them by name."""
    system = cfg["system"]
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    if system != "lora" and cfg["prior"]["kind"] != "none":
        raise ValueError(f"the prior acts on LoRA weight shifts; system {system!r} needs prior=none")
    for module in model.values():
        module.requires_grad_(False)
    if system == "lora":
        lora = cfg["lora"]
        add_preset_lora(model, lora["preset"], r=lora["r"], alpha=lora["alpha"], dropout=lora.get("dropout", 0.0),
                        extra=lora.get("extra") or [], exclude=lora.get("exclude") or [])
        return {f"{key}.{n}": p for key in GENERATOR_MODULES for n, p in model[key].named_parameters()
                if ".lora_" in f".{n}"}
    if system == "full":
        chosen = {f"{key}.{n}": p for key in GENERATOR_MODULES for n, p in model[key].named_parameters()}
    else:
        paper = re.compile(PRESETS["paper"][0][1])
        chosen = {".".join(filter(None, (key, mn, n))): p for key in GENERATOR_MODULES
                  for mn, m in model[key].named_modules()
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
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_json(cfg, out_dir / "run.json")
    model, config = build_base(cfg["model"], device, seed)
    trainable = configure_system(model, cfg)
    prior = build_prior(model, cfg["prior"])

    data_cfg = cfg["data"]
    if utterances is None:
        train_set, _, _ = target_splits(data_cfg, cfg["speaker"], cfg.get("train_utterances"), seed)
    else:
        train_set = list(utterances)
    cache = data_cfg.get("phoneme_cache") or str(Path(data_cfg["vctk_root"]) / ".phonemes.json")
    dataset = TTSDataset(train_set, Phonemizer(cache), trim_db=data_cfg.get("trim_db"))
    optim = cfg["optim"]

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    def batches(epoch: int) -> DataLoader:
        """This process's share of the epoch: each global batch of ``batch_size * world`` utterances is split
        across the processes (DistributedSampler), one shuffled order per epoch."""
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)

        def collate_epoch(items):
            # the reference and its crop are drawn per utterance and epoch: the same whatever batch or process
            # the utterance is in, and whatever torch's global RNG holds (a resumed run draws them again)
            generators = [torch.Generator().manual_seed(utterance_seed(seed, epoch, it.path)) for it in items]
            references = [dataset.reference(it, g) for it, g in zip(items, generators)]
            return epoch, collate(items, references, dataset.ref_frames, generators)
        return DataLoader(dataset, batch_size=optim["batch_size"], sampler=sampler, collate_fn=collate_epoch)

    objective = GeneratorObjective(model, config, terms=cfg["loss"]["terms"], weights=cfg["loss"].get("weights"),
                                   max_frames=cfg["loss"].get("max_frames"))
    amp = bool(cfg.get("amp")) and device.type == "cuda"

    def step_loss(item: tuple[int, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        epoch, batch = item
        for key in GENERATOR_MODULES:
            model[key].train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = objective(batch.to(device), seeds=[utterance_seed(seed, epoch, p) for p in batch.paths])
        loss = out.total.float().mean()
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach().mean()) for k, v in out.terms.items()}}

    bert = [p for n, p in trainable.items() if n.startswith("bert.")]
    rest = [p for n, p in trainable.items() if not n.startswith("bert.")]
    groups = [g for g in ({"params": rest, "lr": optim["lr"]}, {"params": bert, "lr": optim["bert_lr"]})
              if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                  weight_decay=optim["weight_decay"])
    settings = TrainSettings(epochs=optim["epochs"], max_steps=optim.get("max_steps"),
                             grad_accum=optim.get("grad_accum", 1), max_grad_norm=optim.get("max_grad_norm"),
                             checkpoint_every=cfg.get("checkpoint_every", 50), progress=cfg.get("progress", True))
    buffers = {f"{key}.{name}": b for key, module in model.items() for name, b in module.named_buffers()}
    result = train(trainable, optimizer, batches, step_loss, out_dir, settings,
                   penalty=(lambda: prior.penalty(model)) if prior is not None else None, buffers=buffers)
    if rank != 0:
        return result
    if cfg["system"] == "lora":
        save_adapter(model, out_dir / "adapter")
    else:
        save_safetensors(dict(trainable), out_dir / "trainable.safetensors")
    summary = {"speaker": cfg["speaker"], "system": cfg["system"], "prior": cfg["prior"]["kind"],
               "lam": cfg["prior"]["lam"], "train_utterances": len(train_set),
               "trainable_parameters": sum(p.numel() for p in trainable.values()),
               "skipped_files": len(dataset.report.skipped), **result}
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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Munch, dict[str, Any], dict]:
    """The fine-tuned model of a run folder: (model, official config, the run's settings)."""
    run_dir = Path(run_dir)
    settings_path = run_dir / "run.json"
    if not settings_path.is_file():
        raise FileNotFoundError(f"{settings_path}: missing; not a fine-tuning run folder")
    cfg = json.loads(settings_path.read_text())
    model, config = build_base(cfg["model"], device, int(cfg.get("seed", 0)))
    if cfg["system"] == "lora":
        load_adapter(model, run_dir / "adapter")
    else:
        weights = load_file(str(run_dir / "trainable.safetensors"))
        for name, value in weights.items():
            key, rest = name.split(".", 1)
            model[key].get_parameter(rest).data.copy_(value.to(device))
    for module in model.values():
        module.eval()
    return model, config, cfg



def export_checkpoint(run_dir: str | Path, path: str | Path, device: str | torch.device = "cpu") -> Path:
    """The fine-tuned model of a run as a plain official StyleTTS 2 checkpoint (adapters merged exactly, also
    into weight-normed layers), loadable by the original code's ``load_checkpoint`` and inference."""
    model, _, cfg = load_run(run_dir, device)
    merged = merged_state_dict(model)
    plain, _ = build_base(cfg["model"], device, int(cfg.get("seed", 0)))
    for key, module in plain.items():
        module.load_state_dict({k[len(key) + 1:]: v for k, v in merged.items() if k.startswith(key + ".")})
    return save_checkpoint(plain, path)
