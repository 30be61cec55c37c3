"""Kokoro models for the preset and curvature tests: the real architecture (Kokoro-82M's config.json as
kokoro-onnx ships it) and a shrunken one, both with random weights, and short utterances for them."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from tts_bpeft.kokoro.architecture import build_kmodel
from tts_bpeft.kokoro.offline import offline_config
from tts_bpeft.kokoro.predict import KokoroUtterance


def real_config() -> dict:
    """Kokoro-82M's config.json (kokoro-onnx ships it); skips the test when the package is missing."""
    try:
        return offline_config()
    except FileNotFoundError as err:
        pytest.skip(f"Kokoro-82M's config.json is not installed: {err}")


def tiny_config() -> dict:
    """The real config shrunk where Kokoro's classes allow it: a 2-layer 32-wide PL-BERT, one duration-encoder
    layer, style 16, one resblock kernel. The decoder's 1024/512 channels and the 512-wide text states it
    reads are fixed in Kokoro's code, so hidden_dim stays 512."""
    config = copy.deepcopy(real_config())
    config.update(style_dim=16, n_layer=1, max_dur=8)
    config["plbert"].update(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
    config["istftnet"].update(resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
    return config


def kokoro_model(config: dict, seed: int = 0) -> torch.nn.Module:
    """A KModel of `config` with random weights (eval mode). Kokoro initialises its decoder convolutions
    with std 0.01 and its duration projection so that every token lasts about max_dur / 2 frames; the
    weights are kept as they come."""
    torch.manual_seed(seed)
    return build_kmodel(config)


def utterances(config: dict, lengths=(9, 6, 12), seed: int = 0) -> list[KokoroUtterance]:
    """Random token sequences (boundary 0 at both ends) of the given lengths, each with its own style."""
    g = torch.Generator().manual_seed(seed)
    style = 2 * config["style_dim"]
    out = []
    for i, n in enumerate(lengths):
        tokens = torch.zeros(n, dtype=torch.long)
        tokens[1:-1] = torch.randint(1, config["n_token"], (n - 2,), generator=g)
        out.append(KokoroUtterance(f"voice{i % 2}/{i}", tokens, torch.randn(style, generator=g) * 0.5))
    return out


# test modules import these two (autouse there): one thread on the shared cores, Kokoro's warnings quiet
@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Turns on the suite's ``one_thread`` (tests/conftest.py) in the modules that import it."""


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # Kokoro's old-style weight_norm
        warnings.filterwarnings("ignore", message="dropout option adds dropout")
        warnings.filterwarnings("ignore", message="add_lora skipped")
        yield
