"""Step 4: speak with the fine-tuned model, in the new voice or a built-in one.

    python synthesize.py run=outputs/kokoro_voice/joe/runs/<run> text="Hello there."
    python synthesize.py run=... voice=jf_alpha texts_file=sentences.txt   # a built-in voice after fine-tuning

Writes ``<run>/<out_dir>/0000.wav`` ... (24 kHz).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from voice_recipe import absolute, speak

from tts_bpeft.quiet import silence_known_warnings


@hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    settings = absolute(OmegaConf.to_container(cfg, resolve=True), ("run", "texts_file"))
    texts = ([line.strip() for line in Path(settings["texts_file"]).read_text().splitlines() if line.strip()]
             if settings["texts_file"] else [settings["text"]])
    paths = speak(settings, texts)
    print(f"wrote {len(paths)} wav(s) to {paths[0].parent}")


if __name__ == "__main__":
    main()
