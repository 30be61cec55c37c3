"""A StyleTTS 2 release written by a test: the aux models and a trained tiny checkpoint in the release layout
(Utils/ASR/{config.yml, epoch_00080.pth}, Utils/JDC/bst.t7, Utils/PLBERT/{config.yml, step_1000000.t7},
Models/LibriTTS/{config.yml, epochs_2nd_00020.pth}), the config naming its aux models by the official keys."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from styletts2.Utils.ASR.models import ASRCNN
from styletts2.Utils.JDC.model import JDCNet
from styletts2.Utils.PLBERT.util import CustomAlbert
from tiny_model import write_aux_checkpoints
from transformers import AlbertConfig

from tts_bpeft.styletts2.build import TINY_CONFIG, build_styletts2, load_config
from tts_bpeft.styletts2.checkpoints import save_checkpoint

# non-stock sizes: neither the package's Utils configs nor the tiny config's asr_params / plbert_params
ASR = {"input_dim": 80, "hidden_dim": 32, "n_token": 178, "n_layers": 2, "token_embedding_dim": 48}
PLBERT = {"vocab_size": 178, "hidden_size": 48, "embedding_size": 32, "num_attention_heads": 2,
          "intermediate_size": 96, "max_position_embeddings": 512, "num_hidden_layers": 1, "dropout": 0.1}


def write_release(root: Path, models: str = "Models/LibriTTS") -> dict:
    """The release under `root`; returns {'root', 'config', 'checkpoint' (paths), 'aux' (the aux modules by
    kind), 'trained' (the model the checkpoint holds)}."""
    for sub in ("Utils/ASR", "Utils/JDC", "Utils/PLBERT", models):
        (root / sub).mkdir(parents=True)
    (root / "Utils/ASR/config.yml").write_text(yaml.safe_dump({"model_params": ASR, "epochs": 80}))
    (root / "Utils/PLBERT/config.yml").write_text(yaml.safe_dump({"model_params": PLBERT, "log_dir": "Checkpoint"}))
    torch.manual_seed(3)
    aux = {"asr": ASRCNN(**ASR), "pitch": JDCNet(num_class=1, seq_len=192),
           "plbert": CustomAlbert(AlbertConfig(**PLBERT))}
    written = write_aux_checkpoints(root / "Utils", aux)
    written["asr"].rename(root / "Utils/ASR/epoch_00080.pth")
    written["pitch"].rename(root / "Utils/JDC/bst.t7")
    written["plbert"].rename(root / "Utils/PLBERT/step_1000000.t7")
    config = {k: v for k, v in load_config(TINY_CONFIG).items() if k not in ("asr_params", "plbert_params")}
    config.update(ASR_config="Utils/ASR/config.yml", ASR_path="Utils/ASR/epoch_00080.pth",
                  F0_path="Utils/JDC/bst.t7", PLBERT_dir="Utils/PLBERT/")
    config_path = root / models / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    torch.manual_seed(4)
    trained = build_styletts2(config, aux_configs={"asr": root / "Utils/ASR/config.yml",
                                                   "plbert": root / "Utils/PLBERT/config.yml"})
    checkpoint = save_checkpoint(trained, root / models / "epochs_2nd_00020.pth")
    return {"root": root, "config": config_path, "checkpoint": checkpoint, "aux": aux, "trained": trained}
