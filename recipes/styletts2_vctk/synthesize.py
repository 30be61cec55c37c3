"""Zero-shot synthesis with a pre-trained or fine-tuned StyleTTS 2.

    python synthesize.py run=outputs/finetune/p248/lora_kfac_lam1000.0_nNone reference=ref.wav text="Hello."

Writes one 24 kHz wav per text into ``out_dir`` (relative to the run folder of this command).
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.styletts2.finetune import build_base, load_run
from tts_bpeft.styletts2.synthesize import InferenceSettings, Synthesizer


@hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    if cfg.run:
        model, config, _ = load_run(to_absolute_path(cfg.run), cfg.device)
    else:
        model, config = build_base(OmegaConf.to_container(cfg.model, resolve=True), cfg.device, cfg.seed)
    texts = ([line.strip() for line in Path(to_absolute_path(cfg.texts_file)).read_text().splitlines() if line.strip()]
             if cfg.texts_file else [cfg.text])
    synthesizer = Synthesizer.from_config(model, config, settings=InferenceSettings(**cfg.inference),
                                          device=cfg.device, seed=cfg.seed)
    out_dir = Path(HydraConfig.get().runtime.output_dir) / cfg.out_dir
    reference = to_absolute_path(cfg.reference)
    paths = synthesizer.synthesize_all([(t, reference, out_dir / f"{i:04d}.wav") for i, t in enumerate(texts)],
                                       overwrite=True)
    print(f"wrote {len(paths)} wav(s) to {out_dir}")


if __name__ == "__main__":
    main()
