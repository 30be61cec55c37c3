"""EWC diagonal = mean over samples of squared per-sample gradients, the latter from torch.func
(vmap(grad(...))) on functional versions of the layers, w.r.t. the *effective* weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from curv_helpers import Holder, estimate_on, tanh_squared_error
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import weight_norm

from tts_bpeft import estimate_curvature


def per_sample_diag(loss_one, W, *data):
    """mean_n (d l_n / dW)^2 with l_n = loss_one(W, *data_n) for one sample (leading dim 1 re-added)."""
    def single(W, *d):
        return loss_one(W, *(t.unsqueeze(0) for t in d))
    grads = vmap(grad(single), in_dims=(None,) + (0,) * len(data))(W, *data)
    return (grads.double() ** 2).mean(0), grads


def assert_close(a, b):
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-8)


class LinearOnSequences:
    """A Linear (4 -> 5) on 6 sequences of `length` (7) under a tanh and a fixed head, squared error per sample:
    `loss_fn` for the estimators, `loss_one(W, x, y)` of one sample for torch.func."""

    def __init__(self, length: int = 7) -> None:
        torch.manual_seed(0)
        self.lin, self.head = nn.Linear(4, 5), torch.randn(5, 3)
        self.model = Holder(lin=self.lin)
        self.x, self.y = torch.randn(6, length, 4), torch.randn(6, length, 3)
        self.batches = [(self.x[:4], self.y[:4]), (self.x[4:], self.y[4:])]

    def loss_fn(self, m, batch):
        return ((torch.tanh(m.lin(batch[0])) @ self.head - batch[1]) ** 2).sum((1, 2))

    def loss_one(self, W, x, y):
        return ((torch.tanh(F.linear(x, W, self.lin.bias)) @ self.head - y) ** 2).sum()

    def per_sample(self):
        """(mean squared per-sample gradient, per-sample gradients (6, 5, 4)) w.r.t. the weight."""
        return per_sample_diag(self.loss_one, self.lin.weight.detach(), self.x, self.y)


def test_ewc_linear_on_sequences():
    p = LinearOnSequences()
    ours = estimate_curvature(p.model, p.batches, p.loss_fn, method="ewc", targets=["lin"], progress=False)
    diag, grads = p.per_sample()
    assert_close(ours.term("lin")["diag"], diag)
    # the squared *mini-batch* gradient is a different (smaller) quantity: the test can tell them apart
    batch_sq = (grads.mean(0).double() ** 2)
    assert (diag - batch_sq).abs().max() > 1e-2


def test_ewc_conv1d_weight_normed_dilated_strided():
    torch.manual_seed(0)
    conv = weight_norm(nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2))
    with torch.no_grad():
        conv.weight_g.mul_(0.6)
    x = torch.randn(5, 3, 10)
    y = torch.randn(5, 4, conv(x).shape[-1])
    ours = estimate_on("conv", conv, (x, y), tanh_squared_error, method="ewc")
    W = (conv.weight_g * conv.weight_v / conv.weight_v.norm(dim=(1, 2), keepdim=True)).detach()

    def loss_one(W, x, y):
        out = F.conv1d(x, W, conv.bias, stride=2, padding=2, dilation=2)
        return ((torch.tanh(out) - y) ** 2).sum()

    diag, _ = per_sample_diag(loss_one, W, x, y)
    assert_close(ours.term("conv")["diag"], diag.reshape(4, -1))  # (out, in*k), index i*k + j


def test_ewc_conv_transpose1d():
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1, dilation=1)
    x = torch.randn(5, 3, 6)
    y = torch.randn(5, 4, conv(x).shape[-1])
    ours = estimate_on("conv", conv, (x, y), tanh_squared_error, method="ewc")

    def loss_one(W, x, y):
        out = F.conv_transpose1d(x, W, conv.bias, stride=2, padding=1, output_padding=1)
        return ((torch.tanh(out) - y) ** 2).sum()

    diag, _ = per_sample_diag(loss_one, conv.weight.detach(), x, y)  # (in, out, k)
    expected = torch.stack([diag[:, o, :].reshape(-1) for o in range(4)])  # matrix view [o, i*k + j]
    assert_close(ours.term("conv")["diag"], expected)


def test_ewc_lstm_weights():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True)
    head = torch.randn(4, 2)
    x, y = torch.randn(5, 6, 3), torch.randn(5, 6, 2)
    ours = estimate_on("lstm", lstm, (x, y), lambda out, y: ((out[0] @ head - y) ** 2).sum((1, 2)), method="ewc")
    params = {k: v.detach() for k, v in lstm.named_parameters()}

    def loss_one(w, x, y):
        out = functional_call(lstm, {**params, **w}, (x,))[0]
        return ((out @ head - y) ** 2).sum()

    weights = {k: params[k] for k in ("weight_ih_l0", "weight_hh_l0")}
    try:
        grads = vmap(grad(lambda w, x, y: loss_one(w, x[None], y[None])), in_dims=(None, 0, 0))(weights, x, y)
    except (RuntimeError, NotImplementedError):  # no batching rule for the fused kernel: loop over samples
        per = [grad(loss_one)(weights, x[n:n + 1], y[n:n + 1]) for n in range(5)]
        grads = {k: torch.stack([p[k] for p in per]) for k in weights}
    for k in weights:
        assert_close(ours.term(f"lstm.{k}")["diag"], (grads[k].double() ** 2).mean(0))


def test_ewc_and_reduce_kfac_on_a_flattened_batch_equal_the_batched_layer():
    """Transformer MLPs call their Linear on (B*T, in): the rows are regrouped by sample, giving the same
    per-sample statistics as the (B, T, in) call; a time-major input cannot be regrouped and is named."""
    p = LinearOnSequences()

    def flattened(m, batch):
        h = m.lin(batch[0].reshape(-1, 4)).reshape(batch[0].shape[0], -1, 5)
        return ((torch.tanh(h) @ p.head - batch[1]) ** 2).sum((1, 2))

    def time_major(m, batch):
        h = m.lin(batch[0].transpose(0, 1)).transpose(0, 1)
        return ((torch.tanh(h) @ p.head - batch[1]) ** 2).sum((1, 2))

    for method, kwargs, key in (("ewc", {}, "diag"), ("kfac", {"kfac_approx": "reduce"}, "G")):
        want = estimate_curvature(p.model, p.batches, p.loss_fn, method=method, targets=["lin"], progress=False,
                                  **kwargs)
        got = estimate_curvature(p.model, p.batches, flattened, method=method, targets=["lin"], progress=False,
                                 **kwargs)
        assert_close(got.term("lin")[key], want.term("lin")[key])
    with pytest.raises(ValueError, match="'lin' saw a leading dimension of 7 but the batch has 4 samples"):
        estimate_curvature(p.model, p.batches, time_major, method="ewc", targets=["lin"], progress=False)


def test_float64_model_keeps_float64_statistics():
    """Two positions with almost equal inputs and opposite outputs' gradients: the per-sample gradient
    ``g_0 a_0^T + g_1 a_1^T = g_0 (a_0 - a_1)^T`` is ~1e-6 of its terms. Statistics rounded to float32 lose it
    (~10 % error); a float64 model's EWC and EKFAC statistics must match torch.func's float64 gradients."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(3, 2, dtype=torch.float64)
    x0 = torch.randn(5, 1, 3, generator=g, dtype=torch.float64)
    x = torch.cat([x0, x0 + 1e-6 * torch.randn(5, 1, 3, generator=g, dtype=torch.float64)], 1)  # (5, 2, 3)
    model = Holder(lin=lin)

    def loss_fn(m, batch):
        out = m.lin(batch)
        return 1e3 * ((out[:, 0] - out[:, 1] + 1e-6) ** 2).sum(-1)

    def loss_one(W, xb):
        out = F.linear(xb, W, lin.bias)
        return 1e3 * ((out[:, 0] - out[:, 1] + 1e-6) ** 2).sum()

    diag, grads = per_sample_diag(loss_one, lin.weight.detach(), x)
    batches = [x[:2], x[2:]]
    ewc = estimate_curvature(model, batches, loss_fn, method="ewc", targets=["lin"], progress=False)
    torch.testing.assert_close(ewc.term("lin")["diag"].double(), diag, rtol=1e-6, atol=0)
    ekfac = estimate_curvature(model, batches, loss_fn, method="ekfac", targets=["lin"], progress=False)
    term = ekfac.term("lin")
    Q_A, Q_G = term["A_basis"].double(), term["G_basis"].double()
    rotated = (Q_G.T @ grads @ Q_A) ** 2  # the stored (float32) bases, rotating float64 per-sample gradients
    torch.testing.assert_close(term["scales"].double(), rotated.mean(0), rtol=1e-4, atol=1e-6 * rotated.max().item())


