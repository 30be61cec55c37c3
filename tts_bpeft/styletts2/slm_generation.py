"""Speech generated from text, with differentiable durations, for the SLM adversarial term.

The official ``SLMAdversarialLoss`` (StyleTTS 2 ``Modules/slmadv.py``) synthesises speech from a text with the
model's own predicted durations and style, so that the WavLM discriminator's verdict trains the duration
and prosody predictors. Durations are made differentiable by a Gaussian soft alignment
(`soft_alignment`). Here the text is the utterance's own (the original also draws out-of-distribution texts
half of the time) and the style is, with probability 1/2 each, the utterance's target style or one sampled
by the style diffusion; one utterance at a time, so a short utterance is skipped alone (the original skips
the whole batch when fewer than two items are long enough, which with batch 2 and its
``batch_percentage`` 0.5 is always). The decoder runs with its weights detached and the text encoder's
output is detached: as in the original, whose SLM step updates only PL-BERT, its projection, the prosody
predictor and the style diffusion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from munch import Munch
from torch import Tensor
from torch.func import functional_call

HOP = 300


@dataclass(frozen=True)
class GenerationSettings:
    """The official ``slmadv_params``: generated segments hold between ``min_len`` and ``max_len`` mel
    frames (half as many aligned frames); ``sig`` is the soft alignment's Gaussian width (aligned frames);
    the WavLM discriminator trains every ``iter``-th step."""

    min_len: int = 400
    max_len: int = 500
    sig: float = 1.5
    iter: int = 10

    @classmethod
    def from_config(cls, config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                    ) -> GenerationSettings:
        """The official defaults, then a model config's ``slmadv_params``, then the non-null `overrides`."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ValueError(f"unknown slmadv settings {unknown}; known: {sorted(defaults)}")
        values = {**(config.get("slmadv_params") or {}), **overrides}
        return cls(**{k: type(d)(values[k]) for k, d in defaults.items() if k in values})


def soft_alignment(logits: Tensor, sigma: float) -> Tensor:
    """Differentiable token-to-frame alignment (L, T) from duration logits (L, D).

    With ``p = sigmoid(logits)`` (step j of token i: "duration > j"), durations ``d_i = sum_j p_ij``, the
    frame count ``T = round(sum_i d_i)`` and token centres ``c_i = sum_{k<=i} d_k - d_i / 2``, the score of
    token i at frame n is ``sum_{j <= n} logits_ij * exp(-(n - c_i - j + 1)^2 / (2 sigma^2))``, and the
    alignment is its softmax over tokens (each frame's column sums to 1). This is the original's grouped
    convolution of the logits with per-token Gaussians, written out.
    """
    durations = torch.sigmoid(logits).sum(dim=-1)
    frames = int(torch.round(durations.sum()))
    centres = torch.cumsum(durations, dim=0) - durations / 2
    n = torch.arange(frames, device=logits.device, dtype=logits.dtype)
    j = torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)
    offset = n[None, None, :] - centres[:, None, None] - j[None, :, None] + 1  # (L, D, T)
    kernel = torch.exp(-0.5 * offset**2 / sigma**2) * (j[:, None] <= n[None, :])
    return torch.softmax((logits[:, :, None] * kernel).sum(dim=1), dim=0)


def generate_from_text(model: Munch, tokens: Tensor, t_en: Tensor, bert_dur: Tensor, style: Tensor,
                       wave: Tensor, real_frames: int, settings: GenerationSettings
                       ) -> tuple[Tensor, Tensor] | None:
    """A segment of speech synthesised from `tokens` with predicted durations, and a real one as long.

    Args:
        model: the StyleTTS 2 ``Munch``.
        tokens: (1, L) token ids of one utterance.
        t_en: (1, hidden, L) text-encoder output (detached here: the text encoder gets no SLM gradient).
        bert_dur: (1, L, bert hidden) PL-BERT output.
        style: (1, 2 style_dim): acoustic style, then prosodic style.
        wave: (samples,) the utterance's real waveform, 24 kHz, 300 samples per mel frame.
        real_frames: the utterance's aligned (half-rate) frame count.
    Returns:
        (generated, real), each (1, samples), with ``seg`` aligned frames where ``seg = min(max(T // 2 - 1,
        min_len // 2), max_len // 2)`` for T predicted aligned frames, random starts in both; None when the
        prediction or the utterance has at most ``seg`` aligned frames.
    """
    device = tokens.device
    n_tokens = tokens.shape[1]
    style_dim = style.shape[1] // 2
    s_acoustic, s_dur = style[:, :style_dim], style[:, style_dim:]
    lengths = torch.tensor([n_tokens], device=device)
    text_mask = torch.zeros(1, n_tokens, dtype=torch.bool, device=device)
    d_en = model.bert_encoder(bert_dur).transpose(-1, -2)
    logits, _ = model.predictor(d_en, s_dur, lengths, torch.zeros(1, n_tokens, 1, device=device), text_mask)
    attention = soft_alignment(logits[0, :n_tokens], settings.sig)[None]  # (1, L, T)
    frames = attention.shape[-1]
    seg = min(max(frames // 2 - 1, settings.min_len // 2), settings.max_len // 2)
    if frames <= seg or real_frames <= seg:
        return None
    asr = t_en.detach() @ attention
    _, prosody = model.predictor(d_en, s_dur, lengths, attention, text_mask)
    start = int(torch.randint(0, frames - seg, ()))
    f0, energy = model.predictor.F0Ntrain(prosody[..., start : start + seg], s_dur)
    frozen = {name: p.detach() for name, p in model.decoder.named_parameters()}
    generated = functional_call(model.decoder, frozen, (asr[..., start : start + seg], f0, energy, s_acoustic))
    real_start = int(torch.randint(0, real_frames - seg, ()))
    real = wave[2 * real_start * HOP : 2 * (real_start + seg) * HOP].unsqueeze(0)
    return generated.squeeze(1), real
