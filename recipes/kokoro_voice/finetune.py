"""Step 3: learn the new voice (LoRA + the voice's style shift) with the prior.

    python finetune.py name=joe prior=kfac prior.lam=1               # after prepare.py and estimate_curvature.py
    python finetune.py name=joe prior=none                           # plain LoRA
    python finetune.py name=joe prior=l2sp replay.fraction=0.3       # L2-SP, with self-replay of built-in voices

Each configuration gets its own run folder under ``<work_dir>/runs/``; rerunning a killed run resumes it. The
folder holds ``adapter/``, ``voice.pt`` (the new voicepack), ``kokoro-v1_0.pth`` + ``config.json`` (the merged
model for Kokoro's own ``KModel``), ``log.csv``, ``summary.json`` and ``run.json``.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from voice_recipe import absolute, finetune

from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import register_run_name_resolver

register_run_name_resolver()


@hydra.main(version_base="1.3", config_path="conf", config_name="finetune")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    out = Path(HydraConfig.get().runtime.output_dir)
    summary = finetune(absolute(OmegaConf.to_container(cfg, resolve=True)), out)
    last = summary["last"]
    print(f"done: {summary['steps']} steps in {summary['seconds']:.0f} s from {summary['initial_voice']}, last loss "
          f"{last.get('loss', float('nan')):.3f} -> {out}")


if __name__ == "__main__":
    main()
