"""The full-size models, their data and their losses, shared by the full-scale benchmarks
(`curvature_size.py`, `fullscale_speed.py`).

- StyleTTS 2: the official LibriTTS config (`tts_bpeft.styletts2.build.OFFICIAL_CONFIGS`), random weights (the
  aligner and PL-BERT sized by the package's stock Utils configs, as without the official Utils files); one
  synthetic LibriTTS-layout utterance (flite/espeak-ng, `tts_bpeft.speech_data.synthetic.make_libritts`) cut to
  `max_frames` mel frames (12.5 ms). Curvature loss: the likelihood terms (empirical Fisher); fine-tuning
  loss: the default training terms without discriminators or WavLM.
- Kokoro-82M: the converted offline weights when the packages are installed, else its real architecture with
  random weights; built-in voices speaking English sentences; the own-output MC likelihood on decoder crops
  of `max_frames // 2` aligned frames serves both as the curvature loss and as the fine-tuning step's loss
  (the same forward and backward path: PL-BERT, predictor, decoder on a crop).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tts_bpeft.family import DataOptions, TTSModel, family

MODELS = ("styletts2", "kokoro")
PRESETS = ("paper", "design", "all")
DATA_DIR = Path("/tmp/tts_bpeft_fullscale")
SENTENCES = ("The quick brown fox jumps over the lazy dog near the river bank.",
             "She sells sea shells by the sea shore every summer morning.",
             "A journey of a thousand miles begins with a single step forward.",
             "Please call Stella and ask her to bring these things with her from the store.")


@dataclass
class FullScale:
    """A full-size model with LoRA on a preset, its data and losses: ``curvature_batches`` and ``loss_fn`` for
    `tts_bpeft.estimate_curvature` (``fisher``), ``train_items`` and ``step_loss(item) -> scalar`` for a
    fine-tuning step, and ``description`` (what was built)."""

    model: TTSModel
    curvature_batches: list[Any]
    loss_fn: Callable[[Any, Any], Any]
    fisher: str
    train_items: list[Any]
    step_loss: Callable[[Any], Tensor]
    description: str


def build(model_name: str, preset: str, utterances: int = 1, max_frames: int = 160, r: int = 16,
          device: str = "cpu", tiny: bool = False) -> FullScale:
    """The full-size `model_name` with LoRA (rank `r`) on `preset` and `utterances` short utterances
    (`tiny`: StyleTTS 2's tiny test build instead, to check a script's code paths in seconds)."""
    warnings.filterwarnings("ignore")
    if model_name == "styletts2":
        return _styletts2(preset, utterances, max_frames, r, device, tiny)
    if tiny:
        raise ValueError("only StyleTTS 2 has a tiny build")
    if model_name == "kokoro":
        return _kokoro(preset, utterances, max_frames, r, device)
    raise ValueError(f"unknown model {model_name!r}; one of {MODELS}")


def _styletts2(preset: str, utterances: int, max_frames: int, r: int, device: str, tiny: bool) -> FullScale:
    from tts_bpeft.speech_data.libritts import read_libritts
    from tts_bpeft.speech_data.synthetic import make_libritts
    from tts_bpeft.styletts2.build import OFFICIAL_CONFIGS, TINY_CONFIG, build_styletts2, load_config

    styletts2 = family("styletts2")
    torch.manual_seed(0)
    config = load_config(TINY_CONFIG if tiny else OFFICIAL_CONFIGS["libritts"])
    model = TTSModel("styletts2", build_styletts2(config, device=device),
                     {"config": "tiny" if tiny else "libritts", "random": True}, config)
    styletts2.add_preset(model, preset, r=r)
    root = DATA_DIR / "LibriTTS"
    make_libritts(root, speakers=1, utterances_per_speaker=max(2, utterances), chapters_per_speaker=1)
    utts = read_libritts(root).utterances[:utterances]
    options = DataOptions(max_frames=max_frames)
    batches = list(styletts2.curvature_batches(model, utts, 1, 0, options))
    train = next(iter(styletts2.training_batches(model, utts, 1, 0, options=options)(0)))
    loss = styletts2.training_loss(model, seed=0, options=options)
    return FullScale(model, batches, styletts2.per_sample_loss(model, "empirical", options=options), "empirical",
                     [train], lambda item: loss(item)[0],
                     f"StyleTTS 2 {'tiny' if tiny else 'LibriTTS'} config (random weights), {utterances} synthetic "
                     "utterance(s) cut to "
                     f"{max_frames} mel frames")


def _kokoro(preset: str, utterances: int, max_frames: int, r: int, device: str) -> FullScale:
    from tts_bpeft.kokoro.curvature import OwnOutputLikelihood, own_output_loss_fn
    from tts_bpeft.speech_data.records import Utterance

    kokoro = family("kokoro")
    try:
        model, source = kokoro.build({}, device=device), "Kokoro-82M (offline weights)"
    except (FileNotFoundError, ImportError, ValueError) as error:
        from tts_bpeft.kokoro.architecture import build_kmodel
        from tts_bpeft.kokoro.offline import offline_config

        torch.manual_seed(0)
        model = TTSModel("kokoro", build_kmodel(offline_config()).to(device), {}, {})
        source = f"Kokoro-82M architecture, random weights ({error})"
    kokoro.add_preset(model, preset, r=r)
    if utterances > len(SENTENCES):
        raise ValueError(f"at most {len(SENTENCES)} Kokoro sentences")
    records = [Utterance("", "jf_alpha", SENTENCES[i]) for i in range(utterances)]
    batches = kokoro.curvature_batches(model, records, 1, 0, DataOptions(max_frames=max_frames))
    loss_fn = own_output_loss_fn(OwnOutputLikelihood(crop_frames=max(2, max_frames // 2)))

    def step_loss(batch: Any) -> Tensor:
        model.net.train()
        return sum(term.sampled_nll() for term in loss_fn(model.net, batch)).mean()

    return FullScale(model, batches, loss_fn, "mc", batches[:1], step_loss,
                     f"{source}, voice jf_alpha, {utterances} sentence(s), decoder crops of {max(2, max_frames // 2)} "
                     "aligned frames")
