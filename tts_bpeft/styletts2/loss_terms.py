"""The per-utterance pieces of the StyleTTS 2 generator objective (`tts_bpeft.styletts2.losses`): the
multi-resolution mel spectral convergence, the hard monotonic alignment, the duration L1 and BCE, and the
length check an utterance must pass. Each works on one utterance, as the objective runs them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monotonic_align import maximum_path
from torch import Tensor

from tts_bpeft.styletts2.device_safe import MIN_STYLE_FRAMES

MEL_FFT_SIZES = (1024, 2048, 512)
"""The STFT sizes of the official ``MultiResolutionSTFTLoss``, in its order."""


def mel_convergence(
    prediction: Tensor, target: Tensor, stft_losses: Sequence[torch.nn.Module]
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Multi-resolution log-mel spectral convergence of one waveform pair, as the official
    ``MultiResolutionSTFTLoss`` computes it for a batch of one.

    Args:
        prediction, target: waveforms (1, samples) at 24 kHz; `target` is detached.
        stft_losses: the official ``STFTLoss`` modules (their ``to_mel`` transforms are used).
    Returns:
        the mean over resolutions of ``sum|y - x| / sum|y|`` (0-dim), and per resolution the normalised
        log-mels ``(log(1e-5 + mel) + 4) / 4`` of prediction and target, each (1, 128, frames).
    """
    convergences, mels = [], []
    for stft_loss in stft_losses:
        to_mel = stft_loss.to_mel.to(prediction.device)
        x_mel = (torch.log(1e-5 + to_mel(prediction)) + 4) / 4
        y_mel = ((torch.log(1e-5 + to_mel(target)) + 4) / 4).detach()
        convergences.append((y_mel - x_mel).abs().sum() / y_mel.abs().sum())
        mels.append((x_mel, y_mel))
    return torch.stack(convergences).mean(), mels


def monotonic_alignment(attention: Tensor) -> Tensor:
    """Hard monotonic alignment (B, L, T) maximising the summed soft `attention` (B, L, T) along the path.

    Every one of the T frames is given exactly one of the L tokens, token indices never decrease, the path
    runs from (0, 0) to (L - 1, T - 1), so each token gets at least one frame and durations ``sum(-1)`` add
    up to T. ``monotonic_align.maximum_path`` assigns one column per row of its (b, rows, cols) input, so it
    is given the (B, T, L) transpose. Needs T >= L.
    """
    n_tokens, n_frames = attention.shape[-2:]
    if n_frames < n_tokens:
        raise ValueError(
            f"monotonic alignment needs at least as many aligned frames as tokens; "
            f"got {n_frames} frames for {n_tokens} tokens"
        )
    frames_first = attention.detach().transpose(1, 2).contiguous()
    return maximum_path(frames_first, torch.ones_like(frames_first)).transpose(1, 2)


def duration_terms(logits: Tensor, durations: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Duration L1 and BCE of one utterance.

    Args:
        logits: (L, max_dur) duration-predictor logits; step j of token i is "duration > j".
        durations: (L,) aligner durations in aligned (half-rate) frames.
    Returns:
        L1 between ``sum_j sigmoid(logits)`` and `durations` over tokens 1..L-2 (first and last excluded, as
        in the original), BCE of the logits against the step targets over all tokens, and the expected
        durations (L,).
    """
    steps = (torch.arange(logits.shape[-1], device=logits.device) < durations[:, None]).to(logits.dtype)
    expected = torch.sigmoid(logits).sum(dim=1)
    n = logits.shape[0]
    dur = F.l1_loss(expected[1 : n - 1], durations[1 : n - 1])
    ce = F.binary_cross_entropy_with_logits(logits.flatten(), steps.flatten())
    return dur, ce, expected


def check_lengths(batch: Any, i: int) -> None:
    """Raise ValueError, naming the utterance, when utterance `i` is too short for the objective: the duration
    loss needs 3 tokens, the decoder segment's style encoders 80 frames (so 82 mel frames in all)."""
    n_tokens = int(batch.token_lengths[i])
    frames = int(batch.mel_lengths[i]) // 2 * 2
    where = f"utterance {i} ({batch.paths[i]})" if hasattr(batch, "paths") else f"utterance {i}"
    if n_tokens < 3:
        raise ValueError(f"{where}: {n_tokens} tokens; the duration loss needs at least 3")
    if frames < MIN_STYLE_FRAMES + 2:
        raise ValueError(
            f"{where}: {frames} mel frames; needs at least {MIN_STYLE_FRAMES + 2} "
            f"(style encoders need {MIN_STYLE_FRAMES} frames of the decoder segment)"
        )
