"""Helpers shared by the OPT recipes: file paths, documents from files or the hub, the prior from the config."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft import LaplacePrior, load_prior
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
    """The prior of ``cfg.prior`` (``method``: none | l2sp | ewc | kfac | ekfac), curvature files checked against the
    model's LoRA targets and base weights; see `tts_bpeft.prior.load_prior`."""
    options = {k: cfg[k] for k in ("lam", "scaling", "damping", "mu") if cfg.get(k) is not None}
    if cfg.method not in ("none", "l2sp"):
        options["curvature"] = path(cfg.curvature)
    if cfg.get("lam_per_layer"):
        options["lam_per_layer"] = OmegaConf.to_container(cfg.lam_per_layer)
    if cfg.get("mix"):
        options["mix"] = cfg.mix if cfg.mix == "l2sp" else path(cfg.mix)
    return load_prior(model, cfg.method, **options)


def finish(cfg: DictConfig, out_dir: Path, metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """Write ``<name>.json`` (metrics + resolved config) into `out_dir` and log it."""
    record = {"metrics": metrics, "config": OmegaConf.to_container(cfg, resolve=True)}
    save_json(record, out_dir / f"{name}.json")
    log.info("%s: %s", name, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return record
