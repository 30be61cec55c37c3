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

from .aux_files import AuxFiles, official_aux_files
from .checkpoints import (
    CheckpointMismatchError,
    load_asr_checkpoint,
    load_checkpoint,
    load_pitch_checkpoint,
    load_plbert_checkpoint,
)
from .device_safe import make_device_safe, warm_up_spectral_norm
from .release import RELEASES, release_files

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


def model_params_of(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model_params`` section of an aux model's official ``config.yml`` (ASR aligner or PL-BERT)."""
    with open(path) as f:
        loaded = yaml.safe_load(f)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model_params"), dict):
        raise ValueError(f"{path}: not an aux model config (no 'model_params' section)")
    return dict(loaded["model_params"])


def asr_params(config: Mapping[str, Any], asr_config: str | os.PathLike | None = None) -> dict[str, Any]:
    """ASRCNN keyword arguments: the file `asr_config` (the official config's ``ASR_config``), else
    ``config['asr_params']``, else the package's stock ``Utils/ASR/config.yml``."""
    if asr_config:
        return model_params_of(asr_config)
    return dict(config.get("asr_params") or model_params_of(PACKAGE_DIR / "Utils/ASR/config.yml"))


def plbert_params(config: Mapping[str, Any], plbert_config: str | os.PathLike | None = None) -> dict[str, Any]:
    """AlbertConfig keyword arguments: the file `plbert_config` (``PLBERT_dir/config.yml``), else
    ``config['plbert_params']``, else the package's stock ``Utils/PLBERT/config.yml``."""
    if plbert_config:
        return model_params_of(plbert_config)
    return dict(config.get("plbert_params") or model_params_of(PACKAGE_DIR / "Utils/PLBERT/config.yml"))


def build_styletts2(
    config: Mapping[str, Any] | str | os.PathLike,
    device: str | torch.device = "cpu",
    aux_checkpoints: Mapping[str, str | os.PathLike] | None = None,
    aux_configs: Mapping[str, str | os.PathLike] | None = None,
) -> Munch:
    """The 13-module StyleTTS 2 ``Munch`` for an official-format config (dict or YAML path).

    Weights are random, except the auxiliary models named in `aux_checkpoints`, loaded strictly:
    {'asr': ASR aligner ``{'model': state}`` file, 'pitch': JDC ``{'net': state}`` file,
    'plbert': PL-BERT ``{'net': state}`` file}. The aligner's and PL-BERT's sizes come from `aux_configs`
    {'asr', 'plbert': their official ``config.yml``} (see `asr_params`, `plbert_params`).
    Style encoders get their spectral-norm warm-up; device-safe classes are swapped in.
    All modules are returned in train mode on `device`.
    """
    cfg = load_config(config)
    aux = dict(aux_checkpoints or {})
    unknown = sorted(set(aux) - set(AUX_KINDS))
    if unknown:
        raise ValueError(f"unknown aux checkpoint kinds {unknown}; expected some of {AUX_KINDS}")
    sizes = dict(aux_configs or {})
    text_aligner = ASRCNN(**asr_params(cfg, sizes.get("asr")))
    pitch_extractor = JDCNet(num_class=1, seq_len=192)
    bert = CustomAlbert(AlbertConfig(**plbert_params(cfg, sizes.get("plbert"))))
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
    """The pre-trained StyleTTS 2 of a run: ``model_cfg = {config: path | "tiny" | "libritts" | "ljspeech",
    checkpoint: path | None, aux: {asr, pitch, plbert}: paths | None, random: bool}``. Returns (model, official
    config dict).

    ``libritts`` / ``ljspeech`` name an official release: its config, checkpoint (unless ``checkpoint`` names
    another) and aux models are fetched into the caches and checked (`tts_bpeft.styletts2.release`).
    No silent random weights: an official config without a checkpoint is refused unless ``random`` is true
    (the ``tiny`` build is random by name: tests and the demo).

    An official config's ``ASR_config`` / ``ASR_path`` / ``F0_path`` / ``PLBERT_dir`` are honoured
    (`tts_bpeft.styletts2.aux_files`); ``aux`` entries replace the weight files they name. A checkpoint whose
    aligner or PL-BERT does not fit these configs raises `CheckpointMismatchError` naming the key to fix.
    """
    name = str(model_cfg.get("config", "tiny"))
    checkpoint, roots = model_cfg.get("checkpoint"), []
    if name in RELEASES:
        release = release_files(name, checkpoint=not checkpoint)  # a checkpoint given replaces the release's
        config_path, roots = release.config, [release.utils_root]
        checkpoint = checkpoint or release.checkpoint
    else:
        config_path = TINY_CONFIG if name == "tiny" else Path(name)
    config = load_config(config_path)
    if name != "tiny" and not checkpoint and not model_cfg.get("random"):
        raise ValueError(f"{config_path}: no model.checkpoint given, so every module but the aux models would be "
                         "random: set model.checkpoint=<epochs_2nd_00020.pth>, or model.random=true to train random "
                         "weights on purpose")
    official = official_aux_files(config_path, config, roots)
    aux = {**(official.checkpoints if official else {}), **{k: v for k, v in (model_cfg.get("aux") or {}).items()
                                                            if v}}
    torch.manual_seed(seed)
    try:
        model = build_styletts2(config, device=device, aux_checkpoints=aux,
                                aux_configs=official.configs if official else None)
        if checkpoint:
            load_checkpoint(model, checkpoint)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{error}\n{_aux_hint(official)}") from None
    return model, config


def _aux_hint(official: AuxFiles | None) -> str:
    if official is None:
        return ("The aligner's and PL-BERT's sizes came from the config's asr_params / plbert_params (or the "
                "stock Utils configs): use an official config.yml naming ASR_config and PLBERT_dir.")
    return (f"The aligner is built from {official.configs['asr']} (key ASR_config in {official.config}) and "
            f"PL-BERT from {official.configs['plbert']} (key {official.keys['plbert_config']} in "
            f"{official.config}): if text_aligner or "
            f"bert do not fit, point these keys at the configs the checkpoint was trained with; if an aux file "
            f"does not fit (ASR_path, F0_path, {official.keys['plbert']}), point that key at a matching file.")
