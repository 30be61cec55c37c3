"""StyleTTS 2 build, official-checkpoint load/save, CPU-safe wrappers and small test builds.

The model is the official ``Munch`` of 13 modules that ``styletts2.models.build_model`` returns
(bert, bert_encoder, predictor, decoder, text_encoder, predictor_encoder, style_encoder, diffusion,
text_aligner, pitch_extractor, mpd, msd, wd). The installed ``styletts2`` package is never edited; four of
its traps are worked around on the objects this module builds, by swapping their class for a subclass
defined here (state dicts are unchanged):

- ``Decoder.forward`` (istftnet and hifigan) in train mode smooths F0/energy with kernels created by
  ``.to('cuda')``. :class:`IstftnetDecoder` / :class:`HifiganDecoder` apply the same random smoothing on the
  input's device (kernel width drawn from torch's RNG instead of Python's ``random``, so ``torch.manual_seed``
  fixes it), then run the original forward with the smoothing switched off.
- ``SpecDiscriminator`` (inside msd) moves its window to ``y.get_device()``, which is -1 on the CPU.
  :class:`DeviceSafeSpecDiscriminator` uses ``y.device``.
- Style encoders (old spectral norm) built with random weights output ~1e19 in eval mode until a train-mode
  forward has run the power iteration; :func:`build_styletts2` runs that warm-up. They also need at least
  :data:`MIN_STYLE_FRAMES` mel frames; :class:`CheckedStyleEncoder` raises a clear error instead of a conv
  shape error.
- The ASR aligner's ``ConvBlock`` adds its residual in place onto the block output, which in eval mode
  (dropout = identity) is a ReLU output autograd still needs: backward fails. :class:`OutOfPlaceConvBlock`
  adds it out of place.

Layer types of the generator modules, measured on the official ``Configs/config_libritts.yml`` by
``python -m tts_bpeft.styletts2.model --list-layers`` (:func:`layer_table`: ``wn`` weight norm, ``sn``
spectral norm, ``k`` kernel, ``s`` stride, ``d`` dilation, ``g`` groups).
Only ``g=1`` layers can take a plain LoRA; LSTMs and ConvTranspose1d need custom LoRA layers;
dilated Conv1d need a dilation-aware one::

    module             layer            detail                      count     params
    bert               Embedding        -                               3      88576
    bert               Linear           -                               8    6200576
    bert_encoder       Linear           -                               1     393728
    predictor          LSTM             -                               5    9195520
    predictor          Linear           -                              16    1610802
    predictor          Conv1d           k=3 s=1 d=1 g=1 wn             12    5120000
    predictor          Conv1d           k=1 s=1 d=1 g=1 wn              2     262656
    predictor          ConvTranspose1d  k=3 s=2 g=512 wn                2       5120
    predictor          Conv1d           k=1 s=1 d=1 g=1                 2        514
    predictor_encoder  Conv2d           k=3x3 g=1 sn                    9    7044032
    predictor_encoder  Conv2d           k=3x3 g=64 sn                   1        640
    predictor_encoder  Conv2d           k=1x1 g=1 sn                    3     172032
    predictor_encoder  Conv2d           k=3x3 g=128 sn                  1       1280
    predictor_encoder  Conv2d           k=3x3 g=256 sn                  1       2560
    predictor_encoder  Conv2d           k=3x3 g=512 sn                  1       5120
    predictor_encoder  Conv2d           k=5x5 g=1 sn                    1    6554112
    predictor_encoder  Linear           -                               1      65664
    style_encoder      (same rows as predictor_encoder)
    decoder            Conv1d           k=3 s=1 d=1 g=1 wn             26   27734784
    decoder            Linear           -                             107    5418526
    decoder            Conv1d           k=1 s=1 d=1 g=1 wn              6    4470400
    decoder            ConvTranspose1d  k=3 s=2 g=1090 wn               1       5450
    decoder            Conv1d           k=3 s=2 d=1 g=1 wn              2         10
    decoder            Conv1d           k=60 s=30 d=1 g=1               1      15616
    decoder            Conv1d           k=12 s=6 d=1 g=1                1       1664
    decoder            Conv1d           k=4 s=2 d=1 g=1                 1        320
    decoder            Conv1d           k=1 s=1 d=1 g=1                 1         64
    decoder            ConvTranspose1d  k=20 s=10 g=1 wn                1    2622208
    decoder            ConvTranspose1d  k=10 s=5 g=1 wn                 1     328064
    decoder            ConvTranspose1d  k=6 s=3 g=1 wn                  1      49344
    decoder            ConvTranspose1d  k=4 s=2 g=1 wn                  1       8288
    decoder            Conv1d           k=7 s=1 d=1 g=1 wn             29    4853218
    decoder            Conv1d           k=7 s=1 d=3 g=1 wn              7    1213248
    decoder            Conv1d           k=7 s=1 d=5 g=1 wn              7    1213248
    decoder            Conv1d           k=11 s=1 d=1 g=1 wn            20    3878912
    decoder            Conv1d           k=11 s=1 d=3 g=1 wn             5     969728
    decoder            Conv1d           k=11 s=1 d=5 g=1 wn             5     969728
    decoder            Conv1d           k=3 s=1 d=3 g=1 wn              4     262080
    decoder            Conv1d           k=3 s=1 d=5 g=1 wn              4     262080
    text_encoder       Embedding        -                               1      91136
    text_encoder       Conv1d           k=5 s=1 d=1 g=1 wn              3    3935232
    text_encoder       LSTM             -                               1    1576960
    diffusion          Linear           -                              25   24671232
    diffusion          Conv1d           k=1 s=1 d=1 g=1                 1     262400
    diffusion          Embedding        -                               1     393216

Parameters (M): bert 6.29, bert_encoder 0.39, predictor 16.19, decoder 54.29, text_encoder 5.61,
predictor_encoder 13.85, style_encoder 13.85, diffusion 25.33, text_aligner 7.87, pitch_extractor 5.25,
mpd 41.11, msd 0.28, wd 1.17.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import styletts2
import torch
import torch.nn.functional as F
import yaml
from munch import Munch
from styletts2.models import ProsodyPredictor, StyleEncoder, TextEncoder, build_model
from styletts2.Modules import discriminators, hifigan, istftnet
from styletts2.Modules.diffusion.diffusion import AudioDiffusionConditional
from styletts2.Modules.diffusion.modules import StyleTransformer1d, Transformer1d
from styletts2.Modules.diffusion.sampler import KDiffusion, LogNormalDistribution
from styletts2.utils import recursive_munch
from styletts2.Utils.ASR.layers import ConvBlock
from styletts2.Utils.ASR.models import ASRCNN
from styletts2.Utils.JDC.model import JDCNet
from styletts2.Utils.PLBERT.util import CustomAlbert
from torch import Tensor, nn
from transformers import AlbertConfig

from tts_bpeft.io import atomic_write

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
UNPREFIXED_MODULES = ("mpd", "msd", "wd")
AUX_KINDS = ("asr", "pitch", "plbert")
MIN_STYLE_FRAMES = 80
DATA_PARALLEL_PREFIX = "module."


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; the message names every module and key."""


