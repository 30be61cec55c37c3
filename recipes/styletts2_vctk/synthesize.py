"""Zero-shot synthesis with a pre-trained or fine-tuned StyleTTS 2.

    python synthesize.py run=outputs/finetune/p248/lora_kfac_lam1000.0_nNone reference=ref.wav text="Hello."

Writes one 24 kHz wav per text into ``out_dir`` (relative to the run folder of this command).
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tts_bpeft.family import Voice, family, model_paths
from tts_bpeft.io import write_audio
from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import load_run, resolve_paths
from tts_bpeft.styletts2.curvature import utterance_seed


@hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    styletts2 = family("styletts2")
    paths = [f"model.{key}" for key in model_paths("styletts2")] + ["run", "texts_file", "reference"]
    settings = resolve_paths(OmegaConf.to_container(cfg, resolve=True), paths, get_original_cwd())
    if settings["run"]:
        model, _ = load_run(settings["run"], cfg.device)
    else:
        model = styletts2.build(settings["model"], cfg.device, cfg.seed)
    texts = ([line.strip() for line in Path(settings["texts_file"]).read_text().splitlines() if line.strip()]
             if settings["texts_file"] else [cfg.text])
    synthesizer = styletts2.synthesizer(model, settings["inference"], device=cfg.device, seed=cfg.seed)
    out_dir = Path(HydraConfig.get().runtime.output_dir) / cfg.out_dir
    voice = Voice.clone(settings["reference"])
    for i, text in enumerate(tqdm(texts, desc="synthesizing")):
        seed = utterance_seed(cfg.seed, text, voice.reference.name)  # the same text and voice, the same wave
        write_audio(out_dir / f"{i:04d}.wav", synthesizer(text, voice, seed), synthesizer.sample_rate)
    print(f"wrote {len(texts)} wav(s) to {out_dir}")


if __name__ == "__main__":
    main()
