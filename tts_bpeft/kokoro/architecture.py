"""Kokoro-82M's torch classes, imported without Kokoro's text pipeline, and the model built from a config.

The ``kokoro`` package (0.9.4) holds the network (``kokoro.model.KModel``, ``kokoro.modules``,
``kokoro.istftnet``) beside its text pipeline. Its ``__init__`` imports the pipeline, which imports
``misaki.en`` (spacy, num2words, and an espeak library set process-wide), and ``KModel.__init__`` downloads
``config.json`` and the weights from the hub unless both are given. This module avoids both:

- :func:`kokoro_modules` registers ``kokoro`` as a bare namespace (its folder, its ``__init__`` not run) and
  then imports only ``kokoro.model``; so ``misaki`` need not even be installed (the ``kokoro`` extra installs
  the package with ``--no-deps``). A ``kokoro`` that was already imported normally is used as it is.
- :func:`build_kmodel` always passes the config as a dict and an empty in-memory state dict, so ``KModel``
  never reaches for the hub; the weights are loaded afterwards by :func:`load_kokoro_state_dict`, strictly.

Shapes (the real config): a voicepack row ``ref_s`` is ``[1, 256]`` (first 128 = acoustic style for the
decoder, last 128 = prosody style for the predictor); audio is 24 kHz mono.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
import warnings
from types import ModuleType
from typing import Any

import torch

KOKORO_VERSION = "0.9.4"
REPO_ID = "hexgrad/Kokoro-82M"
SAMPLE_RATE = 24_000


def kokoro_modules() -> ModuleType:
    """``kokoro.model`` (which defines ``KModel`` and imports ``kokoro.modules`` / ``kokoro.istftnet``).

    Raises ImportError naming the install command when the package is missing.
    """
    if "kokoro" not in sys.modules:
        spec = importlib.util.find_spec("kokoro")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"the Kokoro torch classes need the package kokoro=={KOKORO_VERSION}: "
                f"pip install --no-deps kokoro=={KOKORO_VERSION} (or `make install`, which does it)"
            )
        package = importlib.util.module_from_spec(spec)  # a package object whose __init__ is never executed
        sys.modules["kokoro"] = package
    return importlib.import_module("kokoro.model")


def build_kmodel(config: dict[str, Any]) -> torch.nn.Module:
    """A ``KModel`` with the architecture of `config` (Kokoro's ``config.json`` as a dict) and its own
    random initial weights; nothing is read from disk or the hub. Load weights with
    :func:`load_kokoro_state_dict`."""
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with warnings.catch_warnings():  # Kokoro's own code: old weight_norm, dropout on one-layer LSTMs
        warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="dropout option adds dropout", category=UserWarning)
        model = kokoro_modules().KModel(repo_id=REPO_ID, config=config, model=empty)
    return model.eval()


def load_kokoro_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a flat state dict (``bert.…``, ``predictor.…``, ``decoder.…`` keys) into `model`, strictly.

    Keys that ``KModel`` has but `state` lacks keep their values only when they are the InstanceNorm affine
    parameters, which no Kokoro weight file sets (the export uses plain instance norm, torch's default ones and
    zeros are equivalent), or ``bert.pooler`` (unused). Anything else missing or unexpected raises, naming
    `source`.
    """
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not _may_stay_default(k))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        details = [f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                   f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                   "shape mismatch: " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                  for k in wrong[:3]) if wrong else ""]
        raise ValueError(f"{source}: weights do not fit the Kokoro architecture of the config: "
                         + "; ".join(d for d in details if d)
                         + ". Check that the config and the weights come from the same release.")
    model.load_state_dict(state, strict=False)


def _may_stay_default(key: str) -> bool:
    """InstanceNorm affine parameters (``….norm.weight`` / ``….norm.bias`` inside AdaIN) and BERT's pooler."""
    return key.startswith("bert.pooler.") or key.endswith((".norm.weight", ".norm.bias"))
