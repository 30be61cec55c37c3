"""The fine-tuning run folder: the one place that writes, reads, loads and exports it, for every family.

A run folder holds:

- ``run.json``: the run's resolved settings (JSON). Fields read here: ``family`` (the model family's
  registry name, `tts_bpeft.family`; runs written before families existed have none and are StyleTTS 2
  runs), ``model`` (the base model's settings, given to the family's ``build``), ``system`` (``"lora"``,
  ``"full"`` or ``"linear"``), ``seed``, and for the evaluation ``prior.kind``, ``prior.lam``, ``speaker``
  and ``data``;
- the result: ``adapter/`` (peft's files, `tts_bpeft.save_adapter`) for a LoRA run, or
  ``trainable.safetensors`` (the trained parameters by ``"<module>.<parameter>"`` name) for the baselines;
- while training and after: ``checkpoint.pt`` (resumable, `tts_bpeft.training`), ``log.csv`` and
  ``summary.json``.

Paths in the model settings may be relative: `load_run` resolves them against the run folder (see
:func:`resolve_paths`), so a folder moved together with its base model files still loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from .family import TTSModel, family, model_paths
from .io import save_json, save_safetensors
from .lora import load_adapter, save_adapter
from .lora.targets import as_module

RUN_SETTINGS = "run.json"
ADAPTER = "adapter"
TRAINABLE = "trainable.safetensors"
LEGACY_FAMILY = "styletts2"
"""The family of a ``run.json`` without a ``family`` field (written before families existed)."""


class IncompleteRunError(ValueError):
    """A run folder without its result (no ``adapter/`` and no ``trainable.safetensors``)."""


def resolve_paths(settings: Mapping[str, Any], keys: Iterable[str], base: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``settings`` whose values at the dotted ``keys`` (e.g. ``"aux.asr"``) are made absolute
    against ``base`` where they are relative paths of something that exists under ``base``. Other values
    (absolute paths, None, names such as StyleTTS 2's ``"tiny"`` config, paths found nowhere) are kept, so
    a missing file is reported by whoever opens it."""
    out = json.loads(json.dumps(dict(settings)))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(last), str) or not node[last]:
            continue
        value = Path(node[last]).expanduser()
        if not value.is_absolute() and (Path(base) / value).exists():
            node[last] = str((Path(base) / value).resolve())
    return out


@dataclass(frozen=True)
class Run:
    """A run folder and its ``run.json`` settings."""

    folder: Path
    settings: dict[str, Any]

    @property
    def family(self) -> str:
        """The model family's registry name."""
        return str(self.settings.get("family") or LEGACY_FAMILY)

    @property
    def system(self) -> str:
        """``"lora"`` (an adapter) or a baseline that trains weights directly (``"full"``, ``"linear"``)."""
        return str(self.settings.get("system", "lora"))

    @property
    def seed(self) -> int:
        """The seed the base model's random weights were drawn with (builds without a checkpoint)."""
        return int(self.settings.get("seed", 0))

    @property
    def result(self) -> Path:
        """The trained weights: ``adapter/`` for LoRA, ``trainable.safetensors`` otherwise."""
        return self.folder / (ADAPTER if self.system == "lora" else TRAINABLE)

    @property
    def finished(self) -> bool:
        """Whether the result has been written."""
        return self.result.exists()

    def model_settings(self) -> dict[str, Any]:
        """The base model's settings, relative paths resolved against the run folder."""
        return resolve_paths(self.settings.get("model") or {}, model_paths(self.family), self.folder)


def write_run(folder: str | os.PathLike, settings: Mapping[str, Any], family_name: str) -> Run:
    """Start a run folder: write ``run.json`` (``settings`` with ``family`` set) atomically."""
    folder = Path(folder)
    settings = {**dict(settings), "family": family_name}
    save_json(settings, folder / RUN_SETTINGS)
    return Run(folder, settings)


def read_run(folder: str | os.PathLike) -> Run:
    """The run of a folder; FileNotFoundError (naming the file) when it has no ``run.json``."""
    folder = Path(folder)
    path = folder / RUN_SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; not a fine-tuning run folder")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the fine-tuning or repair the file") from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got {type(settings).__name__}")
    return Run(folder, settings)


def find_run_dirs(path: str | os.PathLike) -> list[Path]:
    """``path`` itself when it is a run folder (holds ``run.json``), else every run folder below it (a hydra
    multirun folder), sorted. Raises FileNotFoundError when there is none."""
    path = Path(path)
    if (path / RUN_SETTINGS).is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    runs = sorted({p.parent for p in path.rglob(RUN_SETTINGS)})
    if not runs:
        raise FileNotFoundError(f"{path}: no fine-tuning run folder (no {RUN_SETTINGS}) inside")
    return runs


def save_result(run: Run, model: TTSModel, trainable: Mapping[str, Tensor]) -> Path:
    """Write the run's result: the adapter of ``model`` for a LoRA run, else the ``trainable`` parameters
    (by ``"<module>.<parameter>"`` name). Returns its path."""
    if run.system == "lora":  # the adapter names its base: the checkpoint (else the config) it was built from
        base = next((v for v in (model.settings.get("checkpoint"), model.settings.get("config")) if isinstance(v, str)),
                    model.family)
        return save_adapter(model.net, run.result, base_model_name_or_path=base)
    return save_safetensors(dict(trainable), run.result)


def load_run(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[TTSModel, Run]:
    """The fine-tuned model of a run folder, in eval mode: the family rebuilds the base model from the
    run's model settings and seed, then the adapter or the trained weights are loaded into it."""
    run = read_run(folder)
    if not run.finished:
        raise IncompleteRunError(f"{run.folder}: no {run.result.name} (the run has not finished)")
    model = family(run.family).build(run.model_settings(), device, run.seed)
    if run.system == "lora":
        load_adapter(model.net, run.result)
    else:
        root = as_module(model.net)
        for name, value in load_file(str(run.result)).items():
            try:
                param = root.get_parameter(name)
            except AttributeError as err:
                raise ValueError(f"{run.result}: parameter {name!r} is not in the {run.family} model built from "
                                 f"{run.folder / RUN_SETTINGS}; were the model settings changed?") from err
            if param.shape != value.shape:
                raise ValueError(f"{run.result}: {name} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(param.shape)}")
            param.data.copy_(value.to(param.device))
    return model.eval(), run


def export_run(folder: str | os.PathLike, path: str | os.PathLike, device: str | torch.device = "cpu") -> Path:
    """The fine-tuned model of a run as a plain checkpoint in its family's official format (adapters merged
    exactly), written atomically to ``path``."""
    model, run = load_run(folder, device)
    return family(run.family).export(model, path)
