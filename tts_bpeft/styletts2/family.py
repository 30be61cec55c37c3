"""StyleTTS 2 as a `tts_bpeft.family.ModelFamily`: the integration's one entry point for the run folder,
the evaluation and the recipes.

Model settings: ``{config: official config.yml path | "tiny" | "libritts" | "ljspeech" (an official release,
fetched), checkpoint: official checkpoint | None, aux: {asr, pitch, plbert: official files | None}}``
(`tts_bpeft.styletts2.build.build_base`). Batches are
`TTSBatch` of recordings with transcripts; the losses are terms of StyleTTS 2's second-stage generator
objective (`tts_bpeft.styletts2.losses`); synthesis clones the voice of a reference recording (no built-in
voices) at 24 kHz (`tts_bpeft.styletts2.synthesize`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..family import DataOptions, PerSampleLoss, TTSModel, Voice
from ..lora import merged_state_dict
from ..speech_data.audio import SAMPLE_RATE
from ..speech_data.phonemes import Phonemizer
from ..speech_data.records import Utterance
from .adversarial import Discriminators
from .build import GENERATOR_MODULES, build_base
from .checkpoints import save_checkpoint
from .curvature import LIKELIHOOD_TERMS, styletts2_loss_fn, utterance_seed
from .data.dataset import TTSDataset, collate
from .losses import GeneratorObjective
from .presets import PRESET_DESCRIPTIONS, add_preset_lora
from .slm import load_slm
from .slm_generation import GenerationSettings
from .synthesize import InferenceSettings, Synthesizer

TRAINING_TERMS = ("mel", "f0", "norm", "dur", "ce", "diff", "sty", "mono", "s2s")
"""The fine-tuning objective's default terms: the likelihood terms plus the style and alignment terms."""


def _dataset(utterances: Sequence[Utterance], options: DataOptions | None) -> TTSDataset:
    options = options or DataOptions()
    phonemizer = Phonemizer(options.phoneme_cache) if options.phoneme_cache else None
    return TTSDataset(list(utterances), phonemizer, trim_db=options.trim_db)


class StyleTTS2Speech:
    """A StyleTTS 2 `Synthesizer` as a `tts_bpeft.family.Synthesizer`: clones ``Voice.clone`` references."""

    sample_rate = SAMPLE_RATE

    def __init__(self, synthesizer: Synthesizer) -> None:
        self.synthesizer = synthesizer

    def __call__(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        """Speech for ``text`` in the voice of ``voice.reference``: float32 (samples,) at 24 kHz."""
        if voice.reference is None:
            raise ValueError(f"StyleTTS 2 has no built-in voices (asked for {voice.name!r}); give a reference "
                             "recording to clone: Voice.clone(path)")
        return self.synthesizer(text, voice.reference, seed=seed)


class TrainingBatches:
    """``batches(epoch)`` of StyleTTS 2 fine-tuning: this process's share of each global batch of
    ``batch_size * world`` utterances (DistributedSampler, one shuffled order per epoch), as
    ``(epoch, TTSBatch)`` items. Each utterance's reference utterance and its crop are drawn per utterance
    and epoch, whatever batch or process it is in. ``dataset`` reports the files it skipped."""

    def __init__(self, dataset: TTSDataset, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.dataset, self.batch_size, self.seed, self.rank, self.world = dataset, batch_size, seed, rank, world

    def _collate(self, items: list, epoch: int) -> tuple[int, Any]:
        # the reference and its crop are drawn per utterance and epoch: the same whatever batch or process the
        # utterance is in, and whatever torch's global RNG holds (a resumed run draws them again)
        generators = [torch.Generator().manual_seed(utterance_seed(self.seed, epoch, it.path)) for it in items]
        references = [self.dataset.reference(it, g) for it, g in zip(items, generators)]
        return epoch, collate(items, references, self.dataset.ref_frames, generators)

    def __call__(self, epoch: int) -> DataLoader:
        sampler = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed)
        sampler.set_epoch(epoch)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=lambda items: self._collate(items, epoch))