# --------------------------------------------------------------------------- CPU-safe subclasses


def smooth_randomly(curve: Tensor, widths: Sequence[int]) -> Tensor:
    """Moving average of `curve` (B, T) with a width drawn uniformly from `widths` (0 = unchanged).

    The decoder's train-mode augmentation, on the curve's own device and drawn from torch's RNG.
    """
    width = widths[int(torch.randint(len(widths), ()))]
    if width == 0:
        return curve
    kernel = torch.ones(1, 1, width, device=curve.device, dtype=curve.dtype)
    return F.conv1d(curve.unsqueeze(1), kernel, padding=width // 2).squeeze(1) / width


class _DeviceSafeSmoothing:
    """Mixin for the official Decoder classes: train-mode F0/energy smoothing without ``.to('cuda')``."""

    def forward(self, asr: Tensor, F0_curve: Tensor, N: Tensor, s: Tensor) -> Tensor:
        """Waveform (B, 1, T * 300) from aligned text features `asr` (B, 512, T/2), F0 and energy (B, T),
        acoustic style `s` (B, style_dim); T is in mel frames."""
        if not self.training:
            return super().forward(asr, F0_curve, N, s)
        F0_curve = smooth_randomly(F0_curve, (0, 3, 7))
        N = smooth_randomly(N, (0, 3, 7, 15))
        # The original forward only reads self.training for the smoothing done above; children keep
        # their own train flags.
        self.training = False
        try:
            return super().forward(asr, F0_curve, N, s)
        finally:
            self.training = True


class IstftnetDecoder(_DeviceSafeSmoothing, istftnet.Decoder):
    """The official istftnet Decoder with device-safe train-mode smoothing."""


class HifiganDecoder(_DeviceSafeSmoothing, hifigan.Decoder):
    """The official hifigan Decoder with device-safe train-mode smoothing."""


class DeviceSafeSpecDiscriminator(discriminators.SpecDiscriminator):
    """The official SpecDiscriminator with its STFT window moved to the input's device."""

    def forward(self, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits (B, n) and feature maps for a waveform `y` (B, 1, samples)."""
        fmap = []
        window = self.window.to(y.device)
        y = discriminators.stft(y.squeeze(1), self.fft_size, self.shift_size, self.win_length, window)
        y = y.unsqueeze(1)
        for layer in self.discriminators:
            y = F.leaky_relu(layer(y), discriminators.LRELU_SLOPE)
            fmap.append(y)
        y = self.out(y)
        fmap.append(y)
        return torch.flatten(y, 1, -1), fmap


class CheckedStyleEncoder(StyleEncoder):
    """The official StyleEncoder, refusing inputs shorter than :data:`MIN_STYLE_FRAMES` frames."""

    def forward(self, x: Tensor) -> Tensor:
        """Style vectors (B, style_dim) from log-mels `x` (B, 1, 80, T) with T >= 80."""
        if x.dim() != 4 or x.shape[-1] < MIN_STYLE_FRAMES:
            raise ValueError(
                f"style encoder needs mels shaped (B, 1, n_mels, T) with T >= {MIN_STYLE_FRAMES} "
                f"frames (four halvings then a 5x5 conv); got shape {tuple(x.shape)}"
            )
        return super().forward(x)


class OutOfPlaceConvBlock(ConvBlock):
    """The ASR aligner's ConvBlock with its residual sums out of place (differentiable in eval mode)."""

    def forward(self, x: Tensor) -> Tensor:
        """Features (B, C, T) -> (B, C, T)."""
        for block in self.blocks:
            x = block(x) + x
        return x


_SAFE_CLASSES = {
    ConvBlock: OutOfPlaceConvBlock,
    istftnet.Decoder: IstftnetDecoder,
    hifigan.Decoder: HifiganDecoder,
    discriminators.SpecDiscriminator: DeviceSafeSpecDiscriminator,
    StyleEncoder: CheckedStyleEncoder,
}


def make_device_safe(model: Munch) -> Munch:
    """Swap, in place, the class of every decoder, spectrogram discriminator, style encoder and aligner
    ConvBlock in `model`
    for its device-safe subclass (parameters and state dict keys unchanged). Idempotent; returns `model`."""
    for module in model.values():
        for sub in module.modules():
            safe = _SAFE_CLASSES.get(type(sub))
            if safe is not None:
                sub.__class__ = safe
    return model


@torch.no_grad()
def warm_up_spectral_norm(module: nn.Module, n_mels: int = 80, passes: int = 5) -> nn.Module:
    """Run `passes` train-mode forwards of a style encoder on zeros (1, 1, n_mels, 80) so every spectral-norm
    layer's power iteration has estimated its singular vectors; the module's mode is restored."""
    was_training = module.training
    module.train()
    param = next(module.parameters())
    for _ in range(passes):
        module(torch.zeros(1, 1, n_mels, MIN_STYLE_FRAMES, device=param.device, dtype=param.dtype))
    module.train(was_training)
    return module


# --------------------------------------------------------------------------- configs and building


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


# --------------------------------------------------------------------------- small modules for unit tests


def small_text_encoder(
    channels: int = 32, depth: int = 2, n_symbols: int = 178, seed: int = 0
) -> TextEncoder:
    """An official TextEncoder (kernel 5) at width `channels`, random weights, train mode."""
    torch.manual_seed(seed)
    return TextEncoder(channels=channels, kernel_size=5, depth=depth, n_symbols=n_symbols)


def small_prosody_predictor(
    style_dim: int = 16,
    d_hid: int = 32,
    nlayers: int = 1,
    max_dur: int = 50,
    dropout: float = 0.2,
    seed: int = 0,
) -> ProsodyPredictor:
    """An official ProsodyPredictor at width `d_hid`, random weights, train mode."""
    torch.manual_seed(seed)
    return ProsodyPredictor(
        style_dim=style_dim, d_hid=d_hid, nlayers=nlayers, max_dur=max_dur, dropout=dropout
    )


def small_style_encoder(
    dim_in: int = 8, style_dim: int = 16, max_conv_dim: int = 32, seed: int = 0
) -> CheckedStyleEncoder:
    """An official StyleEncoder (length-checked, spectral norm warmed up), random weights, train mode."""
    torch.manual_seed(seed)
    encoder = StyleEncoder(dim_in=dim_in, style_dim=style_dim, max_conv_dim=max_conv_dim)
    encoder.__class__ = CheckedStyleEncoder
    return warm_up_spectral_norm(encoder)


def small_albert(
    hidden_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    vocab_size: int = 178,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> CustomAlbert:
    """PL-BERT's CustomAlbert (returns the last hidden state) at width `hidden_size`, random weights."""
    torch.manual_seed(seed)
    config = AlbertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        num_hidden_layers=num_layers,
        embedding_size=hidden_size,
    )
    return CustomAlbert(config)


def small_diffusion(
    style_dim: int = 16,
    embedding_features: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    head_features: int = 16,
    multiplier: int = 2,
    multispeaker: bool = True,
    embedding_max_length: int = 512,
    sigma_data: float = 0.2,
    seed: int = 0,
) -> AudioDiffusionConditional:
    """The style diffusion module assembled as ``build_model`` does (KDiffusion with a log-normal sigma
    distribution, mean -3, std 1), over 2 * `style_dim` channels conditioned on BERT features of width
    `embedding_features`; random weights."""
    torch.manual_seed(seed)
    transformer_args = dict(
        num_layers=num_layers, num_heads=num_heads, head_features=head_features, multiplier=multiplier
    )
    if multispeaker:
        transformer = StyleTransformer1d(
            channels=2 * style_dim,
            context_embedding_features=embedding_features,
            context_features=2 * style_dim,
            **transformer_args,
        )
    else:
        transformer = Transformer1d(
            channels=2 * style_dim, context_embedding_features=embedding_features, **transformer_args
        )
    diffusion = AudioDiffusionConditional(
        in_channels=1,
        embedding_max_length=embedding_max_length,
        embedding_features=embedding_features,
        embedding_mask_proba=0.1,
        channels=2 * style_dim,
        context_features=2 * style_dim,
    )
    diffusion.diffusion = KDiffusion(
        net=diffusion.unet,
        sigma_distribution=LogNormalDistribution(mean=-3.0, std=1.0),
        sigma_data=sigma_data,
        dynamic_threshold=0.0,
    )
    diffusion.diffusion.net = transformer
    diffusion.unet = transformer
    return diffusion


# --------------------------------------------------------------------------- checkpoints


def _torch_load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state


def strip_prefix(state: Mapping[str, Tensor], prefix: str = DATA_PARALLEL_PREFIX) -> dict[str, Tensor]:
    """`state` with `prefix` removed from every key that starts with it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def state_problems(module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of `state` against `module`'s state dict.

    Keys that are non-persistent buffers of `module` (e.g. ALBERT's ``embeddings.position_ids``, saved by
    older transformers) are not counted as unexpected.
    """
    expected = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if k not in buffers)
    if missing:
        problems.append(f"missing keys {_abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbreviate(unexpected)}")
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(
                f"shape of {key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
            )
    return problems


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"({len(keys)}) [{shown}{', ...' if len(keys) > limit else ''}]"


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Load `state` into `module` after :func:`state_problems` found nothing; else raise
    :class:`CheckpointMismatchError` naming `where` (file and module)."""
    problems = state_problems(module, state)
    if problems:
        raise CheckpointMismatchError(f"{where}: " + "; ".join(problems))
    expected = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)


def load_checkpoint(
    model: Munch, path: str | os.PathLike, modules: Iterable[str] | None = None
) -> dict[str, Any]:
    """Load an official StyleTTS 2 checkpoint ``{'net': {module: state_dict}, ...}`` into `model`, strictly.

    `modules` selects a subset (default: every module of `model`); each must exist in both the model and the
    file. ``module.`` key prefixes (DataParallel) are removed. All problems of all modules are collected and
    raised together as :class:`CheckpointMismatchError`, and then nothing is loaded. Returns the file's other
    entries (e.g. 'epoch', 'iters', 'val_loss', 'optimizer').
    """
    state = _torch_load(path)
    if "net" not in state or not isinstance(state["net"], Mapping):
        raise CheckpointMismatchError(f"{path}: no 'net' entry of per-module state dicts")
    net = state["net"]
    names = list(model) if modules is None else list(modules)
    problems = []
    for name in names:
        if name not in model:
            problems.append(f"module '{name}' is not in the model")
        elif name not in net:
            problems.append(f"module '{name}' is not in the checkpoint (it has {sorted(net)})")
        else:
            problems += [
                f"module '{name}': {p}" for p in state_problems(model[name], strip_prefix(net[name]))
            ]
    if modules is None:
        problems += [
            f"module '{name}' is in the checkpoint but not in the model" for name in net if name not in model
        ]
    if problems:
        raise CheckpointMismatchError(f"{path}:\n  " + "\n  ".join(problems))
    for name in names:
        load_state_strict(model[name], strip_prefix(net[name]), f"{path} module '{name}'")
    return {k: v for k, v in state.items() if k != "net"}


def save_checkpoint(
    model: Munch,
    path: str | os.PathLike,
    modules: Iterable[str] | None = None,
    prefix: bool = True,
    optimizer: Mapping[str, Any] | None = None,
    iters: int = 0,
    val_loss: float = 0.0,
    epoch: int = 0,
) -> Path:
    """Write `model` (or the named `modules`) in the official format, atomically.

    With `prefix`, keys get the ``module.`` prefix on every module but mpd/msd/wd, as in the released files.
    """
    names = list(model) if modules is None else list(modules)
    net = {}
    for name in names:
        head = DATA_PARALLEL_PREFIX if prefix and name not in UNPREFIXED_MODULES else ""
        net[name] = {head + k: v.detach().cpu() for k, v in model[name].state_dict().items()}
    state = {
        "net": net,
        "optimizer": dict(optimizer or {}),
        "iters": iters,
        "val_loss": val_loss,
        "epoch": epoch,
    }
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_asr_checkpoint(aligner: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the official ASR aligner file (``{'model': state_dict, ...}``) into `aligner`, strictly."""
    state = _torch_load(path)
    if "model" not in state:
        raise CheckpointMismatchError(
            f"{path}: ASR aligner checkpoint has no 'model' entry ({sorted(state)})"
        )
    load_state_strict(aligner, strip_prefix(state["model"]), f"{path} (ASR aligner)")
    return aligner


def load_pitch_checkpoint(pitch: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the official JDC pitch file (``{'net': state_dict, ...}``) into `pitch`, strictly."""
    state = _torch_load(path)
    if "net" not in state:
        raise CheckpointMismatchError(f"{path}: JDC pitch checkpoint has no 'net' entry ({sorted(state)})")
    load_state_strict(pitch, strip_prefix(state["net"]), f"{path} (JDC pitch extractor)")
    return pitch


def load_plbert_checkpoint(bert: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the official PL-BERT file into `bert`, strictly.

    The file is ``{'net': {'module.encoder.<albert key>': ..., 'module.<prediction heads>': ...}}``; only the
    ``encoder.`` entries are the ALBERT (the heads are dropped, as the original loader does).
    """
    state = _torch_load(path)
    if "net" not in state:
        raise CheckpointMismatchError(f"{path}: PL-BERT checkpoint has no 'net' entry ({sorted(state)})")
    encoder = strip_prefix(
        {k: v for k, v in strip_prefix(state["net"]).items() if k.startswith("encoder.")}, "encoder."
    )
    if not encoder:
        raise CheckpointMismatchError(f"{path}: PL-BERT checkpoint has no 'encoder.' keys")
    load_state_strict(bert, encoder, f"{path} (PL-BERT)")
    return bert


# --------------------------------------------------------------------------- layer inventory


def generator_module_names() -> tuple[str, ...]:
    """Names of the generator modules (trained by the generator loss; no discriminators, no aux models).

    See the module docstring for their layer types in the LibriTTS config.
    """
    return GENERATOR_MODULES


@dataclass(frozen=True)
class LayerCount:
    """Number and parameter count of one kind of layer inside one top-level module."""

    module: str
    layer: str
    detail: str
    count: int
    params: int


def _norm_tag(layer: nn.Module) -> str:
    if hasattr(layer, "weight_g"):
        return " wn"
    if hasattr(layer, "weight_orig"):
        return " sn"
    return ""


def describe_layer(layer: nn.Module) -> tuple[str, str] | None:
    """(type name, detail) of a weight-carrying layer, or None for anything else.

    Detail lists kernel ``k``, stride ``s``, dilation ``d``, groups ``g`` and the weight/spectral norm tag.
    """
    if isinstance(layer, nn.Linear):
        return "Linear", "-"
    if isinstance(layer, nn.Conv1d):
        return "Conv1d", (
            f"k={layer.kernel_size[0]} s={layer.stride[0]} d={layer.dilation[0]} "
            f"g={layer.groups}{_norm_tag(layer)}"
        )
    if isinstance(layer, nn.ConvTranspose1d):
        return (
            "ConvTranspose1d",
            f"k={layer.kernel_size[0]} s={layer.stride[0]} g={layer.groups}{_norm_tag(layer)}",
        )
    if isinstance(layer, nn.Conv2d):
        k = "x".join(str(v) for v in layer.kernel_size)
        return "Conv2d", f"k={k} g={layer.groups}{_norm_tag(layer)}"
    if isinstance(layer, (nn.LSTM, nn.LSTMCell)):
        return type(layer).__name__, "-"
    if isinstance(layer, nn.Embedding):
        return "Embedding", "-"
    return None


def layer_table(model: Munch, modules: Iterable[str] | None = None) -> list[LayerCount]:
    """Counts of each (layer type, detail) in each of `modules` (default: the generator modules), in the
    order they are first met when iterating the model. Parameters are counted once per layer (its own)."""
    rows: dict[tuple[str, str, str], list[int]] = {}
    for name in modules or GENERATOR_MODULES:
        seen = set()
        for layer in model[name].modules():
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            kind = describe_layer(layer)
            if kind is None:
                continue
            entry = rows.setdefault((name, *kind), [0, 0])
            entry[0] += 1
            entry[1] += sum(p.numel() for p in layer.parameters(recurse=False))
    return [LayerCount(m, layer, detail, c, p) for (m, layer, detail), (c, p) in rows.items()]


def format_layer_table(rows: Iterable[LayerCount]) -> str:
    """The rows of :func:`layer_table` as a fixed-width text table."""
    lines = [f"{'module':<18} {'layer':<16} {'detail':<26} {'count':>6} {'params':>10}"]
    lines += [f"{r.module:<18} {r.layer:<16} {r.detail:<26} {r.count:>6} {r.params:>10}" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tts_bpeft.styletts2.model --list-layers [--config PATH] [--all]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list-layers", action="store_true", help="print the layer-type table")
    parser.add_argument(
        "--config",
        default=str(OFFICIAL_CONFIGS["libritts"]),
        help="config YAML (default: the official LibriTTS config)",
    )
    parser.add_argument("--all", action="store_true", help="all 13 modules, not only the generator")
    args = parser.parse_args(argv)
    if not args.list_layers:
        parser.error("nothing to do: pass --list-layers")
    model = build_styletts2(args.config)
    print(format_layer_table(layer_table(model, MODULE_NAMES if args.all else GENERATOR_MODULES)))
    print("\nparameters per module:", count_parameters(model))


if __name__ == "__main__":
    main()
