"""Small official StyleTTS 2 modules with random weights, for unit tests of the device-safe classes, the
losses and LoRA on StyleTTS 2's layer types (the tiny full build is in `tiny_model`)."""

from __future__ import annotations

import torch
from styletts2.models import ProsodyPredictor, StyleEncoder, TextEncoder
from styletts2.Modules.diffusion.diffusion import AudioDiffusionConditional
from styletts2.Modules.diffusion.modules import StyleTransformer1d
from styletts2.Modules.diffusion.sampler import KDiffusion, LogNormalDistribution
from styletts2.Utils.PLBERT.util import CustomAlbert
from transformers import AlbertConfig

from tts_bpeft.styletts2.device_safe import CheckedStyleEncoder, warm_up_spectral_norm


def small_text_encoder(channels: int = 32, depth: int = 2, seed: int = 0) -> TextEncoder:
    """An official TextEncoder (kernel 5, 178 symbols) at width `channels`, random weights, train mode."""
    torch.manual_seed(seed)
    return TextEncoder(channels=channels, kernel_size=5, depth=depth, n_symbols=178)


def small_prosody_predictor(style_dim: int = 16, d_hid: int = 32, seed: int = 0) -> ProsodyPredictor:
    """An official ProsodyPredictor at width `d_hid` (one layer, max duration 50, dropout 0.2), random weights,
    train mode."""
    torch.manual_seed(seed)
    return ProsodyPredictor(style_dim=style_dim, d_hid=d_hid, nlayers=1, max_dur=50, dropout=0.2)


def small_style_encoder(seed: int = 0) -> CheckedStyleEncoder:
    """An official StyleEncoder (8 -> 32 channels, style 16; length-checked, spectral norm warmed up), random
    weights, train mode."""
    torch.manual_seed(seed)
    encoder = StyleEncoder(dim_in=8, style_dim=16, max_conv_dim=32)
    encoder.__class__ = CheckedStyleEncoder
    return warm_up_spectral_norm(encoder)


def small_albert(hidden_size: int = 32, seed: int = 0) -> CustomAlbert:
    """PL-BERT's CustomAlbert (returns the last hidden state) at width `hidden_size` (one layer, 2 heads,
    178 tokens, 512 positions), random weights."""
    torch.manual_seed(seed)
    return CustomAlbert(AlbertConfig(vocab_size=178, hidden_size=hidden_size, num_attention_heads=2,
                                     intermediate_size=2 * hidden_size, max_position_embeddings=512,
                                     num_hidden_layers=1, embedding_size=hidden_size))


def small_diffusion(style_dim: int = 16, embedding_features: int = 32, seed: int = 0) -> AudioDiffusionConditional:
    """The multi-speaker style diffusion module assembled as ``build_model`` does (a StyleTransformer1d of one
    layer, 2 heads of 16 features; KDiffusion with a log-normal sigma distribution, mean -3, std 1, sigma_data
    0.2), over 2 * `style_dim` channels conditioned on BERT features of width `embedding_features`; random
    weights."""
    torch.manual_seed(seed)
    channels = 2 * style_dim
    transformer = StyleTransformer1d(channels=channels, context_embedding_features=embedding_features,
                                     context_features=channels, num_layers=1, num_heads=2, head_features=16,
                                     multiplier=2)
    diffusion = AudioDiffusionConditional(in_channels=1, embedding_max_length=512,
                                          embedding_features=embedding_features, embedding_mask_proba=0.1,
                                          channels=channels, context_features=channels)
    diffusion.diffusion = KDiffusion(net=diffusion.unet, sigma_distribution=LogNormalDistribution(mean=-3.0, std=1.0),
                                     sigma_data=0.2, dynamic_threshold=0.0)
    diffusion.diffusion.net = transformer
    diffusion.unet = transformer
    return diffusion
