"""Fine-tuning a new Kokoro voice: LoRA and the voice's style shift learned together, with a Laplace prior
(or L2-SP, or none), optionally mixing self-replay examples of the built-in voices into the same steps.

:func:`finetune_voice` is the one entry. Given a ``KModel`` that carries LoRA (`tts_bpeft.kokoro.presets`;
without adapters only the voice learns), the new speaker's examples (`tts_bpeft.kokoro.examples`) and the
initial voicepack their styles come from, it trains through `tts_bpeft.training.train` (resumable
bit-exactly from ``checkpoint.pt``, a progress bar, ``log.csv``):

- trainable: every LoRA factor (AdamW at ``lr``) and the voice shift ``delta`` (256,) of
  `tts_bpeft.kokoro.voice.VoiceShift` (AdamW at ``style_lr``, no weight decay); everything else frozen;
- objective: `tts_bpeft.kokoro.voice_loss.VoiceObjective`, the batch mean, in train mode (dropout on, as
  StyleTTS 2 trains), plus ``prior.penalty`` once per step;
- data (:class:`VoiceBatches`): each epoch the target examples in an order drawn from the seed and the
  epoch; with :class:`Replay` (fraction f), ``round(n f / (1 - f))`` replay examples join each epoch's n
  target examples, shuffled together, so that a fraction f of all examples trained on are replay: the
  step budget (``steps``) is the same with and without replay (equal compute). Each epoch's batches are
  collated with a seed drawn from (seed, epoch): crops and the decoder's random source change per epoch.

Outputs in ``out_dir`` (all written atomically): ``adapter/`` (peft layout, `tts_bpeft.save_adapter`),
``voice.pt`` (the new voicepack [510, 1, 256], Kokoro's ``voices/<name>.pt`` format), and with
``export=True`` the merged checkpoint ``kokoro-v1_0.pth`` (Kokoro's format, adapters merged exactly) next to
``config.json``: ``kokoro.KModel(config="config.json", model="kokoro-v1_0.pth")`` speaks the new voice with
``voice.pt`` in Kokoro's own pipeline. ``summary.json`` holds the step count, time and the last losses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tts_bpeft.curvature import utterance_seed
from tts_bpeft.io import save_json
from tts_bpeft.kokoro.checkpoint import save_kokoro_checkpoint
from tts_bpeft.kokoro.predict import KokoroBatch, KokoroUtterance, collate
from tts_bpeft.kokoro.voice import VoiceShift
from tts_bpeft.kokoro.voice_loss import VoiceObjective
from tts_bpeft.lora import merged_state_dict, save_adapter
from tts_bpeft.prior import LaplacePrior
from tts_bpeft.training import TrainSettings, train

ADAPTER = "adapter"
VOICEPACK = "voice.pt"
CHECKPOINT = "kokoro-v1_0.pth"
CONFIG = "config.json"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class VoiceTraining:
    """How to train: ``steps`` optimizer steps of ``batch_size`` examples; AdamW (betas, eps) at ``lr`` for
    LoRA (``weight_decay``) and ``style_lr`` for the voice shift (no decay); gradients clipped to
    ``max_grad_norm`` (None: not clipped); a checkpoint every ``checkpoint_every`` steps."""

    steps: int = 200
    batch_size: int = 2
    lr: float = 5e-4
    style_lr: float = 5e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: must be an integer >= 1")
        for name in ("lr", "style_lr", "weight_decay", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} = {value!r}: must be a finite number >= 0")


@dataclass(frozen=True)
class Replay:
    """Self-replay: ``examples`` spoken by built-in voices (`tts_bpeft.kokoro.examples.replay_examples`)
    making up the fraction ``fraction`` (0 <= f < 1) of all examples trained on."""

    examples: Sequence[KokoroUtterance]
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.fraction < 1.0):
            raise ValueError(f"replay fraction = {self.fraction!r}: must be in [0, 1)")
        if self.fraction > 0 and not self.examples:
            raise ValueError("replay fraction > 0 needs replay examples")
        if any(e.new_voice for e in self.examples):
            raise ValueError("replay examples speak built-in voices (new_voice=False); got new-voice examples")


class VoiceBatches:
    """``batches(epoch)`` for `tts_bpeft.training.train`: the epoch's target (and replay) examples, shuffled
    by a generator seeded from (seed, epoch), in batches of ``batch_size`` (the last may be smaller),
    collated with the seed ``utterance_seed(seed, "epoch", epoch)`` (module docstring). No global random
    state is used."""

    def __init__(self, examples: Sequence[KokoroUtterance], batch_size: int, seed: int = 0,
                 replay: Replay | None = None, crop_frames: int | None = None) -> None:
        if not examples:
            raise ValueError("no training examples")
        if not all(e.new_voice for e in examples):
            raise ValueError("the target examples must speak the new voice (new_voice=True; "
                             "tts_bpeft.kokoro.examples.recording_examples)")
        everything = [*examples, *(replay.examples if replay else ())]
        short = [e.key for e in everything if e.targets is None or (crop_frames and e.targets.frames < crop_frames)]
        if short:
            raise ValueError(f"examples {short[:5]} have no targets or fewer aligned frames than a crop of "
                             f"{crop_frames} (25 ms each); use a smaller objective crop_frames or longer sentences")
        self.examples, self.batch_size, self.seed, self.replay = list(examples), batch_size, seed, replay

    def replay_count(self) -> int:
        """Replay examples per epoch: ``round(n f / (1 - f))`` for n target examples."""
        if self.replay is None or self.replay.fraction == 0:
            return 0
        return round(len(self.examples) * self.replay.fraction / (1.0 - self.replay.fraction))

    def epoch_examples(self, epoch: int) -> list[KokoroUtterance]:
        """The examples of `epoch`, in training order."""
        generator = torch.Generator().manual_seed(utterance_seed(self.seed, "epoch order", epoch))
        chosen = list(self.examples)
        count = self.replay_count()
        if count:
            pool = list(self.replay.examples)
            start = epoch * count  # replay examples cycle through a fixed order, so every one gets its turn
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(
                utterance_seed(self.seed, "replay order")))
            chosen += [pool[int(order[(start + j) % len(pool)])] for j in range(count)]
        return [chosen[int(i)] for i in torch.randperm(len(chosen), generator=generator)]

    def __call__(self, epoch: int) -> list[KokoroBatch]:
        examples = self.epoch_examples(epoch)
        seed = utterance_seed(self.seed, "epoch", epoch)
        return [collate(examples[i:i + self.batch_size], seed) for i in range(0, len(examples), self.batch_size)]


class VoiceStepLoss:
    """``step_loss(batch)`` for `tts_bpeft.training.train`: the batch mean of the objective with the voice
    shift applied to the new-voice samples, the model in train mode. Logs ``loss``, each term's batch mean,
    and the mean objective of the batch's ``target`` and ``replay`` samples (when it has any)."""

    def __init__(self, model: nn.Module, voice: VoiceShift, objective: VoiceObjective) -> None:
        self.model, self.voice, self.objective = model, voice, objective

    @property
    def trainable(self) -> dict[str, Tensor]:
        """What the step trains besides the model's LoRA factors: the voice shift, by name."""
        return {"voice.delta": self.voice.delta}

    def __call__(self, batch: KokoroBatch) -> tuple[Tensor, dict[str, float]]:
        self.model.train()
        batch = replace(batch, styles=self.voice.shifted(batch.styles.to(self.voice.delta.device), batch.new_voice))
        terms = self.objective.terms_of(self.model, batch)
        per_sample = self.objective.total(terms)
        loss = per_sample.mean()
        values = {"loss": float(loss.detach()), **{k: float(v.detach().mean()) for k, v in terms.items()}}
        new_voice = batch.new_voice.to(per_sample.device)
        for name, mask in (("target", new_voice), ("replay", ~new_voice)):
            if mask.any():
                values[name] = float(per_sample.detach()[mask].mean())
        return loss, values


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's LoRA factors by name (``...lora_A...``, ``...lora_B...``)."""
    return {name: p for name, p in model.named_parameters() if ".lora_" in f".{name}"}


