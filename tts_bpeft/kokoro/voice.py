"""A new Kokoro voice as a learnable shift of a built-in voicepack.

A voicepack (``voices.py``) holds one 256-value style per phoneme count: row ``n - 1`` for ``n`` phonemes,
the acoustic half (decoder) first, then the prosody half (predictor). The new voice keeps the initial
voice's dependence on length and learns one shift ``delta`` (256,) added to every row:
``pack'[r] = pack[r] + delta``. ``delta`` starts at zero, so training starts from the initial voice exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tts_bpeft.io import atomic_write
from tts_bpeft.kokoro.voices import STYLE_WIDTH, check_voicepack


class VoiceShift(nn.Module):
    """The learnable new voice: the initial voicepack (buffer, [510, 1, 256]) plus ``delta`` (parameter, (256,))."""

    def __init__(self, initial: torch.Tensor, source: str = "initial voicepack") -> None:
        super().__init__()
        self.register_buffer("initial", check_voicepack(initial, source).clone())
        self.delta = nn.Parameter(torch.zeros(STYLE_WIDTH))

    def styles(self, phoneme_counts: Sequence[int]) -> torch.Tensor:
        """The style rows (B, 256) for utterances of the given phoneme counts (Kokoro's row ``n - 1``, clamped)."""
        rows = torch.tensor([min(max(n, 1), self.initial.shape[0]) - 1 for n in phoneme_counts])
        return self.initial[rows.to(self.initial.device), 0] + self.delta

    def shifted(self, styles: torch.Tensor, new_voice: torch.Tensor) -> torch.Tensor:
        """`styles` (B, 256) with ``delta`` added to the rows where `new_voice` (B,) bool is True: a batch's
        rows of the initial voicepack become the new voice's, other voices' rows stay fixed."""
        return styles + new_voice.to(styles.device, styles.dtype)[:, None] * self.delta.to(styles.dtype)

    def voicepack(self) -> torch.Tensor:
        """The new voicepack, float32 [510, 1, 256], detached on the CPU."""
        return (self.initial + self.delta).detach().cpu().to(torch.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`voicepack` in Kokoro's format (a tensor ``.pt``, as ``voices/<name>.pt``), atomically."""
        pack = self.voicepack()
        return atomic_write(path, lambda handle: torch.save(pack, handle))
