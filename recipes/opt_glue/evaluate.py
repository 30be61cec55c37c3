"""Evaluate an OPT adapter: task accuracy or target perplexity, and forgetting on pre-training text.

    python recipes/opt_glue/evaluate.py task_type=glue task=sst2 adapter=runs/opt_glue/sst2_kfac/adapter
    python recipes/opt_glue/evaluate.py model=tiny/model task_type=glue task=sst2 adapter=tiny/run/adapter \
        glue.file=tiny/sst2_dev.tsv forgetting.files=[tiny/wiki_heldout.jsonl] forgetting.skip_documents=0 \
        forgetting.block_size=64

Forgetting = token-weighted perplexity of the causal LM on held-out pre-training documents (first
``block_size`` tokens of each): for a GLUE adapter the fine-tuned backbone (LoRA merged) is put under the
pre-trained LM head; ``adapter=null`` gives the pre-trained baseline.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from peft import PeftModel

from tts_bpeft.text import (
    GLUE_TASKS,
    accuracy,
    causal_lm_with_backbone,
    classification_loader,
    document_blocks,
    encode_examples,
    lm_loader,
    load_causal_lm,
    load_classifier,
    load_glue,
    load_tokenizer,
    packed_blocks,
    perplexity,
)
from tts_bpeft.text.recipe import TaskType, documents, finish, log, model_path, path


def run(cfg: DictConfig) -> dict:
    """Compute the metrics and write them (JSON); returns the record."""
    task_type = TaskType.parse(cfg.task_type, "task_type")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_path(cfg.tokenizer))
    pad = tokenizer.pad_token_id
    adapter = path(cfg.adapter)
    metrics: dict = {"adapter": adapter, "task_type": str(task_type)}
    base_lm = load_causal_lm(model_path(cfg.model))
    if task_type == TaskType.GLUE:
        lm = base_lm
        if adapter is not None:
            task = GLUE_TASKS[cfg.task]
            classifier = PeftModel.from_pretrained(load_classifier(model_path(cfg.model), task.num_labels, pad),
                                                   adapter).eval()
            dev = load_glue(cfg.task, "validation", path(cfg.glue.file), cfg.glue.max_examples)
            loader = classification_loader(encode_examples(tokenizer, dev, cfg.glue.max_length), pad,
                                           cfg.glue.batch_size)
            metrics.update({f"task_{k}": v for k, v in accuracy(classifier, loader).items()})
            lm = causal_lm_with_backbone(classifier, base_lm)
    else:
        lm = base_lm if adapter is None else PeftModel.from_pretrained(base_lm, adapter).eval()
        target = packed_blocks(tokenizer, documents(cfg.target), cfg.target.block_size)
        metrics.update({f"target_{k}": v for k, v in
                        perplexity(lm, lm_loader(target, pad, cfg.target.batch_size), desc="target").items()})
    held = documents(cfg.forgetting, max_documents=cfg.forgetting.num_documents,
                     skip_documents=cfg.forgetting.skip_documents)
    blocks = document_blocks(tokenizer, held, cfg.forgetting.block_size)
    metrics.update({f"forgetting_{k}": v for k, v in
                    perplexity(lm, lm_loader(blocks, pad, cfg.forgetting.batch_size), desc="forgetting").items()})
    metrics["forgetting_documents"] = len(blocks)
    if cfg.output:
        out = Path(path(cfg.output))
    else:
        out = Path(adapter) / "evaluate.json" if adapter else Path.cwd() / "evaluate_pretrained.json"
    log.info("writing %s", out)
    return finish(cfg, out.parent, metrics, out.stem)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
