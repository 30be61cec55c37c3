"""Zero-shot evaluation of the pre-trained StyleTTS 2 and fine-tuning runs on the target and unseen speakers.

    python evaluate.py data.vctk_root=/data/VCTK-Corpus-0.92 model.config=Models/LibriTTS/config.yml \
        model.checkpoint=Models/LibriTTS/epochs_2nd_00020.pth 'systems.runs=[multirun/finetune/p248]'

Writes ``results.csv``, ``results.json``, ``utterances.csv``, ``summary.md`` and PNG plots (trade-off,
per-speaker SIM, training curves) into the run folder, and prints the summary table. Rerunning with the same
inputs reuses the synthesized wavs and the cached scores. The library part is `tts_bpeft.eval.zero_shot`.
"""

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.eval.speaker import load_speaker_encoder
from tts_bpeft.eval.zero_shot import (
    PAPER_TARGET_SPEAKER,
    TargetSplit,
    build_test_sets,
    collect_systems,
    evaluate_zero_shot,
    load_asr,
    styletts2_loader,
    target_speaker,
)
from tts_bpeft.quiet import silence_known_warnings


def _path(value: str | None) -> str | None:
    return to_absolute_path(value) if value and value != "tiny" else value


def _folder_or_id(value: str | None) -> str | None:
    """A model folder made absolute (relative to where the command ran); a hub id or None unchanged."""
    if value and Path(to_absolute_path(value)).exists():
        return to_absolute_path(value)
    return value


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.cpu_threads:
        torch.set_num_threads(int(cfg.cpu_threads))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["config"], model["checkpoint"] = _path(model["config"]), _path(model["checkpoint"])
    model["aux"] = {k: _path(v) for k, v in (model.get("aux") or {}).items()}
    systems = collect_systems([to_absolute_path(r) for r in cfg.systems.runs],
                              pretrained=model if cfg.systems.pretrained else None, seed=cfg.seed)
    speaker = target_speaker(systems, cfg.speaker or (None if any(s.speaker for s in systems)
                                                      else PAPER_TARGET_SPEAKER))
    runs = [s for s in systems if s.run_dir is not None]
    vctk_root = _path(cfg.data.vctk_root) or (runs[0].data.get("vctk_root") if runs else None)
    if not vctk_root:
        raise ValueError("data.vctk_root is not set and no run names one")
    split = TargetSplit.from_runs(systems, limit=cfg.target_utterances, test_utterances=cfg.data.test_utterances,
                                  val_utterances=cfg.data.val_utterances, seed=cfg.seed, mic=cfg.data.mic)
    print(f"systems: {', '.join(s.name for s in systems)}; target {speaker}; VCTK {vctk_root}")
    test_sets = build_test_sets(vctk_root, speaker, list(cfg.unseen.speakers), cfg.unseen.utterances, split,
                                seed=cfg.seed)
    hub_cache = _path(cfg.hub_cache)
    encoder = load_speaker_encoder(cfg.similarity.backend, _folder_or_id(cfg.similarity.source), cfg.device, hub_cache)
    asr, why = load_asr(cfg.asr.backend, _folder_or_id(cfg.asr.model_dir), cfg.device, int(cfg.cpu_threads or 0),
                        hub_cache)
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    loader = styletts2_loader(cfg.device, inference, cfg.seed, _path(cfg.phoneme_cache))
    evaluate_zero_shot(systems, test_sets, out_dir, loader, encoder, asr, why, sim_refs=cfg.similarity.references,
                       inference=inference, seed=cfg.seed, cache_dir=_path(cfg.cache_dir), overwrite=cfg.overwrite,
                       plots=cfg.plots, progress=cfg.progress)


if __name__ == "__main__":
    main()
