"""What the OPT hydra recipes (``recipes/opt_glue``) share: config paths, documents and the prior from a
config, fine-tuning from a config's ``train`` group, the record each program writes, and the causal-LM
fine-tuning program itself (`finetune_clm`; `select_strength` runs it once per trial).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..choices import Choice
from ..io import save_json
from ..lora import add_lora
from ..prior import LaplacePrior, load_prior
from ..training import CHECKPOINT_NAME
from .data import lm_loader, load_documents, packed_blocks
from .fit import fit
from .losses import clm_loss
from .metrics import perplexity
from .models import load_causal_lm, load_tokenizer

log = logging.getLogger("opt_glue")


class TaskType(Choice):
    """What an OPT adapter was fine-tuned for: a GLUE classification task or causal-LM text."""

    GLUE = "glue"
    CLM = "clm"


def path(value: str | None) -> str | None:
    """A config path made absolute against the directory the recipe was started from (hydra may chdir)."""
    return None if value in (None, "") else to_absolute_path(str(value))


def paths(value: str | Sequence[str] | None) -> list[str] | None:
    """`path` of one value or each of a list; None for an unset value."""
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


def build_prior(cfg: DictConfig, model: nn.Module) -> LaplacePrior | None:
    """The prior of a ``prior`` config group (``kind``: none | l2sp | ewc | kfac | ekfac), curvature files
    checked against the model's LoRA targets and base weights; see `tts_bpeft.prior.load_prior`."""
    options = {k: cfg[k] for k in ("lam", "scaling", "damping", "mu") if cfg.get(k) is not None}
    if cfg.kind not in ("none", "l2sp"):
        options["curvature"] = path(cfg.curvature)
    if cfg.get("lam_per_layer"):
        options["lam_per_layer"] = OmegaConf.to_container(cfg.lam_per_layer)
    if cfg.get("mix"):
        options["mix"] = cfg.mix if cfg.mix == "l2sp" else path(cfg.mix)
    return load_prior(model, cfg.kind, **options)


SETTINGS_NAME = "settings.json"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def claim_output_dir(out_dir: Path, settings: Mapping[str, Any]) -> None:
    """Record a run's resolved settings in ``<out_dir>/settings.json``; refuse (naming the differing keys) a
    folder whose training checkpoint was made with other settings, instead of resuming it as if they
    were the same."""
    recorded = out_dir / SETTINGS_NAME
    if (out_dir / CHECKPOINT_NAME).is_file() and recorded.is_file():
        before, now = _flat(json.loads(recorded.read_text())), _flat(dict(settings))
        differing = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if differing:
            raise ValueError(f"{out_dir}: holds a run with other settings ({', '.join(differing[:8])}); "
                             "choose another output_dir, or delete the folder to start again")
    save_json(dict(settings), recorded)


def fit_and_save(cfg: DictConfig, model: nn.Module, tokenizer: Any, loader: DataLoader,
                 loss_fn: Callable[[nn.Module, Any], Tensor], prior: LaplacePrior | None,
                 evaluate: Callable[[], Mapping[str, float]], metric: str) -> dict[str, Any]:
    """Fine-tune with `tts_bpeft.text.fit` and the ``train`` group's settings (lr, epochs, weight_decay,
    warmup_ratio, max_grad_norm, max_steps), checkpointing in ``output_dir`` and recording
    ``validation_<metric>`` of `evaluate()` after each epoch; save the adapter and the tokenizer in
    ``<output_dir>/adapter``. A rerun resumes the folder's checkpoint if its settings are the same
    (`claim_output_dir`). Returns `evaluate()`'s final metrics, the per-epoch ``history``, the ``adapter``
    folder and, with a prior, the final ``penalty``."""
    out, train = Path(path(cfg.output_dir)), cfg.train
    claim_output_dir(out, OmegaConf.to_container(cfg, resolve=True))
    history = fit(model, loader, loss_fn, out, prior=prior, lr=train.lr, epochs=train.epochs,
                  weight_decay=train.weight_decay, warmup_ratio=train.warmup_ratio, max_grad_norm=train.max_grad_norm,
                  max_steps=train.max_steps, seed=cfg.seed,
                  on_epoch_end=lambda epoch: {f"validation_{metric}": evaluate()[metric]})["history"]
    model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    metrics = {**evaluate(), "history": history, "adapter": str(out / "adapter")}
    if prior is not None:
        metrics["penalty"] = float(prior.penalty(model).detach())
    return metrics


def finish(cfg: DictConfig, out_dir: Path, metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """Write ``<name>.json`` (metrics + resolved config) into `out_dir` and log it; returns the record."""
    record = {"metrics": metrics, "config": OmegaConf.to_container(cfg, resolve=True)}
    save_json(record, out_dir / f"{name}.json")
    log.info("%s: %s", name, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return record


def _split(data: DictConfig, files_key: str, split_key: str) -> DictConfig:
    view = OmegaConf.to_container(data)
    view["files"], view["split"] = data.get(files_key), data.get(split_key)
    return OmegaConf.create(view)


def finetune_clm(cfg: DictConfig) -> dict[str, Any]:
    """LoRA fine-tuning of a causal LM on packed text blocks with the prior (``recipes/opt_glue/finetune_clm.py``):
    saves ``<output_dir>/adapter``, writes and returns the ``finetune.json`` record (validation perplexity,
    per-epoch history, held-out pre-training perplexity with ``heldout.files``/``heldout.hub``, penalty)."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_path(cfg.tokenizer))
    model = add_lora(load_causal_lm(model_path(cfg.model)), list(cfg.lora.targets), r=cfg.lora.r,
                     alpha=cfg.lora.alpha, dropout=cfg.lora.dropout)
    prior = build_prior(cfg.prior, model)
    train_docs = documents(_split(cfg.data, "files", "train_split"), max_documents=cfg.data.max_documents)
    dev_docs = documents(_split(cfg.data, "validation_files", "validation_split"))
    pad, size = tokenizer.pad_token_id, cfg.data.block_size
    train_loader = lm_loader(packed_blocks(tokenizer, train_docs, size), pad, cfg.train.batch_size, shuffle=True,
                             seed=cfg.seed)
    dev_loader = lm_loader(packed_blocks(tokenizer, dev_docs, size), pad, cfg.train.eval_batch_size)
    log.info("%d train blocks, %d validation blocks of %d tokens, prior %s", len(train_loader.dataset),
             len(dev_loader.dataset), size, cfg.prior.kind)
    metrics = fit_and_save(cfg, model, tokenizer, train_loader, clm_loss, prior,
                           lambda: perplexity(model, dev_loader), "perplexity")
    if cfg.get("heldout") and (cfg.heldout.get("files") or cfg.heldout.get("hub")):
        # forgetting: held-out pre-training text under the fine-tuned model
        heldout = lm_loader(packed_blocks(tokenizer, documents(cfg.heldout), cfg.heldout.block_size), pad,
                            cfg.train.eval_batch_size)
        metrics["heldout_perplexity"] = perplexity(model, heldout, desc="held-out ppl")["perplexity"]
    return finish(cfg, Path(path(cfg.output_dir)), metrics, "finetune")
