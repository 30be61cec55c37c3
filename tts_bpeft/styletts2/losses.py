"""The StyleTTS 2 second-stage (fine-tuning) generator objective, one value per utterance.

Source: the generator step of the official ``train_finetune.py`` / ``train_second.py`` (StyleTTS 2 repository;
the installed ``styletts2`` package ships only models.py, losses.py and the Modules, so the step is rebuilt
here from those and the original script's logic). Every utterance is run alone (batch of one, unpadded), so
a sample's terms never depend on the others in its batch; where the original used a batch-level quantity,
the per-utterance one is used instead:

- decoder segment: the original crops every item to ``min(shortest/2 - 1, max_len/2)`` aligned frames; here
  each utterance gets ``min(own/2 - 1, max_len/2)`` at a random start;
- mel loss: spectral convergence ``sum|y - x| / sum|y|`` of normalised log-mels (3 resolutions, averaged),
  the sums taken over the utterance instead of the batch;
- style diffusion: ``sigma_data`` is the utterance's own style-vector std (the original: the batch mean of
  them) when ``estimate_sigma_data`` is set; the model's value is restored afterwards;
- mono: the L1 mean runs over the utterance's own (tokens x frames) alignment, not the padded batch;
- the JDC pitch extractor makes the F0 target in eval mode (its BatchNorm would otherwise use batch stats).

All randomness (aligner token masking, the 50% choice of soft/monotonic alignment, segment start, diffusion
noise and sigma, sampler steps, decoder smoothing, dropout) comes from torch's RNG; ``seeds`` (one per
utterance) makes each utterance's draws reproducible and independent of its batch.

Terms (per utterance, shape (B,)), with the official weights (``loss_params``):

======  ==========================================================  ============
mel     multi-resolution log-mel spectral convergence                lambda_mel 5
f0      smooth L1(F0 predicted, JDC F0) / 10                          lambda_F0 1
norm    smooth L1(log energy predicted, log mel norm)                  lambda_norm 1
dur     L1(sum sigmoid(duration logits), aligner durations), inner    lambda_dur 1
ce      BCE of duration logits vs. the duration's step targets       lambda_ce 20
diff    EDM denoising loss of the style diffusion                    lambda_diff 1
sty     L1(style sampled by 3-4 ADPM2 steps, target style)           lambda_sty 1
mono    10 * L1(soft alignment, monotonic alignment)                 lambda_mono 1
s2s     aligner token cross entropy                                  lambda_s2s 1
gen     mpd + msd least-squares GAN, feature matching, TPRLS          lambda_gen 1
slm     WavLM feature loss: sum over layers of mean |h_real - h_rec|  lambda_slm 1
slmadv  SLM adversarial: (1 - wd(WavLM(speech from text)))^2 mean     lambda_slmadv 1
======  ==========================================================  ============

``gen``, ``slm`` and ``slmadv`` (:data:`NON_LIKELIHOOD_TERMS`) are scored by discriminators or WavLM; they
need ``slm`` (a `tts_bpeft.styletts2.slm.SpeechLanguageModel`) for the last two and never belong in a
curvature. Schedule (``epoch`` given, as in fine-tuning): ``diff`` and ``sty`` count from ``diff_epoch``,
``slmadv`` from ``joint_epoch`` (0-based epochs); before that they are reported as 0 and left out of the
total. Passing ``discriminators`` (`tts_bpeft.styletts2.adversarial.Discriminators`) trains them on the
step's detached segments before the adversarial terms are computed, as the original does.

``slmadv`` reaches PL-BERT, its projection, the prosody predictor and the style diffusion, not the decoder
(as in the original's SLM step). It differs from the original in three ways: the text is the utterance's own
(no out-of-distribution texts), its gradient is not rescaled per module (the original clips by the
predictor's gradient norm and scales the duration projection, LSTM and diffusion gradients by 0.01 in a
separate optimizer step), and it is part of the one generator loss.

For curvature estimates, :class:`GeneratorLossOutput` also carries (prediction, target, mask) of the mel
(one per resolution, normalised log-mel (B, 128, frames)), F0 (B, T), energy (B, T) and duration (B, L)
regressions, zero-padded across the batch, targets detached, masks True where a value counts in the loss.

The per-utterance pieces (mel convergence, monotonic alignment, duration terms, length check) are in
`tts_bpeft.styletts2.loss_terms`. This module stays one file of ~430 lines, a sixth of them this
specification, because the rest is one forward pass: every term reads the same alignment, decoder segment
and style vectors, so splitting it would pass those intermediates between modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from munch import Munch
from styletts2.losses import GeneratorLoss as AdversarialGeneratorLoss
from styletts2.losses import MultiResolutionSTFTLoss
from styletts2.Modules.diffusion.sampler import ADPM2Sampler, DiffusionSampler, KarrasSchedule
from styletts2.utils import log_norm
from torch import Tensor

from tts_bpeft.styletts2.adversarial import Discriminators, Segment
from tts_bpeft.styletts2.loss_terms import (
    MEL_FFT_SIZES,
    check_lengths,
    duration_terms,
    mel_convergence,
    monotonic_alignment,
)
from tts_bpeft.styletts2.slm import SpeechLanguageModel, slm_generator_loss
from tts_bpeft.styletts2.slm_generation import GenerationSettings, generate_from_text

HOP = 300
DEFAULT_TERMS = ("mel", "f0", "norm", "dur", "ce", "diff", "sty", "mono", "s2s")
NON_LIKELIHOOD_TERMS = ("gen", "slm", "slmadv")
ALL_TERMS = DEFAULT_TERMS + NON_LIKELIHOOD_TERMS
LAMBDA_KEYS = {
    "mel": "lambda_mel",
    "f0": "lambda_F0",
    "norm": "lambda_norm",
    "dur": "lambda_dur",
    "ce": "lambda_ce",
    "diff": "lambda_diff",
    "sty": "lambda_sty",
    "mono": "lambda_mono",
    "s2s": "lambda_s2s",
    "gen": "lambda_gen",
    "slm": "lambda_slm",
    "slmadv": "lambda_slmadv",
}
DEFAULT_WEIGHTS = {
    "mel": 5.0,
    "f0": 1.0,
    "norm": 1.0,
    "dur": 1.0,
    "ce": 20.0,
    "diff": 1.0,
    "sty": 1.0,
    "mono": 1.0,
    "s2s": 1.0,
    "gen": 1.0,
    "slm": 1.0,
    "slmadv": 1.0,
}
class Prediction(NamedTuple):
    """A regression output and its target, zero-padded to a common shape; `mask` (bool, same shape) marks
    the entries that enter the loss."""

    prediction: Tensor
    target: Tensor
    mask: Tensor


@dataclass
class GeneratorLossOutput:
    """Per-utterance terms (name -> (B,)), their weighted sum `total` (B,), regression pieces and the
    discriminator step's losses."""

    terms: dict[str, Tensor]
    total: Tensor
    predictions: dict[str, Prediction]
    discriminator: dict[str, float] = field(default_factory=dict)  # losses of the discriminator step, if any


