"""The Fisher of Kokoro-82M without its training data: the Monte-Carlo Fisher on the model's own outputs.

Kokoro's training corpus is not public, but the Fisher of a model p(y | x) needs no labels: it is
``E_x E_{y ~ p(y|x)} [grad log p(y|x) grad log p(y|x)^T]``. Here x is one of Kokoro's built-in voices speaking
a sentence, and y are the four regression outputs of `tts_bpeft.kokoro.predict` (the model's own alignment,
crop and harmonic-source noise fixed by the utterance's seed). Each output gets a likelihood centred on the
model's prediction; targets are drawn from it (``estimate_curvature(fisher="mc")``), per utterance from
its own seed (`PerSampleDraws`), so an utterance contributes the same whatever batch it is in.

==========  ==========================================  =============  ======================================
term        prediction (per utterance)                  scale b        reaches (gradients flow into)
==========  ==========================================  =============  ======================================
duration    aligned frames per real token (T,)           1 frame        bert, bert_encoder, predictor.text_encoder,
                                                                        predictor.lstm, predictor.duration_proj
f0          F0 on the crop (2 * crop_frames,), Hz        10 Hz          bert, bert_encoder, predictor.text_encoder,
                                                                        predictor.shared, predictor.F0, F0_proj
energy      N on the crop (2 * crop_frames,)             1              as f0, with predictor.N and N_proj
mel         log-mel of the decoded crop (80, frames)     0.2            decoder, text_encoder and, through the
                                                                        predicted F0 and N, all f0/energy layers
==========  ==========================================  =============  ======================================

Each term's negative log-likelihood is averaged over its elements per utterance (reduction "mean"), so a
term is ``mean |y - prediction| / b`` (Laplace) or ``mean (y - prediction)^2 / (2 b^2)`` (Gaussian with
sigma = b): with the default scales the Laplace terms are exactly the regression part of the StyleTTS 2
objective Kokoro descends from (lambda_dur 1, lambda_F0 1 on F0 / 10, lambda_norm 1, lambda_mel 5; the mel
as an L1 of the normalised log-mel instead of its spectral convergence). Both likelihoods have the same
Fisher, ``sum_elements J^T J / (b n)^2`` per term (n elements, J the output's Jacobian); Laplace targets give
gradients of constant size (less Monte-Carlo noise), so they are the default. The scales set the terms'
weights relative to each other; a factor common to all of them only rescales the Fisher, which a scale-free
strength (lam) absorbs. The mel term dominates the cost (the 24 kHz decoder): ``crop_frames`` bounds it.
Layers that no term reaches (PL-BERT's pooler, the harmonic-source merge) get no curvature; the presets
never adapt them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..curvature import Curvature, Gaussian, Laplace, Likelihood, PerSampleDraws, estimate_curvature, utterance_seed
from ..speech_data.records import Utterance
from .predict import KokoroBatch, KokoroUtterance, collate, predict
from .text import english_phonemes, token_ids
from .voices import style_row

TERMS = ("duration", "f0", "energy", "mel")


@dataclass(frozen=True)
class OwnOutputLikelihood:
    """Which terms, their scales b (units in the module docstring) and the likelihood family."""

    terms: tuple[str, ...] = TERMS
    duration: float = 1.0
    f0: float = 10.0
    energy: float = 1.0
    mel: float = 0.2
    family: str = "laplace"
    crop_frames: int = 40

    def __post_init__(self) -> None:
        unknown = sorted(set(self.terms) - set(TERMS))
        if unknown or not self.terms:
            raise ValueError(f"likelihood terms must be a non-empty subset of {TERMS}, got {self.terms}")
        if self.family not in ("laplace", "gaussian"):
            raise ValueError(f"family must be 'laplace' or 'gaussian', got {self.family!r}")
        if self.crop_frames < 2:  # the predictor's InstanceNorm needs 2 frames before its upsampling
            raise ValueError(f"crop_frames must be >= 2 aligned frames, got {self.crop_frames}")
        bad = {t: getattr(self, t) for t in TERMS if not getattr(self, t) > 0}
        if bad:
            raise ValueError(f"likelihood scales must be positive, got {bad}")

    def term(self, name: str, prediction, mask=None) -> Likelihood:
        """The likelihood of one output, centred on the (detached) prediction, averaged per utterance."""
        scale = getattr(self, name)
        centre = prediction.detach()
        if self.family == "laplace":
            return Laplace(prediction, centre, mask, reduction="mean", scale=scale)
        return Gaussian(prediction, centre, mask, reduction="mean", sigma=scale)


def own_output_loss_fn(likelihood: OwnOutputLikelihood = OwnOutputLikelihood()
                       ) -> Callable[[nn.Module, KokoroBatch], list[Likelihood]]:
    """A ``loss_fn(model, batch)`` for `estimate_curvature`: the chosen terms as `Likelihood`s whose targets
    are drawn per utterance (their real targets are the predictions themselves, so only ``fisher="mc"``
    is meaningful)."""
    wanted = set(likelihood.terms)

    def loss_fn(model: nn.Module, batch: KokoroBatch) -> list[Likelihood]:
        frames = wanted & {"f0", "energy", "mel"}
        out = predict(model, batch, likelihood.crop_frames if frames else None, decoder="mel" in wanted)
        outputs = {"duration": (out.durations, out.token_mask), "f0": (out.f0, None),
                   "energy": (out.energy, None), "mel": (out.mel, None)}
        return [PerSampleDraws(likelihood.term(name, *outputs[name]),
                               [utterance_seed(seed, "targets", name) for seed in batch.seeds])
                for name in TERMS if name in wanted]
    return loss_fn


def own_output_utterances(vocab: Mapping[str, int], voicepacks: Mapping[str, torch.Tensor],
                          records: Sequence[Utterance], language: str = "en-us") -> list[KokoroUtterance]:
    """Built-in voices speaking sentences: each record's ``speaker`` names a voicepack (510, 1, 256) in
    `voicepacks`, its ``text`` (or ``phonemes``, when given) is what the voice says; no audio is read.
    The key ``"<voice>|<text>"`` seeds the utterance's draws, so a sentence keeps its draws in any subset."""
    unknown = sorted({r.speaker for r in records} - set(voicepacks))
    if unknown:
        raise ValueError(f"voices {unknown} are not among the voicepacks {sorted(voicepacks)}")
    missing = [r.text for r in records if r.phonemes is None]
    phonemes = iter(english_phonemes(missing, language) if missing else [])
    out = []
    for r in records:
        ps = r.phonemes if r.phonemes is not None else next(phonemes)
        tokens = torch.tensor(token_ids(ps, dict(vocab), r.text or ps), dtype=torch.long)
        out.append(KokoroUtterance(f"{r.speaker}|{r.text or ps}", tokens,
                                   style_row(voicepacks[r.speaker], len(ps)).reshape(-1)))
    return out


