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
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.eval.asr import load_asr
from tts_bpeft.eval.speaker import load_speaker_encoder
from tts_bpeft.eval.speaker_sets import PAPER_TARGET_SPEAKER, TargetSplit, build_test_sets
from tts_bpeft.eval.synthesis import family_loader
from tts_bpeft.eval.systems import collect_systems, target_speaker
from tts_bpeft.eval.zero_shot import evaluate_zero_shot
from tts_bpeft.family import model_paths
from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import resolve_paths

PATHS = ("data.vctk_root", "similarity.source", "asr.model_dir", "hub_cache", "phoneme_cache", "cache_dir")
"""Settings that name files or folders: made absolute against where the command ran when they exist there
(a hub id or a name stays as it is)."""


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.cpu_threads:
        torch.set_num_threads(int(cfg.cpu_threads))
    paths = [f"model.{key}" for key in model_paths("styletts2")] + list(PATHS)
    settings = resolve_paths(OmegaConf.to_container(cfg, resolve=True), paths, get_original_cwd())
    runs = [str(Path(get_original_cwd(), r)) for r in settings["systems"]["runs"]]
    systems = collect_systems(runs, pretrained=settings["model"] if cfg.systems.pretrained else None, seed=cfg.seed)
    speaker = target_speaker(systems, cfg.speaker or (None if any(s.speaker for s in systems)
                                                      else PAPER_TARGET_SPEAKER))
    finished = [s for s in systems if s.run_dir is not None]
    vctk_root = settings["data"]["vctk_root"] or (finished[0].data.get("vctk_root") if finished else None)
    if not vctk_root:
        raise ValueError("data.vctk_root is not set and no run names one")
    split = TargetSplit.from_runs(systems, limit=cfg.target_utterances, test_utterances=cfg.data.test_utterances,
                                  val_utterances=cfg.data.val_utterances, seed=cfg.seed, mic=cfg.data.mic)
    print(f"systems: {', '.join(s.name for s in systems)}; target {speaker}; VCTK {vctk_root}")
    test_sets = build_test_sets(vctk_root, speaker, list(cfg.unseen.speakers), cfg.unseen.utterances, split,
                                seed=cfg.seed)
    encoder = load_speaker_encoder(cfg.similarity.backend, settings["similarity"]["source"], cfg.device,
                                   settings["hub_cache"])
    asr, why = load_asr(cfg.asr.backend, settings["asr"]["model_dir"], cfg.device, int(cfg.cpu_threads or 0),
                        settings["hub_cache"])
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    loader = family_loader(cfg.device, inference, cfg.seed, settings["phoneme_cache"])
    evaluate_zero_shot(systems, test_sets, out_dir, loader, encoder, asr, why, sim_refs=cfg.similarity.references,
                       inference=inference, seed=cfg.seed, cache_dir=settings["cache_dir"], overwrite=cfg.overwrite,
                       plots=cfg.plots, progress=cfg.progress)


if __name__ == "__main__":
    main()
