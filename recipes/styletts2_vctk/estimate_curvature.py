"""Estimate the curvature of a pre-trained StyleTTS 2 on LibriTTS (KFAC or EWC), for the Laplace prior.

    python estimate_curvature.py libritts.root=/data/LibriTTS model.config=... model.checkpoint=... method=kfac

Writes the curvature file (``output``, relative to the run folder unless absolute) and ``summary.json``.
"""

import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.io import save_json
from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.styletts2.curvature import estimate_styletts2_curvature
from tts_bpeft.styletts2.data.libritts import read_libritts
from tts_bpeft.styletts2.data.text import Phonemizer
from tts_bpeft.styletts2.finetune import build_base
from tts_bpeft.styletts2.presets import add_preset_lora


@hydra.main(version_base="1.3", config_path="conf", config_name="estimate_curvature")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    root = to_absolute_path(cfg.libritts.root)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("config", "checkpoint"):
        if model_cfg[key] and model_cfg[key] != "tiny":
            model_cfg[key] = to_absolute_path(model_cfg[key])
    model, config = build_base(model_cfg, cfg.device, cfg.seed)
    add_preset_lora(model, cfg.lora.preset, r=cfg.lora.r, alpha=cfg.lora.alpha, extra=list(cfg.lora.extra),
                    exclude=list(cfg.lora.exclude))
    corpus = read_libritts(root, subsets=list(cfg.libritts.subsets), num_utterances=cfg.libritts.utterances,
                           seed=cfg.seed)
    cache = cfg.libritts.phoneme_cache or str(Path(root) / ".phonemes.json")
    started = time.time()
    curvature = estimate_styletts2_curvature(
        model, config, corpus.utterances, method=cfg.method, fisher=cfg.fisher, kfac_approx=cfg.kfac_approx,
        terms=list(cfg.terms), batch_size=cfg.batch_size, mc_samples=cfg.mc_samples, max_frames=cfg.max_frames,
        phonemizer=Phonemizer(cache), trim_db=cfg.libritts.trim_db, seed=cfg.seed,
        description=f"LibriTTS {list(cfg.libritts.subsets)} {len(corpus.utterances)} utterances at {root}")
    seconds = time.time() - started
    output = out_dir / cfg.output
    dtype = getattr(torch, cfg.storage_dtype) if cfg.storage_dtype else None
    curvature.save(output, dtype=dtype)
    summary = {"file": str(output), "bytes": output.stat().st_size, "layers": len(curvature.names),
               "samples": curvature.samples, "method": cfg.method, "fisher": cfg.fisher, "seconds": seconds,
               "tokens": {n: curvature.layers[n].tokens for n in curvature.names}}
    save_json(summary, out_dir / "summary.json")
    print(f"{cfg.method} curvature of {len(curvature.names)} layers from {curvature.samples} utterances in "
          f"{seconds:.0f} s -> {output} ({summary['bytes'] / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
