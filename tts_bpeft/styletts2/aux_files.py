"""The auxiliary model files an official StyleTTS 2 ``config.yml`` names, found as the official code finds them.

The official config names the text aligner by ``ASR_config`` (its ``config.yml``) and ``ASR_path`` (its
``{'model': state}`` checkpoint), the pitch extractor by ``F0_path`` (JDC ``{'net': state}``) and PL-BERT by
``PLBERT_dir`` (a folder with ``config.yml`` and ``step_<N>.t7`` files; the highest step is used, as the
official ``load_plbert`` does) or, in the pip package's configs, by ``PLBERT_config`` + ``PLBERT_path``.

The official scripts run from the repository root, so these paths (``Utils/ASR/config.yml``, ...) are relative
to the working directory. A relative path is looked up in the working directory first, then beside the config
file and in its parent folders (the release layout ``Models/LibriTTS/config.yml`` + ``Utils/...`` two folders
up), then under any extra ``roots`` (a release's fetched ``Utils/``, `tts_bpeft.styletts2.release`), and the first
existing one is used. A missing file raises `FileNotFoundError` naming the config file, the
key and every place looked in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASR_KEYS = ("ASR_config", "ASR_path")
PITCH_KEY = "F0_path"
PLBERT_KEYS = ("PLBERT_dir", "PLBERT_config", "PLBERT_path")


@dataclass(frozen=True)
class AuxFiles:
    """The aux model files of one official config: ``configs`` {'asr', 'plbert': config.yml paths} and
    ``checkpoints`` {'asr', 'pitch', 'plbert': weight files}, each with ``keys[kind]`` the config key that
    named it (for error messages)."""

    config: Path
    configs: dict[str, Path]
    checkpoints: dict[str, Path]
    keys: dict[str, str]


def candidates(value: str | os.PathLike, config_path: Path, roots: Sequence[Path] = ()) -> list[Path]:
    """Where a path named in `config_path` may be: itself if absolute; else the working directory, the config's
    folder, its two parent folders and then `roots`, in that order."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    folder = config_path.resolve().parent
    return [Path.cwd() / path, folder / path, folder.parent / path, folder.parent.parent / path,
            *(Path(root) / path for root in roots)]


def resolve(value: str | os.PathLike, config_path: Path, key: str, folder: bool = False,
            roots: Sequence[Path] = ()) -> Path:
    """The first existing file (or `folder`) among `candidates`; else `FileNotFoundError` naming the key."""
    places = candidates(value, config_path, roots)
    for place in places:
        if place.is_dir() if folder else place.is_file():
            return place
    looked = "\n  ".join(str(p) for p in places)
    raise FileNotFoundError(
        f"{config_path}: {key}: {str(value)!r} names no {'folder' if folder else 'file'}; looked in\n  {looked}\n"
        f"Put the official file there (the StyleTTS 2 repository's Utils/ folder), or set {key} in the config to "
        f"its path.")


def latest_step(folder: Path, config_path: Path, key: str) -> Path:
    """The ``step_<N>.t7`` file with the highest N in a PL-BERT folder."""
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"step_(\d+)\.t7", p.name))]
    if not steps:
        raise FileNotFoundError(f"{config_path}: {key}: {folder} holds no step_<N>.t7 PL-BERT checkpoint")
    return max(steps)[1]


def official_aux_files(config_path: str | os.PathLike, config: Mapping[str, Any], roots: Sequence[Path] = ()
                       ) -> AuxFiles | None:
    """The aux files named by the official keys of `config` (read from `config_path`), resolved (relative paths
    also under `roots`); None when the config names none of them (e.g. the tiny build, whose ``asr_params`` /
    ``plbert_params`` give the shapes). A config that names some must name all three models."""
    path = Path(config_path)
    named = [k for k in (*ASR_KEYS, PITCH_KEY, *PLBERT_KEYS) if config.get(k)]
    if not named:
        return None
    missing = [k for k in (*ASR_KEYS, PITCH_KEY) if not config.get(k)]
    if not (config.get("PLBERT_dir") or (config.get("PLBERT_config") and config.get("PLBERT_path"))):
        missing.append("PLBERT_dir")
    if missing:
        raise ValueError(f"{path}: names {named} but not {missing}; an official config names all of "
                         f"{[*ASR_KEYS, PITCH_KEY, 'PLBERT_dir']}")
    configs = {"asr": resolve(config["ASR_config"], path, "ASR_config", roots=roots)}
    checkpoints = {"asr": resolve(config["ASR_path"], path, "ASR_path", roots=roots),
                   "pitch": resolve(config[PITCH_KEY], path, PITCH_KEY, roots=roots)}
    keys = {"asr_config": "ASR_config", "asr": "ASR_path", "pitch": PITCH_KEY}
    if config.get("PLBERT_dir"):
        folder = resolve(config["PLBERT_dir"], path, "PLBERT_dir", folder=True, roots=roots)
        configs["plbert"] = resolve(folder / "config.yml", path, "PLBERT_dir")
        checkpoints["plbert"] = latest_step(folder, path, "PLBERT_dir")
        keys.update(plbert_config="PLBERT_dir", plbert="PLBERT_dir")
    else:
        configs["plbert"] = resolve(config["PLBERT_config"], path, "PLBERT_config", roots=roots)
        checkpoints["plbert"] = resolve(config["PLBERT_path"], path, "PLBERT_path", roots=roots)
        keys.update(plbert_config="PLBERT_config", plbert="PLBERT_path")
    return AuxFiles(path, configs, checkpoints, keys)
