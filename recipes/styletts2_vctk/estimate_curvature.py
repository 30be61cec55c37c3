"""Estimate the curvature of a pre-trained StyleTTS 2 on LibriTTS (KFAC, EWC or EKFAC), for the Laplace prior.

    python estimate_curvature.py libritts.root=/data/LibriTTS model.config=... model.checkpoint=... method=kfac

Writes the curvature file (``output``, relative to the run folder unless absolute) and ``summary.json``.
The LoRA settings come from the shared ``conf/lora`` group, so they are the fine-tuning's.
"""

import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.family import DataOptions, estimate_pretraining_curvature, family, model_paths
from tts_bpeft.io import save_json
from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import resolve_paths
from tts_bpeft.speech_data.libritts import read_libritts
from tts_bpeft.speech_data.phonemes import default_cache


@hydra.main(version_base="1.3", config_path="conf", config_name="estimate_curvature")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    styletts2 = family("styletts2")
    paths = [f"model.{key}" for key in model_paths("styletts2")] + ["libritts.root", "libritts.phoneme_cache"]
    settings = resolve_paths(OmegaConf.to_container(cfg, resolve=True), paths, get_original_cwd())
    root = settings["libritts"]["root"]
    model = styletts2.build(settings["model"], cfg.device, cfg.seed)
    lora = settings["lora"]
    styletts2.add_preset(model, lora["preset"], r=lora["r"], alpha=lora["alpha"], extra=lora["extra"],
                         exclude=lora["exclude"])
    corpus = read_libritts(root, subsets=list(cfg.libritts.subsets), num_utterances=cfg.libritts.utterances,
                           seed=cfg.seed)
    options = DataOptions(phoneme_cache=Path(settings["libritts"]["phoneme_cache"] or default_cache()),
                          trim_db=cfg.libritts.trim_db, max_frames=cfg.max_frames)
    started = time.time()
    curvature = estimate_pretraining_curvature(
        styletts2, model, corpus.utterances, method=cfg.method, fisher=cfg.fisher, kfac_approx=cfg.kfac_approx,
        terms=list(cfg.terms), batch_size=cfg.batch_size, mc_samples=cfg.mc_samples, options=options, seed=cfg.seed,
        description=f"LibriTTS {list(cfg.libritts.subsets)} {len(corpus.utterances)} utterances at {root}")
    seconds = time.time() - started
    output = out_dir / cfg.output
    rank = cfg.storage.rank
    if rank is not None and cfg.method == "kfac":  # an integer: eigenpairs per factor; a float: a trace share
        curvature = curvature.compress(**({"rank": rank} if isinstance(rank, int) else {"energy": float(rank)}))
    dtype = getattr(torch, cfg.storage.dtype) if cfg.storage.dtype else None
    curvature.save(output, dtype=dtype)
    summary = {"file": str(output), "bytes": output.stat().st_size, "layers": len(curvature.names),
               "samples": curvature.samples, "method": cfg.method, "fisher": cfg.fisher, "seconds": seconds,
               "tokens": {n: curvature.layers[n].tokens for n in curvature.names}}
    save_json(summary, out_dir / "summary.json")
    print(f"{cfg.method} curvature of {len(curvature.names)} layers from {curvature.samples} utterances in "
          f"{seconds:.0f} s -> {output} ({summary['bytes'] / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
