"""The products the curvature estimators take from a convolution call, against references from the definitions.

`tts_bpeft.curvature.calls` never builds a ConvTranspose1d's full patches for its Gram matrix (it adds per-phase
Gram matrices into their tap blocks), sums a stride-1 Conv1d's by lags on the CPU, and takes per-sample gradients
from the weight-gradient kernel. Each is checked here against: patches by explicit indexing (`curv_helpers`), the
dense Gram matrix of the masked patches (for padding modes the index loops lack, of `conv1d_patches`, which
tests/lora/test_lora_layers.py checks against the layer's output), and per-sample weight gradients from
`torch.func` on the layer's own forward.
"""

from __future__ import annotations

import pytest
import torch
from curv_helpers import conv1d_patches_loop, conv_transpose1d_patches_loop
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tts_bpeft.curvature import calls
from tts_bpeft.curvature.calls import Conv1dCall, ConvTranspose1dCall, RowsCall
from tts_bpeft.layers import conv1d_patches, weight_to_matrix

calls_add_lagged_gram = calls._add_lagged_gram

# kind, (in, out, k, stride, padding, dilation, L, output_size): the Kokoro / StyleTTS 2 upsampling (k = 2
# stride), a kernel shorter than its stride (phases without taps), padding beyond the kernel's reach, stride and
# dilation sharing a factor, a call that picks its output padding through output_size; strided, dilated and
# unpadded Conv1d.
GEOMETRIES = {
    "convT_upsample_k20_s10": ("conv_transpose1d", (3, 2, 20, 10, 5, 1, 4, None)),
    "convT_k_below_stride": ("conv_transpose1d", (2, 3, 3, 5, 1, 1, 5, None)),
    "convT_padding_beyond_kernel": ("conv_transpose1d", (2, 2, 3, 2, 4, 1, 9, None)),
    "convT_stride4_dil2": ("conv_transpose1d", (2, 3, 5, 4, 3, 2, 6, None)),
    "convT_output_size": ("conv_transpose1d", (2, 2, 4, 3, 1, 1, 5, 16)),
    "conv_stride2_pad1": ("conv1d", (3, 2, 3, 2, 1, 1, 11, None)),
    "conv_dil3_pad4": ("conv1d", (2, 3, 3, 1, 4, 3, 9, None)),
    "conv_stride3_dil2_pad0": ("conv1d", (2, 2, 4, 3, 0, 2, 16, None)),
}


def _geometry(case: str) -> tuple[Conv1dCall | ConvTranspose1dCall, Tensor]:
    """The call of a layer of `case`'s geometry on a batch of 3, and its patches by explicit indexing."""
    kind, (n_in, n_out, k, stride, padding, dilation, length, output_size) = GEOMETRIES[case]
    torch.manual_seed(0)
    x = torch.randn(3, n_in, length, dtype=torch.float64)
    if kind == "conv1d":
        conv = nn.Conv1d(n_in, n_out, k, stride, padding, dilation).double()
        out_length = conv(x).shape[-1]
        return Conv1dCall(conv, x, out_length), conv1d_patches_loop(x, k, stride, padding, dilation)
    conv = nn.ConvTranspose1d(n_in, n_out, k, stride, padding, dilation=dilation).double()
    out_length = conv(x, output_size=[output_size] if output_size else None).shape[-1]
    return (ConvTranspose1dCall(conv, x, out_length),
            conv_transpose1d_patches_loop(x, k, stride, padding, dilation, out_length))


def _mask(batch: int, length: int) -> Tensor:
    """Ragged lengths (the last sample one frame long), as padded batches have."""
    lengths = torch.tensor([length, max(1, length - 3), 1])[:batch]
    return (torch.arange(length)[None, :] < lengths[:, None]).double()


def _per_sample_weight_gradients(conv: nn.Module, x: Tensor, g: Tensor, out_length: int, kind: str) -> Tensor:
    """d/dW sum_t <g[b, t], conv(x_b)[:, t]> for each sample b alone, by torch.func on the layer's forward."""
    kwargs = {"output_size": [out_length]} if kind == "conv_transpose1d" else {}

    def pairing(weight: Tensor, x_b: Tensor, g_b: Tensor) -> Tensor:
        y = functional_call(conv, {"weight": weight, "bias": conv.bias}, (x_b[None],), kwargs)
        return (y[0] * g_b.T).sum()

    grads = vmap(grad(pairing), in_dims=(None, 0, 0))(conv.weight.detach(), x, g)
    return torch.stack([weight_to_matrix(kind, w) for w in grads])


@pytest.mark.parametrize("case", list(GEOMETRIES))
def test_conv_call_matches_definitions(case):
    """Masked patches, their Gram matrix and per-sample weight gradients of one call of each geometry."""
    call, patches = _geometry(case)
    mask = _mask(call.batch, call.out_length)
    reference = patches * mask[..., None]

    torch.testing.assert_close(call.patches(mask), reference, rtol=0, atol=0)
    rows = reference.reshape(-1, reference.shape[-1])
    torch.testing.assert_close(call.add_gram(None, mask), rows.T @ rows, rtol=1e-12, atol=1e-12)

    g = torch.randn(call.batch, call.out_length, call.conv.out_channels, dtype=torch.float64)
    torch.testing.assert_close(call.per_sample_gradients(g),
                               _per_sample_weight_gradients(call.conv, call.x, g, call.out_length, call.kind))


