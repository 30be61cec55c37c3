"""Helpers shared by the OPT recipes: file paths, documents from files or the hub, the prior from the config."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft import Curvature, LaplacePrior
from tts_bpeft.io import save_json
from tts_bpeft.text import load_documents

log = logging.getLogger("opt_glue")


def path(value: str | None) -> str | None:
    """A config path made absolute against the directory the recipe was started from (hydra may chdir)."""
    return None if value in (None, "") else to_absolute_path(str(value))


def paths(value: str | Sequence[str] | None) -> list[str] | None:
    if value in (None, ""):
        return None
    return [path(v) for v in ([value] if isinstance(value, str) else list(value))]


def model_path(value: str) -> str:
    """A hub id stays as is; an existing local folder becomes absolute."""
    local = Path(to_absolute_path(value))
    return str(local) if local.exists() else value


def documents(data: DictConfig, max_documents: int | None = None, skip_documents: int = 0) -> list[str]:
    """Documents from ``data.files`` (local .txt/.jsonl) or ``data.hub`` (+ hub_name, split, streaming)."""
    files = paths(data.get("files"))
    return load_documents(files=files, hub=None if files else data.get("hub"), hub_name=data.get("hub_name"),
                          split=data.get("split", "train"), text_field=data.get("text_field", "text"),
                          max_documents=max_documents, skip_documents=skip_documents,
                          streaming=bool(data.get("streaming", False)), split_on=data.get("split_on", "blank"))


def build_prior(cfg: DictConfig, model: Any) -> LaplacePrior | None:
    """``none`` -> None; ``l2sp`` -> identity precision; ``ewc``/``kfac`` -> the curvature file, checked against
    the model's LoRA targets and base weights."""
    method = cfg.method
    if method == "none":
        return None
    if method == "l2sp":
        return LaplacePrior(None, lam=float(cfg.lam), method="l2sp")
    curvature = Curvature.load(path(cfg.curvature), model)
    lam_per_layer = OmegaConf.to_container(cfg.lam_per_layer) if cfg.get("lam_per_layer") else None
    return LaplacePrior(curvature, lam=float(cfg.lam), lam_per_layer=lam_per_layer, method=method,
                        scaling=cfg.get("scaling", "package"))


def finish(cfg: DictConfig, out_dir: Path, metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """Write ``<name>.json`` (metrics + resolved config) into `out_dir` and log it."""
    record = {"metrics": metrics, "config": OmegaConf.to_container(cfg, resolve=True)}
    save_json(record, out_dir / f"{name}.json")
    log.info("%s: %s", name, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return record
