"""Curvature of a pre-trained StyleTTS 2 on its pre-training data (LibriTTS), for the Laplace prior.

The Fisher is defined on the *likelihood* part of the generator objective (`tts_bpeft.styletts2.losses`):
mel reconstruction, F0, energy, duration (L1 and step BCE) and style diffusion, each term selectable, with
the aligner's ground-truth alignment. Adversarial and WavLM terms (``gen``, ``slm``, ``slmadv``) are not
likelihoods and are refused, whatever the fine-tuning objective holds.

- ``fisher="empirical"``: per-utterance gradients of the chosen terms' weighted sum.
- ``fisher="mc"``: the regression outputs (log-mel at each STFT resolution, F0, energy, durations) are
  treated as Laplace likelihoods (unit scale, per-utterance mean absolute error, weighted as in the
  objective; the mel's spectral convergence enters as its mean absolute error) and targets are sampled
  from them. Terms without a regression output (ce, diff, sty, mono, s2s) have no sampled counterpart and
  are left out of the MC Fisher.

The batches and this loss reach `tts_bpeft.estimate_curvature` through the StyleTTS 2 family
(`tts_bpeft.styletts2.family`, `tts_bpeft.family.estimate_pretraining_curvature`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from munch import Munch

from ..curvature import Laplace, utterance_seed
from .losses import NON_LIKELIHOOD_TERMS, GeneratorObjective

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
    """A ``loss_fn(model, batch)`` for `tts_bpeft.estimate_curvature` on TTSBatch batches; `objective` must
    hold no adversarial or WavLM term."""
    scored = sorted(set(objective.terms) & set(NON_LIKELIHOOD_TERMS))
    if scored:
        raise ValueError(f"the curvature is a likelihood's: terms {scored} are scored by discriminators or WavLM "
                         f"and never enter it; use terms from {LIKELIHOOD_TERMS + ('sty', 'mono', 's2s')}")
    def loss_fn(model: Munch, batch: Any):
        seeds = [utterance_seed(seed, p) for p in batch.paths]
        output = objective(batch.to(objective.device), seeds=seeds)
        return output.total if fisher == "empirical" else _mc_terms(output, objective.weights)
    return loss_fn