def test_reflect_padded_conv_per_sample_gradients():
    """A reflect-padded Conv1d (StyleTTS 2's iSTFTNet blocks) pads before the kernel; the gradient sees that."""
    torch.manual_seed(1)
    conv = nn.Conv1d(2, 3, 3, padding=2, dilation=2, padding_mode="reflect").double()
    x = torch.randn(2, 2, 8, dtype=torch.float64)
    out_length = conv(x).shape[-1]
    g = torch.randn(2, out_length, 3, dtype=x.dtype)
    call = Conv1dCall(conv, x, out_length)
    patches = call.patches()
    torch.testing.assert_close(call.per_sample_gradients(g), torch.einsum("bto,bti->boi", g, patches))
    torch.testing.assert_close(call.per_sample_gradients(g),
                               _per_sample_weight_gradients(conv, x, g, out_length, "conv1d"))


def test_gram_accumulates_in_place():
    """A second call adds into the first call's sum, the same tensor, as one Gram of both calls' rows would."""
    call, _ = _geometry("convT_upsample_k20_s10")
    conv, x, out_length = call.conv, call.x, call.out_length
    first, second = x[:2], x[2:]
    mask_first, mask_second = _mask(2, out_length), torch.ones(1, out_length, dtype=x.dtype)
    total = ConvTranspose1dCall(conv, first, out_length).add_gram(None, mask_first)
    same = ConvTranspose1dCall(conv, second, out_length).add_gram(total, mask_second)
    assert same is total
    rows = torch.cat([ConvTranspose1dCall(conv, first, out_length).patches(mask_first),
                      ConvTranspose1dCall(conv, second, out_length).patches(mask_second)]).flatten(0, 1)
    torch.testing.assert_close(total, rows.T @ rows, rtol=1e-12, atol=1e-12)


def test_rows_call_regrouped_per_sample():
    """An LSTM's flattened (B*T, 1, in) rows regroup sample-major, and per-sample gradients sum each sample's rows."""
    torch.manual_seed(2)
    a = torch.randn(2 * 4, 1, 3, dtype=torch.float64)
    g = torch.randn(2, 4, 5, dtype=torch.float64)
    call = RowsCall(a).regrouped(2)
    assert call.batch == 2
    expected = torch.stack([sum(torch.outer(g[b, t], a[b * 4 + t, 0]) for t in range(4)) for b in range(2)])
    torch.testing.assert_close(call.per_sample_gradients(g), expected)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    kept = a.reshape(2, 4, 3)[mask.bool()]
    torch.testing.assert_close(call.add_gram(None, mask), kept.T @ kept)


LAGGED = {  # stride-1 Conv1d geometries: (in, k, dilation, padding, padding_mode, L)
    "k11_dil5_same": (3, 11, 5, "same", "zeros", 60),
    "k7_dil3_reflect": (2, 7, 3, 9, "reflect", 30),
    "k4_dil2_same_even": (3, 4, 2, "same", "zeros", 17),
    "k3_unpadded": (4, 3, 1, 0, "zeros", 12),
}
MASKS = {
    "all_active": lambda batch, length: torch.ones(batch, length),
    "ragged": lambda batch, length: _mask(batch, length),
    "scattered": lambda batch, length: (torch.rand(batch, length, generator=torch.Generator().manual_seed(4)) > 0.3),
    "mostly_inactive": lambda batch, length: torch.arange(length).expand(batch, length) < 1,
}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("case", list(LAGGED))
def test_stride_one_conv_gram_by_lags(case, mask_name, monkeypatch):
    """A stride-1 Conv1d's Gram matrix from lag products (minus the inactive positions' patches) equals the Gram
    of its masked patches, added into an existing sum; a mask with most positions inactive takes the patches."""
    n_in, k, dilation, padding, mode, length = LAGGED[case]
    torch.manual_seed(5)
    conv = nn.Conv1d(n_in, 2, k, padding=padding, dilation=dilation, padding_mode=mode).double()
    x = torch.randn(3, n_in, length, dtype=torch.float64)
    out_length = conv(x).shape[-1]
    mask = MASKS[mask_name](3, out_length)
    lagged = []
    monkeypatch.setattr(calls, "_add_lagged_gram", lambda *args: lagged.append(calls_add_lagged_gram(*args)))
    monkeypatch.setattr(calls, "LAGGED_MIN_POSITIONS", 1)  # these calls are shorter than the speed threshold
    start = torch.randn(n_in * k, n_in * k, dtype=torch.float64)
    total = Conv1dCall(conv, x, out_length).add_gram(start.clone(), mask)
    rows = conv1d_patches(conv, x, mask.double()).flatten(0, 1)
    torch.testing.assert_close(total, start + rows.T @ rows, rtol=1e-12, atol=1e-10)
    assert len(lagged) == (mask_name != "mostly_inactive")


def test_short_stride_one_conv_takes_the_dense_gram(monkeypatch):
    """Under `LAGGED_MIN_POSITIONS` positions the dense Gram is the faster one and is taken; at it, the lags."""
    conv = nn.Conv1d(2, 2, 3, padding=1)
    lagged = []
    monkeypatch.setattr(calls, "_add_lagged_gram", lambda *args: lagged.append(calls_add_lagged_gram(*args)))
    for length in (calls.LAGGED_MIN_POSITIONS - 1, calls.LAGGED_MIN_POSITIONS):
        x = torch.randn(1, 2, length)
        Conv1dCall(conv, x, length).add_gram(None, torch.ones(1, length))
    assert len(lagged) == 1
