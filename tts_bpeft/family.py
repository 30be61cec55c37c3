"""The model-family interface: what the run folder, the evaluation and the recipes need from a TTS family.

A family is an integration package (``tts_bpeft.styletts2``, ``tts_bpeft.kokoro``) that implements
:class:`ModelFamily`; everything above the families (`tts_bpeft.runs`, `tts_bpeft.eval`, the recipes)
talks to this interface and gets a family by name from :func:`family`, which imports the family's code
only when asked (the evaluation never imports a model's heavy code for runs it does not synthesize).

Units and shapes used throughout:

- waves: float32 numpy arrays (samples,), mono, in [-1, 1], at the family's ``sample_rate`` (24 kHz for
  StyleTTS 2 and Kokoro);
- a built model is a :class:`TTSModel`: ``net`` is what the core takes (`tts_bpeft.add_lora`,
  `tts_bpeft.estimate_curvature`, `tts_bpeft.LaplacePrior`, `tts_bpeft.save_adapter`): an ``nn.Module`` or
  a dict of them (StyleTTS 2's 13-module ``Munch``), named so that ``"<module>.<parameter>"`` is unique;
- model settings (``TTSModel.settings``, the ``model:`` group of a recipe and of a run's ``run.json``) are
  plain JSON-ready dicts whose keys the family defines (StyleTTS 2: ``{config, checkpoint, aux}``);
- batches are the family's own objects; the losses it returns take them.

The per-sample loss (:meth:`ModelFamily.per_sample_loss`) is the ``loss_fn(net, batch)`` of
`tts_bpeft.estimate_curvature`: one loss per sample, shape (B,), for the empirical Fisher, or the
likelihood terms (`tts_bpeft.curvature.Likelihood`) of the model's outputs for the Monte-Carlo Fisher.
Fine-tuning minimises the same per-sample losses' batch mean (plus the prior).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from .curvature import Curvature, Likelihood, estimate_curvature
from .speech_data.records import Utterance

ModelNet = nn.Module | MutableMapping[str, nn.Module]
"""A model as the core sees it: one module or a dict of named modules."""

PerSampleLoss = Callable[[ModelNet, Any], Tensor | Sequence[Likelihood]]
"""``loss_fn(net, batch)``: per-sample losses (B,) or the likelihood terms of the batch's outputs."""

@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: ``implementation``, the ``"module:Class"`` implementing :class:`ModelFamily`
    (imported on first use); ``model_paths``, the dotted keys of its model settings that hold file paths
    (made absolute against the folder they were written from, `tts_bpeft.runs.resolve_paths`; known
    without importing the family)."""

    implementation: str
    model_paths: tuple[str, ...] = ()


FAMILIES: dict[str, FamilyEntry] = {
    "styletts2": FamilyEntry("tts_bpeft.styletts2.family:StyleTTS2Family",
                             ("config", "checkpoint", "aux.asr", "aux.pitch", "aux.plbert")),
    "kokoro": FamilyEntry("tts_bpeft.kokoro.family:KokoroFamily", ("config", "checkpoint")),
}
"""Family name -> its entry."""


@dataclass
class TTSModel:
    """A built model of one family.

    ``family``: the family's registry name; ``net``: the modules (see the module docstring); ``settings``:
    the model settings it was built from (JSON-ready; rebuilding from them gives the same base model);
    ``config``: the family's own model description (StyleTTS 2: the official config dict), never written
    by the caller; ``seed``: the seed random weights were drawn with (builds without a checkpoint).
    """

    family: str
    net: ModelNet
    settings: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def modules(self) -> Iterable[nn.Module]:
        """The model's top-level modules (one for an ``nn.Module`` net)."""
        return self.net.values() if isinstance(self.net, Mapping) else (self.net,)

    def eval(self) -> TTSModel:
        """Every module in eval mode (no dropout); returns self."""
        for module in self.modules():
            module.eval()
        return self


