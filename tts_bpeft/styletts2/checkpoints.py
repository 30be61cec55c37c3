"""Official StyleTTS 2 checkpoint files: the model's ``{'net': {module: state}}`` file and the three
auxiliary models' files (ASR aligner, JDC pitch, PL-BERT), loaded strictly with errors that name every
module and key, and written atomically in the released layout."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from munch import Munch
from torch import Tensor, nn

from tts_bpeft.io import atomic_write

UNPREFIXED_MODULES = ("mpd", "msd", "wd")
DATA_PARALLEL_PREFIX = "module."


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; the message names every module and key."""


def _torch_load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state


def strip_prefix(state: Mapping[str, Tensor], prefix: str = DATA_PARALLEL_PREFIX) -> dict[str, Tensor]:
    """`state` with `prefix` removed from every key that starts with it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def state_problems(module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of `state` against `module`'s state dict.

    Keys that are non-persistent buffers of `module` (e.g. ALBERT's ``embeddings.position_ids``, saved by
    older transformers) are not counted as unexpected.
    """
    expected = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if k not in buffers)
    if missing:
        problems.append(f"missing keys {_abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbreviate(unexpected)}")
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(
                f"shape of {key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
            )
    return problems


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"({len(keys)}) [{shown}{', ...' if len(keys) > limit else ''}]"


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Load `state` into `module` after :func:`state_problems` found nothing; else raise
    :class:`CheckpointMismatchError` naming `where` (file and module)."""
    problems = state_problems(module, state)
    if problems:
        raise CheckpointMismatchError(f"{where}: " + "; ".join(problems))
    expected = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)


def load_checkpoint(
    model: Munch, path: str | os.PathLike, modules: Iterable[str] | None = None
) -> dict[str, Any]:
    """Load an official StyleTTS 2 checkpoint ``{'net': {module: state_dict}, ...}`` into `model`, strictly.

    `modules` selects a subset (default: every module of `model`); each must exist in both the model and the
    file. ``module.`` key prefixes (DataParallel) are removed. All problems of all modules are collected and
    raised together as :class:`CheckpointMismatchError`, and then nothing is loaded. Returns the file's other
    entries (e.g. 'epoch', 'iters', 'val_loss', 'optimizer').
    """
    state = _torch_load(path)
    if "net" not in state or not isinstance(state["net"], Mapping):
        raise CheckpointMismatchError(f"{path}: no 'net' entry of per-module state dicts")
    net = state["net"]
    names = list(model) if modules is None else list(modules)
    problems = []
    for name in names:
        if name not in model:
            problems.append(f"module '{name}' is not in the model")
        elif name not in net:
            problems.append(f"module '{name}' is not in the checkpoint (it has {sorted(net)})")
        else:
            problems += [
                f"module '{name}': {p}" for p in state_problems(model[name], strip_prefix(net[name]))
            ]
    if modules is None:
        problems += [
            f"module '{name}' is in the checkpoint but not in the model" for name in net if name not in model
        ]
    if problems:
        raise CheckpointMismatchError(f"{path}:\n  " + "\n  ".join(problems))
    for name in names:
        load_state_strict(model[name], strip_prefix(net[name]), f"{path} module '{name}'")
    return {k: v for k, v in state.items() if k != "net"}


def save_checkpoint(
    model: Munch,
    path: str | os.PathLike,
    modules: Iterable[str] | None = None,
    prefix: bool = True,
    optimizer: Mapping[str, Any] | None = None,
    iters: int = 0,
    val_loss: float = 0.0,
    epoch: int = 0,
) -> Path:
    """Write `model` (or the named `modules`) in the official format, atomically.

    With `prefix`, keys get the ``module.`` prefix on every module but mpd/msd/wd, as in the released files.
    """
    names = list(model) if modules is None else list(modules)
    net = {}
    for name in names:
        head = DATA_PARALLEL_PREFIX if prefix and name not in UNPREFIXED_MODULES else ""
        net[name] = {head + k: v.detach().cpu() for k, v in model[name].state_dict().items()}
    state = {
        "net": net,
        "optimizer": dict(optimizer or {}),
        "iters": iters,
        "val_loss": val_loss,
        "epoch": epoch,
    }
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_asr_checkpoint(aligner: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the official ASR aligner file (``{'model': state_dict, ...}``) into `aligner`, strictly."""
    state = _torch_load(path)
    if "model" not in state:
        raise CheckpointMismatchError(
            f"{path}: ASR aligner checkpoint has no 'model' entry ({sorted(state)})"
        )
    load_state_strict(aligner, strip_prefix(state["model"]), f"{path} (ASR aligner)")
    return aligner


def load_pitch_checkpoint(pitch: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the official JDC pitch file (``{'net': state_dict, ...}``) into `pitch`, strictly."""
    state = _torch_load(path)
    if "net" not in state:
        raise CheckpointMismatchError(f"{path}: JDC pitch checkpoint has no 'net' entry ({sorted(state)})")
    load_state_strict(pitch, strip_prefix(state["net"]), f"{path} (JDC pitch extractor)")
    return pitch


def load_plbert_checkpoint(bert: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the official PL-BERT file into `bert`, strictly.

    The file is ``{'net': {'module.encoder.<albert key>': ..., 'module.<prediction heads>': ...}}``; only the
    ``encoder.`` entries are the ALBERT (the heads are dropped, as the original loader does).
    """
    state = _torch_load(path)
    if "net" not in state:
        raise CheckpointMismatchError(f"{path}: PL-BERT checkpoint has no 'net' entry ({sorted(state)})")
    encoder = strip_prefix(
        {k: v for k, v in strip_prefix(state["net"]).items() if k.startswith("encoder.")}, "encoder."
    )
    if not encoder:
        raise CheckpointMismatchError(f"{path}: PL-BERT checkpoint has no 'encoder.' keys")
    load_state_strict(bert, encoder, f"{path} (PL-BERT)")
    return bert