class TrainingLoss:
    """``step_loss((epoch, batch))`` of `StyleTTS2Family.training_loss`: the batch mean of the objective at
    that epoch (the discriminators, if any, trained on the batch first) and the values to log, the
    discriminators' losses (``d_loss``, ``d_slm``; 0 on steps where they did not train) among them."""

    def __init__(self, model: TTSModel, objective: GeneratorObjective, discriminators: Discriminators | None,
                 seed: int, amp: bool) -> None:
        self.model, self.objective, self.discriminators, self.seed = model, objective, discriminators, seed
        self.amp = amp and objective.device.type == "cuda"

    @property
    def extra_state(self) -> dict[str, Discriminators]:
        """What `tts_bpeft.training.train` must checkpoint besides the trainable tensors."""
        return {"discriminators": self.discriminators} if self.discriminators is not None else {}

    def __call__(self, item: tuple[int, Any]) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        epoch, batch = item
        device = self.objective.device
        for key in GENERATOR_MODULES:
            self.model.net[key].train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.objective(batch.to(device), seeds=[utterance_seed(self.seed, epoch, p) for p in batch.paths],
                                 epoch=epoch, discriminators=self.discriminators)
        loss = out.total.float().mean()
        trained = {k: out.discriminator.get(k, 0.0) for k in self.discriminators.logged} if self.discriminators else {}
        # logged values stay on the device (0-dim tensors): `train` reads them back once per optimizer step
        return loss, {"loss": loss.detach(), **{k: v.detach().float().mean() for k, v in out.terms.items()},
                      **trained}


