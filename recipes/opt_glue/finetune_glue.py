"""LoRA fine-tuning of OPT on a GLUE task (SST-2, QQP, QNLI, MNLI) with a Laplace prior.

    python recipes/opt_glue/finetune_glue.py task=sst2 prior.kind=kfac prior.lam=1e5
    python recipes/opt_glue/finetune_glue.py model=tiny/model task=sst2 data.train_file=tiny/sst2_train.tsv \
        data.validation_file=tiny/sst2_dev.tsv prior.curvature=tiny/curvature_kfac.safetensors train.batch_size=8

Writes ``<output_dir>/adapter`` (``PeftModel.save_pretrained``: LoRA + the ``score`` head) and ``finetune.json``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from tts_bpeft.text import (
    GLUE_TASKS,
    accuracy,
    add_lora_with_head,
    classification_loader,
    classification_loss,
    encode_examples,
    load_classifier,
    load_glue,
    load_tokenizer,
)
from tts_bpeft.text.recipe import build_prior, finish, fit_from_config, log, model_path, path


def run(cfg: DictConfig) -> dict:
    """Fine-tune, evaluate accuracy on the validation data, save the adapter; returns the record."""
    torch.manual_seed(cfg.seed)
    task = GLUE_TASKS[cfg.task]
    tokenizer = load_tokenizer(model_path(cfg.tokenizer))
    model = load_classifier(model_path(cfg.model), task.num_labels, tokenizer.pad_token_id)
    model = add_lora_with_head(model, cfg.lora.targets, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout)
    prior = build_prior(cfg.prior, model)
    train = load_glue(cfg.task, "train", path(cfg.data.train_file), cfg.data.max_train_examples, cfg.seed)
    dev = load_glue(cfg.task, "validation", path(cfg.data.validation_file), cfg.data.max_eval_examples, cfg.seed)
    pad = tokenizer.pad_token_id
    train_loader = classification_loader(encode_examples(tokenizer, train, cfg.data.max_length), pad,
                                         cfg.train.batch_size, shuffle=True, seed=cfg.seed)
    dev_loader = classification_loader(encode_examples(tokenizer, dev, cfg.data.max_length), pad,
                                       cfg.train.eval_batch_size)
    log.info("%s: %d train / %d validation examples, prior %s", cfg.task, len(train), len(dev), cfg.prior.kind)
    out = Path(path(cfg.output_dir))
    history = fit_from_config(model, train_loader, classification_loss, prior, cfg.train, out, cfg.seed,
                              lambda epoch: {"validation_accuracy": accuracy(model, dev_loader)["accuracy"]})
    model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    metrics = {**accuracy(model, dev_loader), "history": history, "adapter": str(out / "adapter")}
    if prior is not None:
        metrics["penalty"] = float(prior.penalty(model).detach())
    return finish(cfg, out, metrics, "finetune")


@hydra.main(config_path="conf", config_name="finetune_glue", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
