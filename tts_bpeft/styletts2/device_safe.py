"""CPU-safe and checked subclasses of official StyleTTS 2 classes, swapped in on built models.

The model is the official ``Munch`` of 13 modules that ``styletts2.models.build_model`` returns
(bert, bert_encoder, predictor, decoder, text_encoder, predictor_encoder, style_encoder, diffusion,
text_aligner, pitch_extractor, mpd, msd, wd). The installed ``styletts2`` package is never edited; four of
its traps are worked around on the objects `tts_bpeft.styletts2.build` builds, by swapping their class for a
subclass defined here (state dicts are unchanged):

- ``Decoder.forward`` (istftnet and hifigan) in train mode smooths F0/energy with kernels created by
  ``.to('cuda')``. :class:`IstftnetDecoder` / :class:`HifiganDecoder` apply the same random smoothing on the
  input's device (kernel width drawn from torch's RNG instead of Python's ``random``, so ``torch.manual_seed``
  fixes it), then run the original forward with the smoothing switched off.
- ``SpecDiscriminator`` (inside msd) moves its window to ``y.get_device()``, which is -1 on the CPU.
  :class:`DeviceSafeSpecDiscriminator` uses ``y.device``.
- Style encoders (old spectral norm) built with random weights output ~1e19 in eval mode until a train-mode
  forward has run the power iteration; `tts_bpeft.styletts2.build.build_styletts2` runs that warm-up
  (:func:`warm_up_spectral_norm`). They also need at least :data:`MIN_STYLE_FRAMES` mel frames;
  :class:`CheckedStyleEncoder` raises a clear error instead of a conv shape error.
- The ASR aligner's ``ConvBlock`` adds its residual in place onto the block output, which in eval mode
  (dropout = identity) is a ReLU output autograd still needs: backward fails. :class:`OutOfPlaceConvBlock`
  adds it out of place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from munch import Munch
from styletts2.models import StyleEncoder
from styletts2.Modules import discriminators, hifigan, istftnet
from styletts2.Utils.ASR.layers import ConvBlock
from torch import Tensor, nn

MIN_STYLE_FRAMES = 80


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
