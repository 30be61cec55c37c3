"""Step 2 (for prior=ewc|kfac|ekfac): the data-free Fisher of the base model's own outputs.

    python estimate_curvature.py name=joe prior=kfac                 # -> <work_dir>/curvature_kfac.safetensors

Built-in voices (``curvature.voices``, default all) speak ``curvature.sentences`` built-in sentences each; the
Monte-Carlo Fisher of their durations, F0, energy and decoded mel (`tts_bpeft.kokoro.curvature`) is measured
on the LoRA layers of ``lora.preset`` (the ones finetune.py adapts).
"""

import hydra
from omegaconf import DictConfig, OmegaConf
from voice_recipe import absolute, estimate

from tts_bpeft.quiet import silence_known_warnings


@hydra.main(version_base="1.3", config_path="conf", config_name="estimate_curvature")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    print(f"wrote {estimate(absolute(OmegaConf.to_container(cfg, resolve=True)))}")


if __name__ == "__main__":
    main()
