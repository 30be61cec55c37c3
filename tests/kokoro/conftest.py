"""Small Kokoro-shaped models built from the ``kokoro`` package's own classes, random weights.

``small_config`` shrinks Kokoro's config.json where the classes allow it (PL-BERT, one LSTM layer, one
resblock per upsampling); Kokoro's ``Decoder`` hard-codes its 512/1024-channel blocks, so a ``KModel`` stays
~40M parameters. ``TinyKokoro`` is the whole family in miniature (~0.1M parameters: PL-BERT, text encoder,
prosody predictor, an upsampling AdaIN block and an iSTFTNet generator) for tests that export to ONNX.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from tts_bpeft.kokoro.architecture import build_kmodel, kokoro_modules
from tts_bpeft.kokoro.offline import offline_config


def require_kokoro() -> None:
    """Skip the calling test when the kokoro package (the torch classes) is not installed."""
    if importlib.util.find_spec("kokoro") is None:
        pytest.skip("the kokoro extra is not installed (pip install -e '.[kokoro]')")

SMALL_CONFIG = {
    "istftnet": {"upsample_kernel_sizes": [20, 12], "upsample_rates": [10, 6], "gen_istft_hop_size": 5,
                 "gen_istft_n_fft": 20, "resblock_dilation_sizes": [[1, 3, 5]], "resblock_kernel_sizes": [3],
                 "upsample_initial_channel": 512},
    "dim_in": 64, "dropout": 0.2, "hidden_dim": 512, "max_conv_dim": 512, "max_dur": 50, "multispeaker": True,
    "n_layer": 1, "n_mels": 80, "n_token": 178, "style_dim": 128, "text_encoder_kernel_size": 5,
    "plbert": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 512, "num_hidden_layers": 2, "dropout": 0.1},
}
"""Kokoro's config.json with smaller PL-BERT, predictor and generator; ``vocab`` is added from the real one."""


@pytest.fixture(scope="session")
def small_config() -> dict:
    """:data:`SMALL_CONFIG` with Kokoro's phoneme vocabulary (from the kokoro-onnx package)."""
    require_kokoro()
    try:
        vocab = offline_config()["vocab"]
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return {**copy.deepcopy(SMALL_CONFIG), "vocab": vocab}


@pytest.fixture(scope="session")
def small_kmodel(small_config) -> torch.nn.Module:
    """A KModel of `small_config`, random weights drawn from seed 0; do not modify it in a test."""
    torch.manual_seed(0)
    return build_kmodel(copy.deepcopy(small_config))


def short_durations(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """`model` with a duration head that gives every token 1-3 frames (by its input), so that the decoder
    stays fast; changed in place and returned."""
    head = model.predictor.duration_proj.linear_layer
    with torch.no_grad():
        torch.manual_seed(seed)
        head.weight.zero_()
        head.weight[1:3] = torch.randn_like(head.weight[1:3])
        head.bias.fill_(-20.0)
        head.bias[0] = 20.0
        head.bias[1:3] = 0.0
    return model


@pytest.fixture(scope="session")
def varied_kmodel(small_kmodel, small_config) -> torch.nn.Module:
    """small_kmodel whose duration head predicts 1-3 frames per token (`short_durations`); do not modify it."""
    model = build_kmodel(copy.deepcopy(small_config))
    model.load_state_dict(small_kmodel.state_dict())
    return short_durations(model)


class TinyKokoro(torch.nn.Module):
    """Kokoro's modules at toy sizes, wired as ``KModel.forward_with_tokens`` wires them, with the alignment
    (token -> frame, ``[1, T, F]``) given, so that the graph exports without data-dependent shapes."""

    def __init__(self):
        super().__init__()
        kokoro_modules()
        import sys

        from transformers import AlbertConfig

        modules, istftnet = sys.modules["kokoro.modules"], sys.modules["kokoro.istftnet"]
        self.bert = modules.CustomAlbert(AlbertConfig(
            vocab_size=178, embedding_size=16, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            num_hidden_layers=2, max_position_embeddings=64))
        self.bert_encoder = torch.nn.Linear(32, 32)
        self.predictor = modules.ProsodyPredictor(style_dim=16, d_hid=32, nlayers=1, max_dur=10, dropout=0.1)
        self.text_encoder = modules.TextEncoder(channels=32, kernel_size=5, depth=2, n_symbols=178)
        self.block = istftnet.AdainResBlk1d(32, 16, 16, upsample=True)
        self.generator = istftnet.Generator(16, [3], [2, 2], 16, [[1, 3, 5]], [4, 4], 8, 2, disable_complex=True)

    def forward(self, ids, style, alignment):
        n = ids.shape[1]
        lengths = torch.full((1,), n, dtype=torch.long)
        mask = torch.zeros(1, n, dtype=torch.bool)
        h = self.bert_encoder(self.bert(ids, attention_mask=torch.ones_like(ids))).transpose(-1, -2)
        d = self.predictor.text_encoder(h, style[:, 16:], lengths, mask)
        x, _ = self.predictor.lstm(d)
        durations = torch.sigmoid(self.predictor.duration_proj(x)).sum(-1)
        f0, energy = self.predictor.F0Ntrain(d.transpose(-1, -2) @ alignment, style[:, 16:])
        asr = self.text_encoder(ids, lengths, mask) @ alignment
        audio = self.generator(self.block(asr, style[:, :16]), style[:, :16], f0)
        return audio, durations, f0, energy


@pytest.fixture(scope="session")
def tiny_kokoro() -> TinyKokoro:
    """TinyKokoro with every learned parameter perturbed by N(0, 0.1²) from its init (seed 0), so that no two
    tensors are equal (an ONNX optimizer merges equal constants) and norm affines differ from defaults."""
    require_kokoro()
    torch.manual_seed(0)
    model = TinyKokoro().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".stft." not in name:
                param.add_(0.1 * torch.randn_like(param))
    return model
