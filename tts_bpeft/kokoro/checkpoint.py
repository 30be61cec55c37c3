"""Kokoro's own checkpoint format (``kokoro-v1_0.pth``): one state dict per top-level module.

The file is ``torch.save({"bert": {...}, "bert_encoder": {...}, "predictor": {...}, "text_encoder": {...},
"decoder": {...}})``; the released file's inner keys carry DataParallel's ``module.`` prefix, which readers
strip. A checkpoint written here loads in ``kokoro.KModel(model=<path>)`` unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
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


def save_kokoro_checkpoint(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a flat ``KModel`` state dict (``bert.…``, ``decoder.…``; e.g. ``model.state_dict()`` or
    ``tts_bpeft.merged_state_dict(model)``) in Kokoro's format, atomically."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, _, inner = key.partition(".")
        if component not in COMPONENTS or not inner:
            raise ValueError(f"{key}: a Kokoro state dict key starts with one of {', '.join(COMPONENTS)}")
        parts.setdefault(component, {})[inner] = value.detach().cpu().contiguous()
    buffer = io.BytesIO()
    torch.save(parts, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
