"""Kokoro-82M's original release from the Hugging Face hub (``hexgrad/Kokoro-82M``).

The repository holds ``config.json``, ``kokoro-v1_0.pth`` (fp32 weights in Kokoro's checkpoint format) and
``voices/<name>.pt`` (one voicepack each, e.g. ``af_heart``). Files are fetched with
``huggingface_hub.hf_hub_download`` into the hub cache (``$HF_HOME/hub/models--hexgrad--Kokoro-82M/``), so
they are downloaded once and ``HF_HUB_OFFLINE=1`` then works from that cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tts_bpeft.kokoro.architecture import REPO_ID, build_kmodel, load_kokoro_state_dict
from tts_bpeft.kokoro.checkpoint import read_kokoro_checkpoint
from tts_bpeft.kokoro.voices import load_voicepack

WEIGHTS_FILE = "kokoro-v1_0.pth"


def _download(filename: str, repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))


def hub_config(repo_id: str = REPO_ID, revision: str | None = None) -> dict:
    """The release's ``config.json`` (architecture and phoneme vocabulary)."""
    return json.loads(_download("config.json", repo_id, revision).read_text(encoding="utf-8"))


def load_hub_kokoro(repo_id: str = REPO_ID, revision: str | None = None) -> torch.nn.Module:
    """Kokoro-82M (``KModel``, eval mode, CPU, fp32) from the hub release (or its local cache)."""
    weights = _download(WEIGHTS_FILE, repo_id, revision)
    model = build_kmodel(hub_config(repo_id, revision))
    load_kokoro_state_dict(model, read_kokoro_checkpoint(weights), str(weights))
    return model


def hub_voicepack(name: str, repo_id: str = REPO_ID, revision: str | None = None) -> torch.Tensor:
    """The voicepack ``voices/<name>.pt`` of the hub release, ``[510, 1, 256]``."""
    return load_voicepack(_download(f"voices/{name}.pt", repo_id, revision))