@dataclass(frozen=True)
class Voice:
    """The voice to speak in: a family's built-in voice by ``name`` (Kokoro's voicepacks), or a
    ``reference`` recording to clone zero-shot (StyleTTS 2). Exactly one of the two is set."""

    name: str | None = None
    reference: Path | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.reference is None):
            raise ValueError(f"a Voice is a built-in name or a reference recording, exactly one; got {self}")
        if self.reference is not None:
            object.__setattr__(self, "reference", Path(self.reference))

    @classmethod
    def builtin(cls, name: str) -> Voice:
        """A family's built-in voice (see :meth:`ModelFamily.voices`)."""
        return cls(name=name)

    @classmethod
    def clone(cls, reference: str | os.PathLike) -> Voice:
        """The voice of a reference recording (any sample rate and channel count the family can read)."""
        return cls(reference=Path(reference))

    def describe(self) -> str:
        """``voice:<name>`` or ``reference:<absolute path>``: a stable text for hashes and tables."""
        return f"voice:{self.name}" if self.name is not None else f"reference:{Path(self.reference).resolve()}"


@dataclass(frozen=True)
class DataOptions:
    """How a family turns utterances into batches: ``phoneme_cache``, a json file of espeak phonemes per
    text (`tts_bpeft.speech_data.phonemes.Phonemizer`; None: no cache); ``trim_db``, leading and trailing
    silence quieter than this many dB below the peak is cut (None: kept); ``max_frames``, the longest
    segment (mel frames of 12.5 ms) a loss decodes (None: the model config's own limit). Options
    given as None mean these defaults."""

    phoneme_cache: Path | None = None
    trim_db: float | None = None
    max_frames: int | None = None


@runtime_checkable
class Synthesizer(Protocol):
    """Text-to-speech with one built model: ``synth(text, voice, seed)`` -> wave (samples,) at
    ``sample_rate`` Hz. Every random draw comes from ``seed``: the same call gives the same wave."""

    sample_rate: int

    def __call__(self, text: str, voice: Voice, seed: int) -> np.ndarray: ...


@runtime_checkable
class ModelFamily(Protocol):
    """A TTS model family: build, adapt, measure, fine-tune and synthesize.

    ``name`` is its registry name (the ``family`` field of a run's ``run.json``); ``sample_rate`` the rate
    of its waves in Hz; ``clones_voices``: True when :meth:`synthesizer` accepts ``Voice.clone``
    references (zero-shot cloning), False when it speaks only its built-in :meth:`voices`.
    """

    name: str
    sample_rate: int
    clones_voices: bool

    def build(self, settings: Mapping[str, Any], device: str | torch.device = "cpu", seed: int = 0) -> TTSModel:
        """The pre-trained model the settings name (random weights where they name no checkpoint, drawn
        after ``torch.manual_seed(seed)``), every module in train mode on ``device``, no adapter."""
        ...

    def presets(self) -> Mapping[str, str]:
        """LoRA presets: name -> one line saying which layers it adapts."""
        ...

    def add_preset(self, model: TTSModel, preset: str, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
                   extra: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
        """Add LoRA (through `tts_bpeft.add_lora`) to the layers of ``preset`` plus the name patterns
        ``extra``, minus ``exclude``; returns the adapted layer names. ``model.net`` is changed in place."""
        ...

    def curvature_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int = 1,
                          seed: int = 0, options: DataOptions | None = None) -> Iterable[Any]:
        """The batches the pre-training Fisher is measured on, in an order fixed by ``seed``. ``utterances``:
        recordings with transcripts (StyleTTS 2: LibriTTS), or, for a family whose pre-training data is not
        public, texts whose ``speaker`` names a built-in voice and whose ``path`` is empty (Kokoro: the
        model's own outputs are the targets)."""
        ...

    def per_sample_loss(self, model: TTSModel, fisher: str = "empirical", terms: Sequence[str] | None = None,
                        seed: int = 0, options: DataOptions | None = None) -> PerSampleLoss:
        """The ``loss_fn(net, batch)`` of `tts_bpeft.estimate_curvature` for :meth:`curvature_batches`:
        ``fisher="empirical"``: per-sample losses (B,) of the likelihood ``terms`` (None: the family's
        default likelihood terms); ``fisher="mc"``: their likelihood terms, from which targets are sampled.
        Random draws inside the loss (noise, segments) depend on ``seed`` and the sample, not on the batch."""
        ...

    def training_batches(self, model: TTSModel, utterances: Sequence[Utterance], batch_size: int, seed: int = 0,
                         rank: int = 0, world: int = 1, options: DataOptions | None = None
                         ) -> Callable[[int], Iterable[Any]]:
        """``batches(epoch)`` for `tts_bpeft.training.train`: this process's share (``rank`` of ``world``
        processes, ``batch_size`` samples each per step) of the epoch, in an order drawn from ``seed`` and
        the epoch. Items are whatever :meth:`training_loss` takes."""
        ...

    def training_loss(self, model: TTSModel, terms: Sequence[str] | None = None,
                      weights: Mapping[str, float] | None = None, seed: int = 0,
                      options: DataOptions | None = None, amp: bool = False
                      ) -> Callable[[Any], tuple[Tensor, dict[str, float]]]:
        """``step_loss(item)`` for `tts_bpeft.training.train`: the batch mean of the fine-tuning objective
        (the loss ``terms`` with ``weights``; None: the family's defaults) as a scalar tensor, and the
        values to log (floats, ``"loss"`` among them). Modules are put in train mode; with ``amp``, bf16
        autocast on a GPU."""
        ...

    def synthesizer(self, model: TTSModel, settings: Mapping[str, Any] | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    phoneme_cache: str | os.PathLike | None = None) -> Synthesizer:
        """Speech from ``model`` (eval mode) with the family's inference ``settings`` (None: its defaults;
        StyleTTS 2: alpha, beta, diffusion_steps, embedding_scale, reference_trim_db, max_token_frames)."""
        ...

    def voices(self, model: TTSModel) -> tuple[str, ...]:
        """Names of the model's built-in voices (empty for a family that only clones references)."""
        ...

    def export(self, model: TTSModel, path: str | os.PathLike) -> Path:
        """Write ``model`` with its adapters merged exactly into the weights, in the family's official
        checkpoint format (loadable by the original code), atomically; returns the path."""
        ...