def own_output_batches(utterances: Sequence[KokoroUtterance], batch_size: int = 1, seed: int = 0
                       ) -> list[KokoroBatch]:
    """`utterances` in batches of `batch_size`, in order (samples never interact, so any grouping gives the
    same estimate; longer batches only pad more tokens)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [u.key for u in utterances]
    if len(set(keys)) != len(keys):
        raise ValueError("utterance keys must be unique (each seeds its utterance's draws)")
    return [collate(utterances[i:i + batch_size], seed) for i in range(0, len(utterances), batch_size)]


def estimate_kokoro_curvature(model: nn.Module, utterances: Sequence[KokoroUtterance], method: str = "kfac",
                              likelihood: OwnOutputLikelihood = OwnOutputLikelihood(), mc_samples: int = 1,
                              batch_size: int = 1, kfac_approx: str = "expand", seed: int = 0,
                              description: str = "", progress: bool = True) -> Curvature:
    """The Monte-Carlo Fisher (`method` ``"kfac"``, ``"ewc"`` or ``"ekfac"``) of `model`'s LoRA targets on
    its own outputs for `utterances` (built-in voices speaking sentences), measured in eval mode with the
    adapters disabled. `mc_samples` target draws per utterance. Save it with ``Curvature.save``."""
    batches = own_output_batches(utterances, batch_size, seed)
    terms = "+".join(likelihood.terms)
    return estimate_curvature(
        model, batches, own_output_loss_fn(likelihood), method=method, fisher="mc", kfac_approx=kfac_approx,
        mc_samples=mc_samples, mode="eval", seed=seed, progress=progress,
        description=description or (f"Kokoro own-output MC Fisher, {len(utterances)} utterances, {terms} "
                                    f"({likelihood.family}), crops of {likelihood.crop_frames} frames"))
