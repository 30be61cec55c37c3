"""LoRA fine-tuning of OPT as a causal LM (WikiText-2 / WikiText-103, or local text) with a Laplace prior.

    python recipes/opt_glue/finetune_clm.py data.hub_name=wikitext-2-raw-v1 prior.method=kfac prior.lam=1e5
    python recipes/opt_glue/finetune_clm.py model=tiny/model data.files=[tiny/news_train.txt] \
        data.validation_files=[tiny/news_dev.txt] data.block_size=64 prior.curvature=tiny/curvature_kfac.safetensors

Documents are packed into ``data.block_size`` blocks; writes ``<output_dir>/adapter`` and ``finetune.json``
(target perplexity on the validation text; with ``heldout.files``, the perplexity of held-out pre-training
text too: the forgetting).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

sys.path.append(str(Path(__file__).resolve().parent))  # for opt_common
from opt_common import build_prior, documents, finish, log, model_path, path  # noqa: E402

from tts_bpeft import add_lora  # noqa: E402
from tts_bpeft.text import clm_loss, finetune, lm_loader, load_causal_lm, load_tokenizer, packed_blocks  # noqa: E402
from tts_bpeft.text import perplexity as corpus_perplexity  # noqa: E402


def _split(data: DictConfig, files_key: str, split_key: str) -> DictConfig:
    view = OmegaConf.to_container(data)
    view["files"], view["split"] = data.get(files_key), data.get(split_key)
    return OmegaConf.create(view)


def run(cfg: DictConfig) -> dict:
    """Fine-tune, evaluate the target perplexity, save the adapter; returns the record."""
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
             len(dev_loader.dataset), size, cfg.prior.method)
    history = finetune(model, train_loader, clm_loss, prior=prior, lr=cfg.train.lr, epochs=cfg.train.epochs,
                       weight_decay=cfg.train.weight_decay, warmup_ratio=cfg.train.warmup_ratio,
                       max_grad_norm=cfg.train.max_grad_norm, max_steps=cfg.train.max_steps, seed=cfg.seed,
                       desc=f"clm ({cfg.prior.method})",
                       on_epoch_end=lambda epoch: {"validation_perplexity": corpus_perplexity(model, dev_loader)
                                                   ["perplexity"]})
    out = Path(path(cfg.output_dir))
    model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    metrics = {**corpus_perplexity(model, dev_loader), "history": history, "adapter": str(out / "adapter")}
    if cfg.get("heldout") and (cfg.heldout.get("files") or cfg.heldout.get("hub")):
        # forgetting: held-out pre-training text under the fine-tuned model
        heldout = lm_loader(packed_blocks(tokenizer, documents(cfg.heldout), cfg.heldout.block_size), pad,
                            cfg.train.eval_batch_size)
        metrics["heldout_perplexity"] = corpus_perplexity(model, heldout, desc="held-out ppl")["perplexity"]
    if prior is not None:
        metrics["penalty"] = float(prior.penalty(model).detach())
    return finish(cfg, out, metrics, "finetune")


@hydra.main(config_path="conf", config_name="finetune_clm", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
