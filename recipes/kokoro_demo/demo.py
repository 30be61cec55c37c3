"""`make demo`: a new voice for Kokoro-82M without breaking the voices it has.

A male US voice (piper's ``en_US-joe-medium``, offline) reads sentences; Kokoro-82M (the offline weights) learns
it as a new voicepack plus LoRA, six ways: plain LoRA, L2-SP, EWC, KFAC, damped KFAC (Laplace priors from the
empirical Fisher of the fine-tuning objective on other speakers' recordings, flite voices) and self-replay (the
original model's own outputs for its built-in voices mixed into the same steps). Each is measured on real speech
(`tts_bpeft.eval.forgetting`): how the built-in voices moved (speaker similarity of their new to their old
output, WER) and how the new voice sounds
(similarity to held-out recordings, WER), and compared at equal target quality on a front over each system's
strength (`tts_bpeft.kokoro.comparison`).

Writes ``<out_dir>/table.md``, ``results.json``, ``tradeoff.png`` and ``before_after/*.wav``; every stage is
cached, so a rerun takes a minute or two. Overrides: ``python recipes/kokoro_demo/demo.py comparison.steps=40``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.kokoro.comparison import ComparisonSettings, compare_systems
from tts_bpeft.quiet import silence_known_warnings


@hydra.main(version_base="1.3", config_path="conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    torch.set_num_threads(int(cfg.threads))
    fields = OmegaConf.to_container(cfg.comparison, resolve=True)
    settings = ComparisonSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    compare_systems(settings, Path(to_absolute_path(cfg.out_dir)), cfg.speaker_backend, cfg.asr_backend)


if __name__ == "__main__":
    main()
