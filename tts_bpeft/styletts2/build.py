"""Building StyleTTS 2: official configs, the 13-module model, the package's tiny build, and the
pre-trained model of a run's settings.

The model is the official ``Munch`` of 13 modules that ``styletts2.models.build_model`` returns
(bert, bert_encoder, predictor, decoder, text_encoder, predictor_encoder, style_encoder, diffusion,
text_aligner, pitch_extractor, mpd, msd, wd), with the device-safe classes of
`tts_bpeft.styletts2.device_safe` swapped in. Their layer types: `tts_bpeft.styletts2.inventory`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import styletts2
import torch
import yaml
from munch import Munch
from styletts2.models import build_model
from styletts2.utils import recursive_munch
from styletts2.Utils.ASR.models import ASRCNN
from styletts2.Utils.JDC.model import JDCNet
from styletts2.Utils.PLBERT.util import CustomAlbert
from transformers import AlbertConfig

from .checkpoints import load_asr_checkpoint, load_checkpoint, load_pitch_checkpoint, load_plbert_checkpoint
from .device_safe import make_device_safe, warm_up_spectral_norm

PACKAGE_DIR = Path(styletts2.__file__).resolve().parent
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OFFICIAL_CONFIGS = {
    "libritts": PACKAGE_DIR / "Configs" / "config_libritts.yml",
    "ljspeech": PACKAGE_DIR / "Configs" / "config.yml",
}
TINY_CONFIG = CONFIG_DIR / "tiny.yml"

MODULE_NAMES = (
    "bert",
    "bert_encoder",
    "predictor",
    "decoder",
    "text_encoder",
    "predictor_encoder",
    "style_encoder",
    "diffusion",
    "text_aligner",
    "pitch_extractor",
    "mpd",
    "msd",
    "wd",
)
GENERATOR_MODULES = (
    "bert",
    "bert_encoder",
    "predictor",
    "predictor_encoder",
    "style_encoder",
    "decoder",
    "text_encoder",
    "diffusion",
)
AUX_KINDS = ("asr", "pitch", "plbert")


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A StyleTTS 2 config as a dict: `config` itself (deep-copied) or the YAML file it names."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"StyleTTS 2 config not found: {path}")
    with open(path) as f:
        loaded = yaml.safe_load(f)
    if not isinstance(loaded, dict) or "model_params" not in loaded:
        raise ValueError(f"{path}: not a StyleTTS 2 config (no 'model_params' section)")
    return loaded


def _packaged_params(relative: str) -> dict[str, Any]:
    with open(PACKAGE_DIR / relative) as f:
        return dict(yaml.safe_load(f)["model_params"])


def asr_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """ASRCNN keyword arguments: ``config['asr_params']`` or the official ``Utils/ASR/config.yml``."""
    return dict(config.get("asr_params") or _packaged_params("Utils/ASR/config.yml"))


def plbert_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """AlbertConfig keyword arguments: ``config['plbert_params']`` or the official
    ``Utils/PLBERT/config.yml``."""
    return dict(config.get("plbert_params") or _packaged_params("Utils/PLBERT/config.yml"))


def build_styletts2(
    config: Mapping[str, Any] | str | os.PathLike,
    device: str | torch.device = "cpu",
    aux_checkpoints: Mapping[str, str | os.PathLike] | None = None,
) -> Munch:
    """The 13-module StyleTTS 2 ``Munch`` for an official-format config (dict or YAML path).

    Weights are random, except the auxiliary models named in `aux_checkpoints`, loaded strictly:
    {'asr': ASR aligner ``{'model': state}`` file, 'pitch': JDC ``{'net': state}`` file,
    'plbert': PL-BERT ``{'net': state}`` file}. Style encoders get their spectral-norm warm-up;
    device-safe classes are swapped in. All modules are returned in train mode on `device`.
    """
    cfg = load_config(config)
    aux = dict(aux_checkpoints or {})
    unknown = sorted(set(aux) - set(AUX_KINDS))
    if unknown:
        raise ValueError(f"unknown aux checkpoint kinds {unknown}; expected some of {AUX_KINDS}")
    text_aligner = ASRCNN(**asr_params(cfg))
    pitch_extractor = JDCNet(num_class=1, seq_len=192)
    bert = CustomAlbert(AlbertConfig(**plbert_params(cfg)))
    if "asr" in aux:
        load_asr_checkpoint(text_aligner, aux["asr"])
    if "pitch" in aux:
        load_pitch_checkpoint(pitch_extractor, aux["pitch"])
    if "plbert" in aux:
        load_plbert_checkpoint(bert, aux["plbert"])
    model = build_model(recursive_munch(cfg["model_params"]), text_aligner, pitch_extractor, bert)
    make_device_safe(model)
    n_mels = int(cfg["model_params"].get("n_mels", 80))
    for name in ("style_encoder", "predictor_encoder"):
        warm_up_spectral_norm(model[name], n_mels=n_mels)
    for module in model.values():
        module.to(device).train()
    return model


def build_tiny_styletts2(device: str | torch.device = "cpu", seed: int = 0) -> Munch:
    """The smallest full StyleTTS 2 that trains (``configs/tiny.yml``, ~102M parameters, 40M of them in the
    decoder and 41M in mpd), with random weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return build_styletts2(TINY_CONFIG, device=device)


def count_parameters(model: Munch) -> dict[str, int]:
    """Number of parameters per module."""
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.items()}


def build_base(model_cfg: Mapping[str, Any], device: str | torch.device = "cpu", seed: int = 0
               ) -> tuple[Munch, dict[str, Any]]:
    """The pre-trained StyleTTS 2 of a run: ``model_cfg = {config: path | "tiny", checkpoint: path | None,
    aux: {asr, pitch, plbert}: paths | None}``. Returns (model, official config dict)."""
    config = load_config(TINY_CONFIG if model_cfg.get("config", "tiny") == "tiny" else model_cfg["config"])
    aux = {k: v for k, v in (model_cfg.get("aux") or {}).items() if v}
    torch.manual_seed(seed)
    model = build_styletts2(config, device=device, aux_checkpoints=aux)
    if model_cfg.get("checkpoint"):
        load_checkpoint(model, model_cfg["checkpoint"])
    return model, config
