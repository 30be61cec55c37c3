"""LoRA fine-tuning of OPT as a causal LM (WikiText-2 / WikiText-103, or local text) with a Laplace prior.

    python recipes/opt_glue/finetune_clm.py data.hub_name=wikitext-2-raw-v1 prior.kind=kfac prior.lam=1  # scale-free
    python recipes/opt_glue/finetune_clm.py model=tiny/model data.files=[tiny/news_train.txt] \
        data.validation_files=[tiny/news_dev.txt] data.block_size=64 prior.curvature=tiny/curvature_kfac.safetensors

Documents are packed into ``data.block_size`` blocks; writes ``<output_dir>/adapter`` and ``finetune.json``
(target perplexity on the validation text; with ``heldout.files``, the perplexity of held-out pre-training
text too: the forgetting). The program is `tts_bpeft.text.recipe.finetune_clm`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tts_bpeft.text.recipe import finetune_clm

run = finetune_clm


@hydra.main(config_path="conf", config_name="finetune_clm", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
