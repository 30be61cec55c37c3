"""Step 2 (for prior=ewc|kfac|ekfac): the Fisher for the prior, on the LoRA layers of ``lora.preset`` (the ones
finetune.py adapts).

    python estimate_curvature.py name=joe prior=kfac                 # -> <work_dir>/curvature_kfac.safetensors

``curvature.fisher=empirical`` (default; measured better, docs/kokoro.md "Which Fisher"): the fine-tuning
objective's empirical Fisher on other speakers' recordings (``curvature.proxies`` folders, else flite voices
reading ``curvature.proxy_sentences`` sentences). ``curvature.fisher=data-free``: the Monte-Carlo Fisher of the
model's own durations, F0, energy and decoded mel for the built-in voices (``curvature.voices``) speaking
``curvature.sentences`` built-in sentences (`tts_bpeft.kokoro.curvature`); no recordings needed.
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
