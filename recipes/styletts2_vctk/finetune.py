"""Fine-tune StyleTTS 2 on one VCTK speaker with LoRA and a Laplace prior (or a baseline system).

    python finetune.py data.vctk_root=/data/VCTK-Corpus-0.92 prior=kfac prior.lam=1
    python finetune.py -m data.vctk_root=... prior=none,ewc,kfac prior.lam=0.3,1,3,10   # a sweep

Each run lands in its own folder, named by a few settings and a hash of all of them (so every job of a sweep
has its own); rerunning a killed run resumes it; a folder holding another configuration, or used by a live
process, is refused.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.family import model_paths
from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import register_run_name_resolver, resolve_paths
from tts_bpeft.styletts2.finetune import run_finetuning

DATA_PATHS = ("data.vctk_root", "data.phoneme_cache", "prior.curvature")
register_run_name_resolver()


@hydra.main(version_base="1.3", config_path="conf", config_name="finetune")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    paths = [f"model.{key}" for key in model_paths("styletts2")] + list(DATA_PATHS)
    settings = resolve_paths(OmegaConf.to_container(cfg, resolve=True), paths, get_original_cwd())
    summary = run_finetuning(settings, Path(HydraConfig.get().runtime.output_dir))
    print(f"done: {summary['steps']} steps in {summary['seconds']:.0f} s -> {HydraConfig.get().runtime.output_dir}")


if __name__ == "__main__":
    main()