def _entry(name: str) -> FamilyEntry:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family(name: str) -> ModelFamily:
    """The family registered as ``name`` (see :data:`FAMILIES`), its module imported now."""
    module_name, class_name = _entry(name).implementation.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(f"model family {name!r} needs {module_name}, which cannot be imported: {err}") from err
    return getattr(module, class_name)()


def model_paths(name: str) -> tuple[str, ...]:
    """The dotted keys of family ``name``'s model settings that hold file paths (no import of the family)."""
    return _entry(name).model_paths


def estimate_pretraining_curvature(model_family: ModelFamily, model: TTSModel, utterances: Sequence[Utterance],
                                   method: str = "kfac", fisher: str = "empirical", kfac_approx: str = "expand",
                                   terms: Sequence[str] | None = None, batch_size: int = 1, mc_samples: int = 1,
                                   options: DataOptions | None = None, seed: int = 0, description: str = "",
                                   progress: bool = True) -> Curvature:
    """The curvature of ``model``'s LoRA targets on pre-training ``utterances``: the family's
    :meth:`~ModelFamily.curvature_batches` and :meth:`~ModelFamily.per_sample_loss` given to
    `tts_bpeft.estimate_curvature` (adapters disabled while measuring, modules in eval mode, no dropout).

    The model must carry LoRA (:meth:`ModelFamily.add_preset`), whose targets name the curvature's layers.
    ``method``: ``"kfac"``, ``"ewc"`` or ``"ekfac"``; ``fisher``: ``"empirical"`` or ``"mc"`` (``mc_samples``
    sampled targets per sample); ``terms``: the likelihood terms (None: the family's).
    """
    batches = model_family.curvature_batches(model, utterances, batch_size, seed, options)
    loss_fn = model_family.per_sample_loss(model, fisher, terms, seed, options)
    return estimate_curvature(model.net, batches, loss_fn, method=method, fisher=fisher, kfac_approx=kfac_approx,
                              mc_samples=mc_samples, mode="eval", seed=seed, progress=progress,
                              description=description or f"{len(utterances)} utterances, terms {terms}")
