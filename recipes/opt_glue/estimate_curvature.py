"""Estimate the pre-training curvature (KFAC / EWC / EKFAC) of an OPT model on causal-LM text.

    python recipes/opt_glue/estimate_curvature.py model=facebook/opt-350m method=kfac
    python recipes/opt_glue/estimate_curvature.py model=tiny/model data.files=[tiny/wiki.jsonl] \
        data.num_documents=64 data.block_size=64 batch_size=8 output=tiny/curvature_kfac.safetensors

One document = one sample: its first ``data.block_size`` tokens, per-sample loss = mean next-token NLL.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from tts_bpeft import estimate_curvature
from tts_bpeft.text import clm_likelihood, document_blocks, lm_loader, load_causal_lm, load_tokenizer
from tts_bpeft.text.recipe import documents, finish, log, model_path, path


def run(cfg: DictConfig) -> dict:
    """Estimate and save the curvature; returns the record written next to it."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_path(cfg.tokenizer))
    model = load_causal_lm(model_path(cfg.model))
    docs = documents(cfg.data, max_documents=cfg.data.num_documents, skip_documents=cfg.data.skip_documents)
    blocks = document_blocks(tokenizer, docs, cfg.data.block_size)
    log.info("%d documents -> %d blocks of <= %d tokens", len(docs), len(blocks), cfg.data.block_size)
    source = cfg.data.files if cfg.data.files else f"{cfg.data.hub}/{cfg.data.hub_name}:{cfg.data.split}"
    curvature = estimate_curvature(
        model, lm_loader(blocks, tokenizer.pad_token_id, cfg.batch_size), clm_likelihood, method=cfg.method,
        fisher=cfg.fisher, kfac_approx=cfg.kfac_approx, targets=list(cfg.lora.targets), mc_samples=cfg.mc_samples,
        mode=cfg.mode, seed=cfg.seed,
        description=f"{cfg.model}; {len(blocks)} documents of {source}; block {cfg.data.block_size}")
    out = Path(path(cfg.output))
    curvature.save(out)
    metrics = {"output": str(out), "layers": len(curvature.layers), "samples": curvature.samples,
               "tokens": sum(layer.tokens[0] for layer in curvature.layers.values()) // len(curvature.layers)}
    return finish(cfg, out.parent, metrics, out.stem)


@hydra.main(config_path="conf", config_name="estimate_curvature", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
