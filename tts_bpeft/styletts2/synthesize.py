"""Zero-shot synthesis with StyleTTS 2: text + a reference recording of any speaker -> 24 kHz speech.

The procedure and defaults are the official LibriTTS inference (StyleTTS 2 demo): the reference's
acoustic and prosodic styles (style encoder, predictor encoder on its trimmed log-mel) condition the style
diffusion (ADPM2 sampler, Karras schedule sigma 1e-4..3, rho 9) which samples a style from the text's
PL-BERT embedding; the sampled style is mixed with the reference's (``alpha`` for the acoustic half,
``beta`` for the prosodic half: 0 = reference only, 1 = sampled only); durations are predicted, the text
features expanded by a hard alignment, F0 and energy predicted, and the decoder renders the waveform
(the last 50 samples, a click, are dropped as in the original).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from munch import Munch
from styletts2.Modules.diffusion.sampler import ADPM2Sampler, DiffusionSampler, KarrasSchedule
from torch import Tensor

from ..speech_data.audio import load_audio, mel_spectrogram
from ..speech_data.phonemes import Phonemizer
from .data.text import tokenize
from .losses import seeded


@dataclass(frozen=True)
class InferenceSettings:
    """The official inference settings (LibriTTS demo)."""

    alpha: float = 0.3
    beta: float = 0.7
    diffusion_steps: int = 5
    embedding_scale: float = 1.0
    reference_trim_db: float = 30.0
    max_token_frames: int | None = None  # cap on predicted frames per token (None: uncapped, as the original)


class Synthesizer:
    """Zero-shot TTS with a built (and possibly adapted) StyleTTS 2 `model` (13-module Munch).

    `decoder_type` is ``model_params.decoder.type`` ("istftnet" or "hifigan": the latter shifts the aligned
    features by one frame, as the official code does). `config`, the model's official config, is kept for
    callers that need it. Reference styles are cached per file.
    """

    def __init__(self, model: Munch, decoder_type: str = "istftnet", phonemizer: Phonemizer | None = None,
                 settings: InferenceSettings = InferenceSettings(), device: str | torch.device = "cpu",
                 seed: int = 0, config: Mapping[str, Any] | None = None) -> None:
        self.model, self.decoder_type, self.settings, self.config = model, decoder_type, settings, config
        self.phonemizer = phonemizer or Phonemizer()
        self.device, self.seed = torch.device(device), seed
        self.sampler = DiffusionSampler(model.diffusion.diffusion, sampler=ADPM2Sampler(),
                                        sigma_schedule=KarrasSchedule(sigma_min=0.0001, sigma_max=3.0, rho=9.0),
                                        clamp=False)
        self._styles: dict[str, Tensor] = {}

    @classmethod
    def from_config(cls, model: Munch, config: Mapping[str, Any], **kwargs: Any) -> Synthesizer:
        """A synthesizer for a model built from an official config (reads the decoder type)."""
        return cls(model, config["model_params"]["decoder"]["type"], config=config, **kwargs)

    @torch.no_grad()
    def reference_style(self, reference: str | os.PathLike) -> Tensor:
        """[acoustic style, prosodic style] of a reference recording, shape (1, 2 * style_dim)."""
        key = str(Path(reference).resolve())
        if key not in self._styles:
            wave = load_audio(reference, mix_to_mono=True, trim_db=self.settings.reference_trim_db)
            mel = mel_spectrogram(torch.from_numpy(wave).to(self.device)).unsqueeze(0).unsqueeze(1)
            self._styles[key] = torch.cat([self.model.style_encoder(mel), self.model.predictor_encoder(mel)], -1)
        return self._styles[key]

    def tokens(self, text: str) -> Tensor:
        """Token ids (1, L) with the leading pad token, as the official inference feeds them."""
        ids, unknown = tokenize(self.phonemizer([text])[0])
        if unknown:
            raise ValueError(f"phonemes of {text!r} hold symbols StyleTTS 2 does not know: {dict(unknown)}")
        return torch.tensor([[0, *ids]], device=self.device)

    def _shift(self, features: Tensor) -> Tensor:
        if self.decoder_type != "hifigan":
            return features
        shifted = torch.zeros_like(features)
        shifted[:, :, 0] = features[:, :, 0]
        shifted[:, :, 1:] = features[:, :, :-1]
        return shifted

    def __call__(self, text: str, reference: str | os.PathLike, seed: int | None = None) -> np.ndarray:
        """Speech for `text` in the voice of `reference`: float32 (samples,) at 24 kHz. Every random draw
        (diffusion noise and sampler, the decoder's harmonic and noise sources) comes from `seed` (default:
        the synthesizer's), so the same call gives the same wave."""
        with torch.no_grad(), seeded(self.seed if seed is None else seed, self.device):
            return self._synthesize(text, reference)

    def _synthesize(self, text: str, reference: str | os.PathLike) -> np.ndarray:
        m, s = self.model, self.settings
        for module in m.values():
            module.eval()
        tokens = self.tokens(text)
        lengths = torch.tensor([tokens.shape[1]], device=self.device)
        text_mask = torch.zeros_like(tokens, dtype=torch.bool)
        ref_s = self.reference_style(reference)
        style_dim = ref_s.shape[-1] // 2

        t_en = m.text_encoder(tokens, lengths, text_mask)
        bert_dur = m.bert(tokens, attention_mask=(~text_mask).int())
        d_en = m.bert_encoder(bert_dur).transpose(-1, -2)
        noise = torch.randn((1, 1, 2 * style_dim), device=self.device)
        s_pred = self.sampler(noise=noise, embedding=bert_dur, embedding_scale=s.embedding_scale,
                              features=ref_s, num_steps=s.diffusion_steps).squeeze(1)
        acoustic = s.alpha * s_pred[:, :style_dim] + (1 - s.alpha) * ref_s[:, :style_dim]
        prosodic = s.beta * s_pred[:, style_dim:] + (1 - s.beta) * ref_s[:, style_dim:]

        d = m.predictor.text_encoder(d_en, prosodic, lengths, text_mask)
        x, _ = m.predictor.lstm(d)
        duration = torch.sigmoid(m.predictor.duration_proj(x)).sum(-1)
        frames = torch.round(duration.squeeze(0)).clamp(min=1, max=s.max_token_frames).long()
        alignment = torch.zeros(tokens.shape[1], int(frames.sum()), device=self.device)
        ends = frames.cumsum(0)
        for i, (start, end) in enumerate(zip((ends - frames).tolist(), ends.tolist())):
            alignment[i, start:end] = 1
        en = self._shift(d.transpose(-1, -2) @ alignment.unsqueeze(0))
        f0, energy = m.predictor.F0Ntrain(en, prosodic)
        asr = self._shift(t_en @ alignment.unsqueeze(0))
        wave = m.decoder(asr, f0, energy, acoustic)
        return wave.squeeze().float().cpu().numpy()[..., :-50]
