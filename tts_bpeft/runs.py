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

A folder is one run: `run_name` names it from a few readable settings plus `settings_hash`, a hash of all
the settings that shape the result (all but `NOT_IDENTITY`), so jobs of a sweep over any key get their own
folders. `write_run` refuses to resume a folder whose ``run.json`` holds other settings (naming the keys
that differ), and `run_lock` (a ``run.lock`` file holding the owner's pid and host) refuses a second live
process on one folder; the lock of a process that died (same host, pid gone) is taken over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch import Tensor

from .family import TTSModel, family, model_names, model_paths
from .io import save_json, save_safetensors
from .lora import load_adapter, save_adapter
from .lora.targets import as_module

logger = logging.getLogger(__name__)

RUN_SETTINGS = "run.json"
LOCK = "run.lock"
NOT_IDENTITY = ("hydra", "family", "progress", "checkpoint_every", "device")
"""Top-level settings that do not change what a run computes: left out of its identity and free to change
when a run is resumed."""
ADAPTER = "adapter"
TRAINABLE = "trainable.safetensors"
LEGACY_FAMILY = "styletts2"
"""The family of a ``run.json`` without a ``family`` field (written before families existed)."""


class IncompleteRunError(ValueError):
    """A run folder without its result (no ``adapter/`` and no ``trainable.safetensors``)."""


def resolve_paths(settings: Mapping[str, Any], keys: Iterable[str], base: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``settings`` whose values at the dotted ``keys`` (e.g. ``"aux.asr"``) are made absolute
    against ``base`` where they are relative paths of something that exists under ``base``. Other values
    (absolute paths, None, the families' model names such as StyleTTS 2's ``"tiny"`` or ``"libritts"``
    (`tts_bpeft.family.model_names`, even where ``base`` holds a folder of that name), paths found nowhere)
    are kept, so a missing file is reported by whoever opens it."""
    out = json.loads(json.dumps(dict(settings)))
    names = model_names()
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(last), str) or node[last] in ("", *names):
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


class RunConflictError(RuntimeError):
    """The run folder belongs to another configuration, or another live process trains in it."""


def _identity(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in NOT_IDENTITY}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """8 hex digits of the sha256 of the settings' canonical JSON, `NOT_IDENTITY` keys left out."""
    text = json.dumps(_identity(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(settings: Mapping[str, Any], readable: Iterable[str]) -> str:
    """``<value>_<value>..._<settings_hash>``: the values at the dotted `readable` keys, then the hash that
    tells apart runs equal in those keys. A key may carry a label (``"n=train_utterances"``); numbers and
    None get one (default: the key's last part), strings stand alone: ``lora_kfac_lam1000.0_nNone_1a2b3c4d``."""
    parts = []
    for item in readable:
        label, _, key = item.rpartition("=")
        node: Any = settings
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        parts.append(str(node) if isinstance(node, str) else f"{label or key.rsplit('.', 1)[-1]}{node}")
    return "_".join([*parts, settings_hash(settings)])


def register_run_name_resolver() -> None:
    """Make ``${run_name:key,...}`` usable in hydra configs (e.g. in ``hydra.run.dir``): `run_name` of the
    whole job's config, hydra's own node left out, missing (``???``) values kept as such."""

    def resolve(*keys: str, _root_: DictConfig) -> str:
        raw = OmegaConf.to_container(_root_, resolve=False)
        raw.pop("hydra", None)
        return run_name(OmegaConf.to_container(OmegaConf.create(raw), resolve=True), keys)

    OmegaConf.register_new_resolver("run_name", resolve, replace=True)


def flatten_settings(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{dotted key: leaf value}`` (an empty mapping is a leaf)."""
    if isinstance(settings, Mapping) and settings:
        return {k: v for key, value in settings.items()
                for k, v in flatten_settings(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: settings}


def settings_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` over the identity settings (missing values are None)."""
    a, b = flatten_settings(_identity(old)), flatten_settings(_identity(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def write_run(folder: str | os.PathLike, settings: Mapping[str, Any], family_name: str) -> Run:
    """Start or resume a run folder: write ``run.json`` (``settings`` with ``family`` set) atomically.
    Raises `RunConflictError` naming the differing keys when the folder already holds a run with other
    settings (resuming it would mix two configurations)."""
    folder = Path(folder)
    settings = json.loads(json.dumps({**dict(settings), "family": family_name}, default=str))
    if (folder / RUN_SETTINGS).is_file():
        differences = settings_differences(read_run(folder).settings, settings)
        if differences:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in differences.items()))
            raise RunConflictError(f"{folder / RUN_SETTINGS}: this folder holds a run with other settings ({listed})."
                                   " Choose another output folder (hydra.run.dir), or delete this one to start over")
    save_json(settings, folder / RUN_SETTINGS)
    return Run(folder, settings)


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) and {"pid", "host"} <= set(holder) else None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextmanager
def run_lock(folder: str | os.PathLike, grace_s: float = 10.0) -> Iterator[Path]:
    """Hold ``<folder>/run.lock`` (pid, host, start time) while the block runs; raises `RunConflictError` when a
    live process holds it. The lock of a dead process (same host, pid gone) is taken over, as is an
    unreadable one older than `grace_s` seconds (a process killed while creating it); a lock taken on
    another host is never taken over (its process cannot be checked from here)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, host = folder / LOCK, socket.gethostname()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and time.time() - path.stat().st_mtime < grace_s:
                raise RunConflictError(f"{path}: another process is taking this run folder") from None
            if holder is not None and (holder["host"] != host or _alive(int(holder["pid"]))):
                raise RunConflictError(
                    f"{path}: process {holder['pid']} on {holder['host']} (since {holder.get('started', '?')}) is "
                    "training in this folder; wait for it, or choose another output folder. If that process is "
                    "gone (e.g. another machine crashed), delete the lock file") from None
            logger.warning("%s: taking over the lock of a process that is gone (%s)", path, holder)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, handle)
        break
    try:
        yield path
    finally:
        holder = _holder(path)
        if holder is not None and holder["pid"] == os.getpid() and holder["host"] == host:
            path.unlink(missing_ok=True)


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
