"""A model with every adapted layer type, its KFAC/EWC/EKFAC curvature, and the dense-form comparison (prior tests)."""

from __future__ import annotations

import pytest
import torch
from curv_helpers import randomise_lora
from torch import nn
from torch.nn.utils import weight_norm

from tts_bpeft import LaplacePrior, add_lora, estimate_curvature, lora_targets

LSTM_WEIGHTS = ["weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse"]
NAMES = ["lin", "conv", "convt"] + [f"lstm.{w}" for w in LSTM_WEIGHTS]


class AllKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 5)
        self.conv = weight_norm(nn.Conv1d(5, 4, 3, padding=2, dilation=2))
        self.convt = nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.lstm = nn.LSTM(3, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        h = torch.tanh(self.conv(torch.tanh(self.lin(x)).transpose(1, 2)))
        return self.lstm(self.convt(h).transpose(1, 2))[0]


def squared_error_loss(m, batch):
    return ((m(batch[0]) - batch[1]) ** 2).sum((1, 2))


def build_setup():
    """(LoRA model with random factors, its KFAC and EWC estimates, the input batch)."""
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        model = AllKinds()
    x = torch.randn(4, 5, 3)
    y = torch.randn(4, 10, 8)
    model = add_lora(model, ["lin", "conv", "convt", "lstm"], r=2, alpha=3)
    randomise_lora(model)
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    kfac = estimate_curvature(model, batches, squared_error_loss, progress=False)
    ewc = estimate_curvature(model, batches, squared_error_loss, method="ewc", progress=False)
    assert kfac.names == NAMES
    return model, kfac, ewc, x, batches


def layers_of(model):
    return {n: (t.layer, t.param) for n, t in lora_targets(model).items()}


def lora_params(model):
    return [p for n, p in model.named_parameters() if "lora_" in n]


def check_against(prior_value, dense_value, params):
    torch.testing.assert_close(prior_value.double(), dense_value.double(), rtol=1e-5, atol=1e-7)
    g1 = torch.autograd.grad(prior_value, params, retain_graph=True)
    g2 = torch.autograd.grad(dense_value, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-7)




def package_prior(*args, **kwargs) -> LaplacePrior:
    """A LaplacePrior with ``scaling="package"``: lam multiplies the Fisher quadratic itself, which is what the
    dense comparisons check."""
    return LaplacePrior(*args, scaling="package", **kwargs)
