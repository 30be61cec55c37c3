"""Small official StyleTTS 2 modules with random weights, for unit tests of the device-safe classes, the
losses and LoRA on StyleTTS 2's layer types (the tiny full build is in `tiny_model`)."""

from __future__ import annotations

import torch
from styletts2.models import ProsodyPredictor, StyleEncoder, TextEncoder
from styletts2.Modules.diffusion.diffusion import AudioDiffusionConditional
from styletts2.Modules.diffusion.modules import StyleTransformer1d, Transformer1d
from styletts2.Modules.diffusion.sampler import KDiffusion, LogNormalDistribution
from styletts2.Utils.PLBERT.util import CustomAlbert
from transformers import AlbertConfig

from tts_bpeft.styletts2.device_safe import CheckedStyleEncoder, warm_up_spectral_norm


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