class StyleTTS2Family:
    """StyleTTS 2 (the official code, ``styletts2`` package): see the module docstring."""

    name = "styletts2"
    sample_rate = SAMPLE_RATE
    clones_voices = True

    def build(self, settings: Mapping[str, Any], device: str | torch.device = "cpu", seed: int = 0) -> TTSModel:
        """The 13-module model of ``settings`` (see the module docstring), train mode, on ``device``."""
        net, config = build_base(settings, device, seed)
        return TTSModel(self.name, net, dict(settings), config, seed)

    def presets(self) -> Mapping[str, str]:
        """`tts_bpeft.styletts2.presets`: paper, design, all."""
        return dict(PRESET_DESCRIPTIONS)

    def add_preset(self, model: TTSModel, preset: str, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
                   extra: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
        """LoRA on the preset's layers of the generator modules; returns their names."""
        return add_preset_lora(model.net, preset, r=r, alpha=alpha, dropout=dropout, extra=extra, exclude=exclude)

    def curvature_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int = 1,
                          seed: int = 0, options: DataOptions | None = None) -> Iterable[Any]:
        """`TTSBatch` batches of recordings, in a permutation drawn from ``seed``; each utterance's
        reference mel segment is drawn from the same generator."""
        dataset = _dataset(utterances, options)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        return DataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=lambda items: collate(
            items, [dataset.reference(it, generator) for it in items], dataset.ref_frames))

    def per_sample_loss(self, model: TTSModel, fisher: str = "empirical", terms: Sequence[str] | None = None,
                        seed: int = 0, options: DataOptions | None = None) -> PerSampleLoss:
        """The generator objective's ``terms`` (default `LIKELIHOOD_TERMS`) per utterance, or their Laplace
        likelihoods for ``fisher="mc"`` (`tts_bpeft.styletts2.curvature`)."""
        max_frames = (options or DataOptions()).max_frames
        objective = GeneratorObjective(model.net, model.config, terms=tuple(terms or LIKELIHOOD_TERMS),
                                       max_frames=max_frames)
        return styletts2_loss_fn(objective, fisher, seed)

    def training_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int, seed: int = 0,
                         rank: int = 0, world: int = 1, options: DataOptions | None = None
                         ) -> TrainingBatches:
        """`TrainingBatches` of the utterances."""
        return TrainingBatches(_dataset(utterances, options), batch_size, seed, rank, world)

    def training_loss(self, model: TTSModel, terms: Sequence[str] | None = None,
                      weights: Mapping[str, float] | None = None, seed: int = 0,
                      options: DataOptions | None = None, amp: bool = False,
                      adversarial: Mapping[str, Any] | None = None) -> TrainingLoss:
        """``step_loss((epoch, batch))``: the mean generator loss (default terms `TRAINING_TERMS`), generator
        modules in train mode, random draws seeded per utterance and epoch; logs the loss and every term.

        `adversarial` (the recipe's ``loss`` section plus the discriminators' AdamW settings ``lr``,
        ``betas``, ``eps``, ``weight_decay``): ``diff_epoch``, ``joint_epoch``, ``slmadv`` overrides of the
        config's ``slmadv_params``. With ``gen`` or ``slmadv`` among the terms the discriminators train inside
        each step; ``step_loss.extra_state`` holds them for the checkpoint. The WavLM of ``slm``/``slmadv`` is
        ``model.settings['slm']`` or the config's ``model_params.slm.model`` (tiny config: a random tiny one).
        """
        adversarial = dict(adversarial or {})
        terms = tuple(terms or TRAINING_TERMS)
        slm = None
        if {"slm", "slmadv"} & set(terms):
            slm = load_slm(model.config["model_params"]["slm"], source=model.settings.get("slm"),
                           sample_rate=model.config.get("preprocess_params", {}).get("sr", SAMPLE_RATE),
                           tiny=model.settings.get("config", "tiny") == "tiny")
            slm.to(next(model.net["decoder"].parameters()).device)
        generation = GenerationSettings.from_config(model.config, adversarial.get("slmadv"))
        objective = GeneratorObjective(model.net, model.config, terms=terms, weights=weights,
                                       max_frames=(options or DataOptions()).max_frames, slm=slm,
                                       diff_epoch=adversarial.get("diff_epoch", 0),
                                       joint_epoch=adversarial.get("joint_epoch", 0), generation=generation)
        discriminators = None
        if {"gen", "slmadv"} & set(terms):
            optim = {k: adversarial[k] for k in ("lr", "eps", "weight_decay") if k in adversarial}
            if "betas" in adversarial:
                optim["betas"] = tuple(adversarial["betas"])
            discriminators = Discriminators(model.net, slm if "slmadv" in terms else None, slm_every=generation.iter,
                                            **optim)
        return TrainingLoss(model, objective, discriminators, seed, amp)

    def synthesizer(self, model: TTSModel, settings: Mapping[str, Any] | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    phoneme_cache: str | os.PathLike | None = None) -> StyleTTS2Speech:
        """Zero-shot synthesis with the official inference (`InferenceSettings` from ``settings``)."""
        phonemizer = Phonemizer(str(phoneme_cache)) if phoneme_cache else None
        synth = Synthesizer.from_config(model.net, model.config, phonemizer=phonemizer,
                                        settings=InferenceSettings(**dict(settings or {})), device=device, seed=seed)
        return StyleTTS2Speech(synth)

    def voices(self, model: TTSModel) -> tuple[str, ...]:
        """None: StyleTTS 2 clones reference recordings."""
        return ()

    def export(self, model: TTSModel, path: str | os.PathLike) -> Path:
        """An official StyleTTS 2 checkpoint (``{'net': {module: state}}``, ``module.`` prefixes), adapters
        merged exactly (also into weight-normed layers): loadable by the original code's inference."""
        merged = merged_state_dict(model.net)
        plain = self.build(model.settings, next(iter(model.net["decoder"].parameters())).device, model.seed).net
        for key, module in plain.items():
            module.load_state_dict({k[len(key) + 1:]: v for k, v in merged.items() if k.startswith(key + ".")})
        return save_checkpoint(plain, path)

