"""The speech language model (SLM) of the StyleTTS 2 objective: a frozen WavLM whose hidden states give the
WavLM feature loss and feed the WavLM discriminator (``model.wd``).

As in the official ``WavLMLoss`` (StyleTTS 2 ``losses.py``): waveforms at the model's rate (24 kHz) are
resampled to the SLM's rate (16 kHz) and passed, unnormalised, through WavLM with all hidden states; the
discriminator input stacks the ``layers`` hidden states of width ``hidden`` as ``layers * hidden`` channels
(layer-major) over the SLM frames (20 ms each). The WavLM weights never train (eval mode, no gradients on
its parameters); gradients flow through it to the generated waveform.

Real use: ``microsoft/wavlm-base-plus`` (hidden 768, 13 hidden states), named by the official config's
``model_params.slm.model``, from the hub or a local folder. The tiny build uses a small random WavLM
(`tiny_wavlm`) sized by the tiny config's ``slm`` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from transformers import WavLMConfig, WavLMModel

DEFAULT_SLM = "microsoft/wavlm-base-plus"


class SpeechLanguageModel(nn.Module):
    """A frozen WavLM behind a resampler.

    Args:
        wavlm: the WavLM; put in eval mode with its parameters frozen.
        sample_rate: rate of the waveforms given to the methods (Hz).
        slm_rate: WavLM's rate (Hz).
    """

    def __init__(self, wavlm: WavLMModel, sample_rate: int = 24000, slm_rate: int = 16000):
        super().__init__()
        self.wavlm = wavlm.eval().requires_grad_(False)
        self.resample = torchaudio.transforms.Resample(sample_rate, slm_rate)

    def train(self, mode: bool = True) -> SpeechLanguageModel:
        """WavLM stays in eval mode (no dropout), whatever the caller's mode."""
        super().train(mode)
        self.wavlm.eval()
        return self

    def hidden_states(self, wave: Tensor) -> tuple[Tensor, ...]:
        """WavLM's hidden states of `wave` (B, samples): ``layers`` tensors (B, frames, hidden)."""
        return self.wavlm(input_values=self.resample(wave), output_hidden_states=True).hidden_states

    def features(self, wave: Tensor) -> Tensor:
        """The WavLM discriminator's input for `wave` (B, samples): (B, layers * hidden, frames)."""
        return torch.stack(self.hidden_states(wave), dim=1).transpose(-1, -2).flatten(1, 2)

    def feature_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """Sum over hidden states of the mean absolute difference between those of `real` (detached) and
        `fake`, both (B, samples); 0-dim."""
        with torch.no_grad():
            real_states = self.hidden_states(real)
        fake_states = self.hidden_states(fake)
        return sum((r - f).abs().mean() for r, f in zip(real_states, fake_states))


def slm_discriminator_loss(slm: SpeechLanguageModel, wd: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Least-squares loss of the WavLM discriminator `wd`: ``mean((1 - wd(real))^2) + mean(wd(fake)^2)`` for
    waveforms (B, samples); WavLM runs without gradients, so only `wd` is trained by it."""
    with torch.no_grad():
        real_features, fake_features = slm.features(real), slm.features(fake)
    return ((1 - wd(real_features)) ** 2).mean() + (wd(fake_features) ** 2).mean()


def slm_generator_loss(slm: SpeechLanguageModel, wd: nn.Module, fake: Tensor) -> Tensor:
    """The generator's least-squares SLM adversarial loss ``mean((1 - wd(fake))^2)``, `fake` (B, samples)."""
    return ((1 - wd(slm.features(fake))) ** 2).mean()


def tiny_wavlm(hidden: int, layers: int, seed: int = 0) -> WavLMModel:
    """A random WavLM with `layers` hidden states of width `hidden` (2 heads, narrow convolutions, the
    base model's 320x downsampling), for the tiny build and tests."""
    config = WavLMConfig(hidden_size=hidden, num_hidden_layers=layers - 1, num_attention_heads=2,
                         intermediate_size=2 * hidden, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=200)
    torch.manual_seed(seed)
    return WavLMModel(config)


def load_slm(slm_config: Mapping[str, Any], source: str | None = None, sample_rate: int = 24000,
             tiny: bool = False) -> SpeechLanguageModel:
    """The SLM of a model config's ``model_params.slm`` section (``model``: hub id, ``sr``, ``hidden``,
    ``nlayers``).

    `source` (a hub id or a local folder) overrides ``slm_config['model']``; `tiny` builds `tiny_wavlm`
    instead (the tiny config's random model). A WavLM whose width or depth differs from the section's
    ``hidden`` / ``nlayers`` (which size ``model.wd``) is refused.
    """
    hidden, layers = int(slm_config["hidden"]), int(slm_config["nlayers"])
    if tiny:
        wavlm = tiny_wavlm(hidden, layers)
    else:
        name = source or slm_config.get("model") or DEFAULT_SLM
        try:
            wavlm = WavLMModel.from_pretrained(name)
        except OSError as error:
            raise OSError(f"cannot load the WavLM {name!r} (model_params.slm.model): {error}. Offline, download "
                          f"it elsewhere (huggingface-cli download {DEFAULT_SLM}) and pass its folder as "
                          "model.slm=<folder>, or drop the slm/slmadv terms from loss.terms") from error
    found = (wavlm.config.hidden_size, wavlm.config.num_hidden_layers + 1)
    if found != (hidden, layers):
        raise ValueError(f"WavLM {getattr(wavlm.config, '_name_or_path', '')!r} has width {found[0]} and "
                         f"{found[1]} hidden states; model_params.slm says hidden {hidden}, nlayers {layers} "
                         "(they size the WavLM discriminator wd)")
    return SpeechLanguageModel(wavlm, sample_rate, int(slm_config.get("sr", 16000)))
