"""Curvature of a pre-trained StyleTTS 2 on its pre-training data (LibriTTS), for the Laplace prior.

The Fisher is defined on the *likelihood* part of the generator objective (`tts_bpeft.styletts2.losses`):
mel reconstruction, F0, energy, duration (L1 and step BCE) and style diffusion, each term selectable, with
the aligner's ground-truth alignment. Adversarial and WavLM terms are not likelihoods and stay out unless
asked for (``terms`` may include ``"gen"`` for reference-compatible runs).

- ``fisher="empirical"``: per-utterance gradients of the chosen terms' weighted sum.
- ``fisher="mc"``: the regression outputs (log-mel at each STFT resolution, F0, energy, durations) are
  treated as Laplace likelihoods (unit scale, per-utterance mean absolute error, weighted as in the
  objective; the mel's spectral convergence enters as its mean absolute error) and targets are sampled
  from them. Terms without a regression output (ce, diff, sty, mono, s2s) have no sampled counterpart and
  are left out of the MC Fisher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from munch import Munch
from torch.utils.data import DataLoader

from ..curvature import Curvature, Laplace, estimate_curvature, utterance_seed
from .data.dataset import TTSDataset, collate
from .data.records import Utterance
from .data.text import Phonemizer
from .losses import GeneratorObjective

LIKELIHOOD_TERMS = ("mel", "f0", "norm", "dur", "ce", "diff")


def _mc_terms(output: Any, weights: dict[str, float]) -> list[Laplace]:
    """Laplace likelihoods of the regression outputs, weighted as their terms in the objective."""
    mels = [k for k in output.predictions if k.startswith("mel_")]
    scale = {"f0": weights["f0"] / 10, "norm": weights["norm"], "dur": weights["dur"]}
    scale.update({k: weights["mel"] / len(mels) for k in mels})
    return [Laplace(p.prediction, p.target, p.mask, weight=scale[name], reduction="mean")
            for name, p in output.predictions.items() if name in scale]


def styletts2_loss_fn(objective: GeneratorObjective, fisher: str = "empirical", seed: int = 0
                      ) -> Callable[[Munch, Any], Any]:
    """A ``loss_fn(model, batch)`` for `tts_bpeft.estimate_curvature` on TTSBatch batches."""
    def loss_fn(model: Munch, batch: Any):
        seeds = [utterance_seed(seed, p) for p in batch.paths]
        output = objective(batch.to(objective.device), seeds=seeds)
        return output.total if fisher == "empirical" else _mc_terms(output, objective.weights)
    return loss_fn


def estimate_styletts2_curvature(model: Munch, config: dict, utterances: Sequence[Utterance],
                                 method: str = "kfac", fisher: str = "empirical", kfac_approx: str = "expand",
                                 terms: Sequence[str] = LIKELIHOOD_TERMS, batch_size: int = 1,
                                 mc_samples: int = 1, max_frames: int | None = None,
                                 phonemizer: Phonemizer | None = None,
                                 trim_db: float | None = None, seed: int = 0, description: str = "",
                                 progress: bool = True) -> Curvature:
    """KFAC or EWC curvature of `model`'s LoRA targets on `utterances` (pre-training data).

    `max_frames` caps the decoder segment (default: the config's ``max_len``). The model must carry LoRA
    (e.g. `add_preset_lora`), whose targets name the curvature's layers; the adapters are disabled while
    measuring. Modules are put in eval mode (no dropout).
    """
    dataset = TTSDataset(list(utterances), phonemizer, trim_db=trim_db)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    batches = DataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=lambda items: collate(
        items, [dataset.reference(it, generator) for it in items], dataset.ref_frames))
    objective = GeneratorObjective(model, config, terms=tuple(terms), max_frames=max_frames)
    return estimate_curvature(model, batches, styletts2_loss_fn(objective, fisher, seed), method=method,
                              fisher=fisher, kfac_approx=kfac_approx, mc_samples=mc_samples, mode="eval",
                              seed=seed, description=description or f"{len(dataset)} utterances, terms {terms}",
                              progress=progress)
