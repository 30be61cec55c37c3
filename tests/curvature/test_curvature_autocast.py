"""Curvature estimation under bf16 autocast (CPU): float32 factors, fp32 products, agreement with float32.

Tolerance: the whole estimate under autocast is within 3 % (relative Frobenius norm) of the float32 one,
layer by layer: the layers see bf16-rounded activations and gradients (8 mantissa bits, ~0.4 % per element),
and the factors are second moments of those. Where a layer's input is not rounded (the first layer reads the
float32 data), its A factor agrees to 1e-5: the products themselves run in float32, not in bf16.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tts_bpeft import estimate_curvature


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.conv = nn.Conv1d(16, 12, 3, padding=1)
        self.out = nn.Linear(12, 5)

    def forward(self, x):
        h = torch.tanh(self.inp(x)).transpose(1, 2)
        return self.out(torch.tanh(self.conv(h)).transpose(1, 2))


def per_sample(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).sum((1, 2))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = ConvNet()
    data = [(torch.randn(3, 20, 6), torch.randn(3, 20, 5)) for _ in range(4)]
    return model, data


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["kfac", "ewc"])
def test_bf16_autocast_estimate_is_float32_and_agrees_with_float32(setup, method):
    model, data = setup
    reference = estimate_curvature(model, data, per_sample, method=method, targets=["Linear", "Conv1d"],
                                   progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.inp(data[0][0]).dtype == torch.bfloat16  # autocast really runs the layers in bf16
        mixed = estimate_curvature(model, data, per_sample, method=method, targets=["Linear", "Conv1d"],
                                   progress=False)
    assert mixed.names == reference.names == ["inp", "conv", "out"]
    for name in mixed.names:
        for key, value in mixed.term(name).items():
            expected = reference.term(name)[key]
            assert value.dtype == torch.float32 and torch.isfinite(value).all()
            error = _relative(value, expected)
            assert error < 3e-2, (name, key, error)
            assert error > 0 or (method, name, key) == ("kfac", "inp", "A")  # bf16 really changed the rest
        assert mixed.layers[name].tokens == reference.layers[name].tokens


def test_products_run_in_float32_under_autocast(setup):
    """The first layer's input is the float32 data under autocast too: its A factor must match float32 to
    float32 rounding. A bf16 product (autocast's choice for a matmul) would be ~1e-2 off."""
    model, data = setup
    reference = estimate_curvature(model, data, per_sample, targets=["Linear"], progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = estimate_curvature(model, data, per_sample, targets=["Linear"], progress=False)
    torch.testing.assert_close(mixed.term("inp")["A"], reference.term("inp")["A"], rtol=1e-5, atol=1e-6)
    x = torch.cat([b[0] for b in data]).reshape(-1, 6)
    bf16_product = (x.bfloat16().T @ x.bfloat16()).float() / x.shape[0]
    assert _relative(bf16_product, reference.term("inp")["A"]) > 1e-3  # what a bf16 product would give
