"""Kokoro's own checkpoint format (``kokoro-v1_0.pth``): one state dict per top-level module.

The file is ``torch.save({"bert": {...}, "bert_encoder": {...}, "predictor": {...}, "text_encoder": {...},
"decoder": {...}})``; the released file's inner keys carry DataParallel's ``module.`` prefix, which readers
strip. A checkpoint written here loads in ``kokoro.KModel(model=<path>)`` unchanged.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from tts_bpeft.io import atomic_write

COMPONENTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")


def read_kokoro_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict (``bert.embeddings...``, ``decoder.generator...``) from a Kokoro ``.pth`` file,
    loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Kokoro checkpoint {path} does not exist")
    parts = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(parts, dict) or not set(parts) <= set(COMPONENTS) or not parts:
        found = sorted(parts) if isinstance(parts, dict) else type(parts).__name__
        raise ValueError(f"{path}: a Kokoro checkpoint maps {', '.join(COMPONENTS)} to state dicts; found {found}")
    flat = {}
    for component, state in parts.items():
        for key, value in state.items():
            flat[f"{component}.{key.removeprefix('module.')}"] = value
    return flat


def save_kokoro_checkpoint(model: torch.nn.Module, path: str | Path) -> Path:
    """Write `model`'s weights (a ``KModel``) in Kokoro's format, atomically."""
    parts = {name: {k: v.detach().cpu().contiguous() for k, v in getattr(model, name).state_dict().items()}
             for name in COMPONENTS}
    buffer = io.BytesIO()
    torch.save(parts, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
