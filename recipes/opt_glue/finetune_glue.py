"""LoRA fine-tuning of OPT on a GLUE task (SST-2, QQP, QNLI, MNLI) with a Laplace prior.

    python recipes/opt_glue/finetune_glue.py task=sst2 prior.kind=kfac prior.lam=1   # scale-free lam
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
from tts_bpeft.text.recipe import build_prior, finish, fit_and_save, log, model_path, path


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
    metrics = fit_and_save(cfg, model, tokenizer, train_loader, classification_loss, prior,
                           lambda: accuracy(model, dev_loader), "accuracy")
    return finish(cfg, Path(path(cfg.output_dir)), metrics, "finetune")


@hydra.main(config_path="conf", config_name="finetune_glue", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