@pytest.mark.parametrize("bias", [False, True])
def test_gradients_reach_layer_outputs_without_weight_or_bias_gradients(bias):
    """A Conv1d (the model's first layer: its input needs no gradient) and a Linear after it: their outputs get
    gradients through a zero scalar added to them, neither weights nor biases require grad during the estimate,
    and the estimate still equals torch.func's per-sample gradients; hooks and flags are restored after."""
    torch.manual_seed(3)
    conv, lin = nn.Conv1d(3, 4, 3, padding=1, bias=bias), nn.Linear(4, 2, bias=bias)
    model = Holder(conv=conv, lin=lin)
    x, y = torch.randn(5, 3, 6), torch.randn(5, 6, 2)
    flags = []

    def loss_fn(m, batch):
        flags.append({n: p.requires_grad for n, p in m.named_parameters()})
        return ((torch.tanh(m.lin(m.conv(batch[0]).transpose(1, 2))) - batch[1]) ** 2).sum((1, 2))

    ours = estimate_curvature(model, [(x, y)], loss_fn, method="ewc", targets=["conv", "lin"], progress=False)
    assert len(flags) == 1 and not any(flags[0].values())
    assert not conv._forward_hooks and not lin._forward_hooks
    assert all(p.requires_grad for p in model.parameters())

    def loss_one(Wc, Wl, x, y):
        hidden = F.conv1d(x, Wc, conv.bias, padding=1).transpose(1, 2)
        return ((torch.tanh(F.linear(hidden, Wl, lin.bias)) - y) ** 2).sum()

    Wc, Wl = conv.weight.detach(), lin.weight.detach()
    conv_diag, _ = per_sample_diag(lambda W, x, y: loss_one(W, Wl, x, y), Wc, x, y)
    lin_diag, _ = per_sample_diag(lambda W, x, y: loss_one(Wc, W, x, y), Wl, x, y)
    assert_close(ours.term("conv")["diag"], conv_diag.reshape(4, -1))
    assert_close(ours.term("lin")["diag"], lin_diag)
