"""The objective a new Kokoro voice is fine-tuned on: StyleTTS 2's second-stage regression terms against a
recording's targets (`tts_bpeft.kokoro.targets`), on the *target* alignment (teacher forcing).

Per utterance (`tts_bpeft.kokoro.predict` with ``alignment="target"``; T tokens, crop of c aligned frames):

=============  ===============================================================================  ======
term           per-utterance value                                                              weight
=============  ===============================================================================  ======
duration       mean over the phoneme tokens (boundary tokens left out, as StyleTTS 2) of           1
               |predicted - target| aligned frames
duration_bce   binary cross-entropy of the 50 step logits against the steps ``k < target``          20
               (a token of d frames has its first d steps on), mean over tokens and steps
f0             mean |F0 - F0*| over the crop's 2c frames, in Hz (unvoiced targets are 0 Hz)       0.1
energy         mean |N - N*| over the crop's 2c frames                                               1
mel            multi-resolution log-mel L1: the decoded crop (given the target F0 and N) against    5
               the recording's crop, normalised log-mels ``(log(1e-5 + mel) + 4) / 4`` at
               StyleTTS 2's three STFT resolutions (n_fft/hop/window 1024/120/600, 2048/240/1200,
               512/50/240; 128 bands), mean over bands and frames, then over resolutions
=============  ===============================================================================  ======

Why these weights: they are StyleTTS 2's second-stage lambdas (lambda_dur 1, lambda_ce 20, lambda_F0 1 on
F0 / 10, lambda_norm 1, lambda_mel 5), the objective Kokoro descends from, so the terms keep the balance the
pre-trained model was fitted with. The L1 terms are then exactly the Laplace negative log-likelihoods whose
Fisher the data-free prior measures (`tts_bpeft.kokoro.curvature`: scales 1 frame, 10 Hz, 1 and 0.2), so
prior and likelihood weigh the outputs alike. The mel term is an L1 rather than StyleTTS 2's spectral
convergence (an L1 divided by the target's L1 norm over the whole batch) so that it is a per-utterance
loss: a sample's loss does not depend on its batch, which the empirical Fisher and batch-size-independent
training need.

The batch loss is the mean of the per-utterance weighted sums. Crops and the decoder's random source come
from each sample's seed (`tts_bpeft.kokoro.predict.collate`), so they change with the epoch when the
batches are collated with an epoch-dependent seed (`tts_bpeft.kokoro.finetune`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from tts_bpeft.kokoro.predict import KokoroBatch, crop_frames_of, predict
from tts_bpeft.kokoro.targets import FRAME
from tts_bpeft.speech_data.audio import SAMPLE_RATE

TERMS = ("duration", "duration_bce", "f0", "energy", "mel")
WEIGHTS = {"duration": 1.0, "duration_bce": 20.0, "f0": 0.1, "energy": 1.0, "mel": 5.0}
"""StyleTTS 2's second-stage lambdas (module docstring); f0's 0.1 is its lambda_F0 1 on F0 / 10."""
RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
"""(n_fft, hop, window) of StyleTTS 2's ``MultiResolutionSTFTLoss``."""

_mel_banks: dict[tuple[int, int, int, torch.device], torchaudio.transforms.MelSpectrogram] = {}


def _mel_transform(resolution: tuple[int, int, int], device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    key = (*resolution, device)
    if key not in _mel_banks:
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)  # the filterbank in float32 whatever the caller's default
        try:
            n_fft, hop, window = resolution
            _mel_banks[key] = torchaudio.transforms.MelSpectrogram(
                sample_rate=SAMPLE_RATE, n_fft=n_fft, win_length=window, hop_length=hop).to(device)
        finally:
            torch.set_default_dtype(default)
    return _mel_banks[key]