@dataclass
class VoiceResult:
    """What :func:`finetune_voice` made: the learned ``voice``, the written files (None when not written)
    and the ``summary`` (also in ``summary.json``)."""

    voice: VoiceShift
    voicepack: Path
    adapter: Path | None
    checkpoint: Path | None
    summary: dict[str, Any]


def finetune_voice(model: nn.Module, examples: Sequence[KokoroUtterance], initial_voicepack: Tensor,
                   out_dir: str | os.PathLike, settings: VoiceTraining = VoiceTraining(),
                   objective: VoiceObjective | None = None, prior: LaplacePrior | None = None,
                   replay: Replay | None = None, config: Mapping[str, Any] | None = None, export: bool = True,
                   base_model: str = "kokoro", resume: bool = True) -> VoiceResult:
    """Learn a new voice (module docstring) into `out_dir`; rerunning it there resumes from ``checkpoint.pt``.

    Args:
        model: a ``KModel`` with LoRA on the layers to adapt (changed in place: the LoRA factors train).
        examples: the new speaker's examples (``new_voice=True``), their styles rows of `initial_voicepack`.
        initial_voicepack: [510, 1, 256], the voice the new one starts from.
        settings: steps, batch size, learning rates, seed.
        objective: terms, weights and crop length of the loss (None: `VoiceObjective()`).
        prior: `tts_bpeft.load_prior`'s prior on the LoRA shift (None: plain LoRA).
        replay: self-replay examples and their fraction.
        config: the model's ``config.json`` dict, written next to the merged checkpoint.
        export: write the merged checkpoint (325 MB for Kokoro-82M) and `config`.
        base_model: what the adapter applies to (``base_model_name_or_path`` in its config).
    """
    objective = objective or VoiceObjective()
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    voice = VoiceShift(initial_voicepack).to(device)
    model.requires_grad_(False)
    lora = lora_parameters(model)
    for p in lora.values():
        p.requires_grad_(True)
    step_loss = VoiceStepLoss(model, voice, objective)
    trainable = {**lora, **step_loss.trainable}
    groups = [{"params": list(lora.values()), "lr": settings.lr, "weight_decay": settings.weight_decay},
              {"params": [voice.delta], "lr": settings.style_lr, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=settings.betas, eps=settings.eps)
    batches = VoiceBatches(examples, settings.batch_size, settings.seed, replay,
                           objective.crop_frames if {"f0", "energy", "mel"} & set(objective.terms) else None)
    per_epoch = len(batches(0))
    train_settings = TrainSettings(epochs=math.ceil(settings.steps / per_epoch), max_steps=settings.steps,
                                   max_grad_norm=settings.max_grad_norm, checkpoint_every=settings.checkpoint_every,
                                   progress=settings.progress)
    torch.manual_seed(settings.seed)  # dropout's draws; checkpointed with the RNG state, so resuming is exact
    result = train(trainable, optimizer, batches, step_loss, out_dir, train_settings,
                   penalty=(lambda: prior.penalty(model)) if prior is not None else None, resume=resume)
    model.eval()
    voicepack = voice.save(out_dir / VOICEPACK)
    adapter = save_adapter(model, out_dir / ADAPTER, base_model_name_or_path=base_model) if lora else None
    checkpoint = None
    if export:
        checkpoint = save_kokoro_checkpoint(merged_state_dict(model), out_dir / CHECKPOINT)
        if config is not None:
            save_json(dict(config), out_dir / CONFIG)
    summary = {"steps": result["steps"], "seconds": result["seconds"], "last": result["last"],
               "history": result["history"], "target_examples": len(examples),
               "replay_examples_per_epoch": batches.replay_count(),
               "trainable_parameters": sum(p.numel() for p in trainable.values()),
               "style_shift_norm": float(voice.delta.detach().norm())}
    save_json(summary, out_dir / SUMMARY)
    return VoiceResult(voice, voicepack, adapter, checkpoint, summary)
