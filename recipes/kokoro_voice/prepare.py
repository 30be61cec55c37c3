"""Step 1: check the recordings, hold some out, choose the initial voice, measure and cache the targets.

    python prepare.py name=joe data.recordings=/data/joe          # a folder of <id>.wav + <id>.txt
    python prepare.py name=p248 data.vctk_root=/data/VCTK-Corpus-0.92 data.speaker=p248

Writes ``<work_dir>/prepared.json`` (train/test lists, the initial voice and, when chosen here, every voice's
objective) and ``<work_dir>/targets/``. Bad recordings are skipped and listed (``data.strict=true`` stops).
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from voice_recipe import absolute, prepare

from tts_bpeft.quiet import silence_known_warnings


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    prepared = prepare(absolute(OmegaConf.to_container(cfg, resolve=True)), Path(HydraConfig.get().runtime.output_dir))
    print(f"{prepared['speaker']}: {len(prepared['train'])} training recordings ({prepared['train_seconds']:.0f} s), "
          f"{len(prepared['test'])} held out; initial voice {prepared['initial_voice']}")


if __name__ == "__main__":
    main()