def loss_weights(
    config: Mapping[str, Any] | None = None, overrides: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Term weights: the official defaults, then ``config['loss_params']`` lambdas, then `overrides`."""
    weights = dict(DEFAULT_WEIGHTS)
    params = (config or {}).get("loss_params") or {}
    for term, key in LAMBDA_KEYS.items():
        if key in params:
            weights[term] = float(params[key])
    for term, value in (overrides or {}).items():
        if term not in weights:
            raise ValueError(f"unknown loss term '{term}'; known: {ALL_TERMS}")
        weights[term] = float(value)
    return weights


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Within the block, torch's RNG (CPU and `device`) starts from `seed`; the outer state is restored.
    With `seed` None the block just uses the running RNG."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """`module` in eval mode within the block, its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _pad_stack(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack tensors differing in their last dimension, zero-padded; plus the bool mask of real entries."""
    length = max(t.shape[-1] for t in tensors)
    padded = torch.stack([F.pad(t, (0, length - t.shape[-1])) for t in tensors])
    mask = torch.stack(
        [F.pad(torch.ones_like(t, dtype=torch.bool), (0, length - t.shape[-1])) for t in tensors]
    )
    return padded, mask


class GeneratorObjective:
    """The per-utterance StyleTTS 2 generator loss of a model built by ``tts_bpeft.styletts2.build``.

    Args:
        model: the 13-module ``Munch``; the caller sets train/eval mode.
        config: the model's config (dict): ``model_params.multispeaker``, ``model_params.diffusion.dist``,
            ``loss_params``, ``slmadv_params`` and ``max_len`` are read. Default: multispeaker, estimated
            sigma_data, official weights, max_len 300.
        terms: the terms computed and summed (subset of :data:`ALL_TERMS`).
        weights: overrides of the term weights.
        max_frames: longest decoder segment in mel frames (default ``config['max_len']`` or 300).
        slm: the WavLM, needed by the ``slm`` and ``slmadv`` terms.
        diff_epoch, joint_epoch: first (0-based) epoch of ``diff``/``sty`` and of ``slmadv``.
        generation: the ``slmadv`` segment lengths (default: ``config['slmadv_params']``, else the official).
    """

    def __init__(
        self,
        model: Munch,
        config: Mapping[str, Any] | None = None,
        terms: Sequence[str] = DEFAULT_TERMS,
        weights: Mapping[str, float] | None = None,
        max_frames: int | None = None,
        slm: SpeechLanguageModel | None = None,
        diff_epoch: int = 0,
        joint_epoch: int = 0,
        generation: GenerationSettings | None = None,
    ):
        unknown = sorted(set(terms) - set(ALL_TERMS))
        if unknown or not terms:
            raise ValueError(f"terms must be a non-empty subset of {ALL_TERMS}; unknown: {unknown}")
        if slm is None and {"slm", "slmadv"} & set(terms):
            raise ValueError("the slm and slmadv terms need the WavLM: pass slm= (tts_bpeft.styletts2.slm.load_slm)")
        config = config or {}
        params = config.get("model_params") or {}
        self.model = model
        self.terms = tuple(terms)
        self.weights = loss_weights(config, weights)
        self.multispeaker = bool(params.get("multispeaker", True))
        self.estimate_sigma_data = bool(
            params.get("diffusion", {}).get("dist", {}).get("estimate_sigma_data", True)
        )
        self.max_frames = int(max_frames or config.get("max_len", 300))
        self.mel_losses = MultiResolutionSTFTLoss().stft_losses
        self.adversarial = AdversarialGeneratorLoss(model.mpd, model.msd) if "gen" in self.terms else None
        self.slm = slm
        self.start_epochs = {"diff": int(diff_epoch), "sty": int(diff_epoch), "slmadv": int(joint_epoch)}
        self.generation = generation or GenerationSettings.from_config(config)

    @property
    def device(self) -> torch.device:
        return next(self.model.decoder.parameters()).device

    def active_terms(self, epoch: int | None) -> tuple[str, ...]:
        """The terms that count at (0-based) `epoch`; all of them when `epoch` is None."""
        return tuple(t for t in self.terms if epoch is None or epoch >= self.start_epochs.get(t, 0))

    def __call__(self, batch: Any, seeds: Sequence[int] | None = None, epoch: int | None = None,
                 discriminators: Discriminators | None = None) -> GeneratorLossOutput:
        """Terms for every utterance of `batch` (a ``TTSBatch``: tokens (B, L_max), token_lengths (B,),
        mels (B, 80, T_max), mel_lengths (B,), waves (B, 300 T_max), ref_mels (B, 80, T_ref)).

        `seeds`: one int per utterance, making each utterance's random draws reproducible on their own.
        `epoch`: the fine-tuning epoch, for the schedule. `discriminators`: trained on this batch's
        segments before the adversarial terms are computed.
        """
        n = batch.tokens.shape[0]
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {n}")
        for i in range(n):
            check_lengths(batch, i)
        device = self.device
        active = self.active_terms(epoch)
        per_sample = []
        for i in range(n):
            with seeded(None if seeds is None else int(seeds[i]), device):
                per_sample.append(self._utterance(batch, i, device, active))
        segments = [s[2] for s in per_sample]
        discriminator = {}
        if discriminators is not None and segments[0] is not None:
            discriminator = discriminators.step(segments, gan="gen" in active, slm="slmadv" in active)
        for (terms, _, segment) in per_sample:
            terms.update(self._discriminated(segment, active))
        zero = torch.zeros(n, device=device)
        terms = {name: torch.stack([s[0][name] for s in per_sample]) if name in active else zero
                 for name in self.terms}
        total = sum(self.weights[name] * terms[name] for name in active)
        predictions = {}
        for name in per_sample[0][1]:
            pred, mask = _pad_stack([s[1][name][0] for s in per_sample])
            target, _ = _pad_stack([s[1][name][1] for s in per_sample])
            inner = _pad_stack([s[1][name][2] for s in per_sample])[0].bool()
            predictions[name] = Prediction(pred, target, mask & inner)
        return GeneratorLossOutput(terms=terms, total=total, predictions=predictions, discriminator=discriminator)

    def _discriminated(self, segment: Segment | None, active: Sequence[str]) -> dict[str, Tensor]:
        """The terms scored by the discriminators or WavLM (0-dim each) of one utterance's segments."""
        terms = {}
        if "gen" in active:
            terms["gen"] = self.adversarial(segment.real.unsqueeze(1), segment.fake.unsqueeze(1))
        if "slm" in active:
            terms["slm"] = self.slm.feature_loss(segment.real, segment.fake)
        if "slmadv" in active:
            terms["slmadv"] = (segment.fake.new_zeros(()) if segment.generated is None
                               else slm_generator_loss(self.slm, self.model.wd, segment.generated))
        return terms

    def _utterance(
        self, batch: Any, i: int, device: torch.device, active: Sequence[str]
    ) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor, Tensor]], Segment | None]:
        """Terms (0-dim) but the discriminated ones, unbatched (prediction, target, mask) triples of utterance
        `i` run alone, and its waveform segments when a discriminated term is active."""
        m = self.model
        want = set(active)
        n_tokens = int(batch.token_lengths[i])
        frames = int(batch.mel_lengths[i]) // 2 * 2
        tokens = batch.tokens[i : i + 1, :n_tokens].to(device)
        mel = batch.mels[i : i + 1, :, :frames].to(device)
        wave = batch.waves[i, : frames * HOP].to(device)
        lengths = torch.tensor([n_tokens], device=device)
        text_mask = torch.zeros(1, n_tokens, dtype=torch.bool, device=device)
        half = frames // 2**m.text_aligner.n_down

        # Alignment: soft attention of the aligner, and its monotonic (hard) path.
        _, s2s_pred, s2s_attn = m.text_aligner(
            mel, torch.zeros(1, half, dtype=torch.bool, device=device), tokens
        )
        s2s_attn = s2s_attn[:, 1:, :]
        attn_mono = monotonic_alignment(s2s_attn)
        t_en = m.text_encoder(tokens, lengths, text_mask)
        asr = t_en @ (s2s_attn if bool(torch.randint(2, ())) else attn_mono)
        d_gt = attn_mono.sum(dim=-1).detach()

        # Global styles of the whole utterance: prosodic (duration) and acoustic (diffusion target).
        s_dur = m.predictor_encoder(mel.unsqueeze(1))
        s_acoustic = m.style_encoder(mel.unsqueeze(1))
        s_trg = torch.cat([s_acoustic, s_dur], dim=-1).detach()
        bert_dur = m.bert(tokens, attention_mask=(~text_mask).int())
        d_en = m.bert_encoder(bert_dur).transpose(-1, -2)

        terms: dict[str, Tensor] = {}
        features = self._reference_features(batch.ref_mels[i : i + 1].to(device)) if want & {"diff", "sty",
                                                                                             "slmadv"} else {}
        if want & {"diff", "sty"}:
            terms.update(self._style_diffusion(s_trg, bert_dur, features))

        d, p = m.predictor(d_en, s_dur, lengths, attn_mono, text_mask)

        # Decoder segment: up to max_frames mel frames at a random start, in aligned (half-rate) frames.
        seg = min(half - 1, self.max_frames // 2)
        start = int(torch.randint(0, half - seg, ()))
        en = asr[..., start : start + seg]
        p_en = p[..., start : start + seg]
        gt = mel[..., 2 * start : 2 * (start + seg)]
        wav = wave[2 * start * HOP : 2 * (start + seg) * HOP].unsqueeze(0)
        s = m.style_encoder(gt.unsqueeze(1))
        s_dur_seg = m.predictor_encoder(gt.unsqueeze(1))
        with torch.no_grad(), eval_mode(m.pitch_extractor):
            f0_real = m.pitch_extractor(gt.unsqueeze(1))[0].reshape(1, -1)
        n_real = log_norm(gt.unsqueeze(1)).squeeze(1)
        f0_fake, n_fake = m.predictor.F0Ntrain(p_en, s_dur_seg)
        terms["f0"] = F.smooth_l1_loss(f0_fake, f0_real) / 10
        terms["norm"] = F.smooth_l1_loss(n_fake, n_real)
        predictions = {
            "f0": (f0_fake[0], f0_real[0], torch.ones_like(f0_real[0])),
            "norm": (n_fake[0], n_real[0], torch.ones_like(n_real[0])),
        }

        segment = None
        if want & ({"mel"} | set(NON_LIKELIHOOD_TERMS)):
            y_rec = m.decoder(en, f0_fake, n_fake, s).squeeze(1)
            terms["mel"], mels = mel_convergence(y_rec, wav, self.mel_losses)
            for fft, (x_mel, y_mel) in zip(MEL_FFT_SIZES, mels):
                predictions[f"mel_{fft}"] = (x_mel[0], y_mel[0], torch.ones_like(y_mel[0]))
            if want & set(NON_LIKELIHOOD_TERMS):
                segment = Segment(real=wav.detach(), fake=y_rec)
            if "slmadv" in want:
                style = s_trg if bool(torch.randint(2, ())) else self._sample_style(s_trg, bert_dur, features)
                pair = generate_from_text(m, tokens, t_en, bert_dur, style, wave, half, self.generation)
                if pair is not None:
                    segment.generated, segment.generated_real = pair

        # Durations: logits (L, max_dur) against step targets; L1 on the expected duration, inner tokens.
        logits = d[0, :n_tokens]
        target = d_gt[0, :n_tokens]
        terms["dur"], terms["ce"], dur_pred = duration_terms(logits, target)
        inner = torch.zeros(n_tokens, device=device)
        inner[1 : n_tokens - 1] = 1
        predictions["dur"] = (dur_pred, target, inner)

        terms["s2s"] = F.cross_entropy(s2s_pred[0, :n_tokens], tokens[0])
        terms["mono"] = F.l1_loss(s2s_attn, attn_mono) * 10
        return {name: terms[name] for name in active if name in terms}, predictions, segment

    def _reference_features(self, ref_mel: Tensor) -> dict[str, Tensor]:
        """The diffusion's speaker conditioning from a reference mel (1, 80, T_ref): ``{"features": (1, 2
        style_dim)}`` for a multi-speaker model, else nothing."""
        if not self.multispeaker:
            return {}
        m = self.model
        with torch.no_grad():
            ref = torch.cat([m.style_encoder(ref_mel.unsqueeze(1)), m.predictor_encoder(ref_mel.unsqueeze(1))],
                            dim=-1)
        return {"features": ref}

    @contextlib.contextmanager
    def _sigma_data(self, s_trg: Tensor) -> Iterator[None]:
        """The diffusion's sigma_data set to the utterance's own style std within the block (when estimated)."""
        kdiffusion = self.model.diffusion.diffusion
        previous = kdiffusion.sigma_data
        if self.estimate_sigma_data:
            kdiffusion.sigma_data = float(s_trg.std(dim=-1).mean())
        try:
            yield
        finally:
            kdiffusion.sigma_data = previous

    def _sample_style(self, s_trg: Tensor, bert_dur: Tensor, features: dict[str, Tensor]) -> Tensor:
        """A style (1, 2 style_dim) sampled by the diffusion in 3-4 ADPM2 steps from noise shaped as `s_trg`."""
        with self._sigma_data(s_trg):
            sampler = DiffusionSampler(
                self.model.diffusion.diffusion,
                sampler=ADPM2Sampler(),
                sigma_schedule=KarrasSchedule(sigma_min=0.0001, sigma_max=3.0, rho=9.0),
                clamp=False,
            )
            num_steps = int(torch.randint(3, 5, ()))
            return sampler(
                noise=torch.randn_like(s_trg).unsqueeze(1),
                embedding=bert_dur,
                embedding_scale=1,
                embedding_mask_proba=0.1,
                num_steps=num_steps,
                **features,
            ).squeeze(1)

    def _style_diffusion(self, s_trg: Tensor, bert_dur: Tensor, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """EDM loss and sampled-style L1 for one utterance; `s_trg` (1, 2 style_dim), `bert_dur` (1, L, H)."""
        with self._sigma_data(s_trg):
            diff = self.model.diffusion(s_trg.unsqueeze(1), embedding=bert_dur, **features).mean()
        return {"diff": diff, "sty": F.l1_loss(self._sample_style(s_trg, bert_dur, features), s_trg)}