def multi_resolution_mel_l1(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-sample multi-resolution log-mel L1 (module docstring) of waves (B, samples) at 24 kHz: (B,)."""
    losses = []
    for resolution in RESOLUTIONS:
        transform = _mel_transform(resolution, prediction.device)
        x = (torch.log(1e-5 + transform(prediction.float())) + 4) / 4
        y = (torch.log(1e-5 + transform(target.float())) + 4) / 4
        losses.append((x - y.detach()).abs().mean(dim=(-2, -1)))
    return torch.stack(losses).mean(0)


def step_targets(durations: Tensor, steps: int) -> Tensor:
    """(B, T, steps) float: 1 where step k < the token's target duration (B, T), as StyleTTS 2's ``s2s`` target."""
    return (torch.arange(steps, device=durations.device) < durations[..., None]).float()


@dataclass(frozen=True)
class VoiceObjective:
    """Which terms count and their weights (module docstring), and the crop length ``crop_frames`` in
    aligned frames of 25 ms (decoder and F0/N heads run on the crop; StyleTTS 2 decodes ~1-2 s segments)."""

    terms: tuple[str, ...] = TERMS
    weights: Mapping[str, float] = field(default_factory=lambda: dict(WEIGHTS))
    crop_frames: int = 40

    def __post_init__(self) -> None:
        unknown = sorted(set(self.terms) - set(TERMS)) + sorted(set(self.weights) - set(TERMS))
        if unknown or not self.terms:
            raise ValueError(f"voice objective terms and weights must name a non-empty subset of {TERMS}; "
                             f"unknown: {unknown}")
        object.__setattr__(self, "weights", {**WEIGHTS, **dict(self.weights)})
        bad = {k: v for k, v in self.weights.items() if not (isinstance(v, (int, float)) and v >= 0)}
        if bad:
            raise ValueError(f"voice objective weights must be numbers >= 0, got {bad}")
        if self.crop_frames < 2:  # the predictor's InstanceNorm needs 2 frames before its upsampling
            raise ValueError(f"crop_frames must be >= 2 aligned frames, got {self.crop_frames}")

    def terms_of(self, model: nn.Module, batch: KokoroBatch) -> dict[str, Tensor]:
        """Each chosen term per utterance, (B,) each, unweighted (units in the module docstring). The
        batch must carry targets (`tts_bpeft.kokoro.predict.collate` of training examples); styles are
        the batch's (a learnable voice is applied by the caller)."""
        frames = {"f0", "energy", "mel"} & set(self.terms)
        out = predict(model, batch, self.crop_frames if frames else None, decoder="mel" in self.terms,
                      alignment="target")
        targets = batch.targets.to(out.durations.device)
        mask = out.token_mask
        inner = mask.clone()
        inner[:, 0] = False
        inner[torch.arange(len(mask)), batch.lengths.to(mask.device) - 1] = False
        terms: dict[str, Tensor] = {}
        if "duration" in self.terms:
            error = (out.durations - targets.durations.to(out.durations.dtype)).abs()
            terms["duration"] = (error * inner).sum(1) / inner.sum(1).clamp(min=1)
        if "duration_bce" in self.terms:
            logits = out.duration_logits
            bce = F.binary_cross_entropy_with_logits(logits, step_targets(targets.durations, logits.shape[-1])
                                                     .to(logits.dtype), reduction="none").mean(-1)
            terms["duration_bce"] = (bce * mask).sum(1) / mask.sum(1)
        for name, values in (("f0", targets.f0), ("energy", targets.energy)):
            if name in self.terms:
                wanted = crop_frames_of(values, out.starts, self.crop_frames, 2).to(out.f0.dtype)
                terms[name] = ((out.f0 if name == "f0" else out.energy) - wanted).abs().mean(1)
        if "mel" in self.terms:
            audio = crop_frames_of(targets.audio, out.starts, self.crop_frames, FRAME)
            length = min(audio.shape[1], out.audio.shape[1])
            terms["mel"] = multi_resolution_mel_l1(out.audio[:, :length], audio[:, :length])
        return terms

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum of per-utterance terms, (B,)."""
        return sum(self.weights[name] * value for name, value in terms.items())

    def per_sample(self, model: nn.Module, batch: KokoroBatch) -> Tensor:
        """The objective per utterance, (B,): :meth:`total` of :meth:`terms_of`."""
        return self.total(self.terms_of(model, batch))


def voice_loss_fn(objective: VoiceObjective = VoiceObjective()) -> Callable[[nn.Module, KokoroBatch], Tensor]:
    """``loss_fn(model, batch)`` -> per-utterance objective (B,): the empirical Fisher's loss for
    `tts_bpeft.estimate_curvature` (``fisher="empirical"``) on batches of recordings with targets
    (`tts_bpeft.kokoro.finetune.recording_examples`, then `tts_bpeft.kokoro.predict.collate`); the styles
    are the batch's (fixed)."""

    def loss_fn(model: nn.Module, batch: KokoroBatch) -> Tensor:
        return objective.per_sample(model, batch)

    return loss_fn
