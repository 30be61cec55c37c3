"""KFAC factors against independent computations: curvlinops (Linear), explicit unfolding (Conv1d), the
per-frame linear map of a ConvTranspose1d, and gate gradients of a hand-unrolled LSTM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from curv_helpers import (
    Holder,
    conv1d_patches_loop,
    conv_transpose1d_patches_loop,
    estimate_on,
    manual_lstm,
    tanh_squared_error,
)
from torch import nn
from torch.nn.utils import weight_norm

from tts_bpeft import LaplacePrior, add_lora, estimate_curvature, lora_targets

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a, b, **kw):
    torch.testing.assert_close(a.double(), b.double(), **(kw or TOL))


def test_one_sample_one_token_penalty_is_squared_directional_derivative():
    """With one sample and one token A = a a^T, G = g g^T, so lam * tr(dW^T G dW A) = lam * <grad_W l, dW>^2."""
    torch.manual_seed(0)
    model = Holder(lin=nn.Linear(5, 3))
    x, y = torch.randn(1, 5), torch.randn(1, 3)

    def loss_fn(m, batch):
        return ((torch.tanh(m.lin(batch[0])) - batch[1]) ** 2).sum(-1)

    grad_W, = torch.autograd.grad(loss_fn(model, (x, y)).sum(), model.lin.weight)
    model = add_lora(model, ["lin"], r=2, alpha=4)
    with torch.no_grad():
        model.lin.lora_B["default"].weight.normal_()
    curv = estimate_curvature(model, [(x, y)], loss_fn, progress=False)
    dW = 2.0 * model.lin.lora_B["default"].weight @ model.lin.lora_A["default"].weight
    expected = 3.5 * (grad_W * dW).sum() ** 2
    got = LaplacePrior(curv, lam=3.5, scaling="package").penalty(model)
    close(got, expected)
    assert expected > 1e-3  # not a vacuous 0 == 0


# ---------------------------------------------------------------------------------------------------------
# Linear vs curvlinops

class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


class ClassesSecond(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).transpose(1, 2)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_linear_factors_match_curvlinops(approx, reduction):
    """Mapping of conventions (curvlinops 3.0.1, kfac.py `_hook_accumulate_input_covariance` and
    `_accumulate_gradient_covariance`), N samples of T tokens, per-sample loss l_n = sum_t CE:

    - A: curvlinops divides sum a a^T by N * T (expand) or sum_n abar abar^T by N (reduce); ours divides by
      the token count (expand: N*T, reduce: N): identical.
    - G: curvlinops with CrossEntropyLoss(reduction='sum') accumulates sum g g^T of the summed loss with no
      normalisation, ours divides by N: G_ours = G_cl / N. With reduction='mean' curvlinops back-propagates
      the loss divided by (batch*T) and multiplies by (batch*T)^2 / (N*T): G_cl = sum g g^T / (N*T), so
      G_ours = T * G_cl.
    """
    from curvlinops import KFACLinearOperator
    from curvlinops.kfac import FisherType

    torch.manual_seed(0)
    N, T = 6, 5
    model = TwoLinear()
    X, Y = torch.randn(N, T, 4), torch.randint(0, 3, (N, T))
    batches = [(X[:4], Y[:4]), (X[4:], Y[4:])]

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]).transpose(1, 2), batch[1], reduction="none").sum(1)

    ours = estimate_curvature(model, batches, loss_fn, targets=["l1", "l2"], kfac_approx=approx, progress=False)
    classes_second = ClassesSecond(model)  # CrossEntropyLoss wants (B, C, T)
    op = KFACLinearOperator(classes_second, nn.CrossEntropyLoss(reduction=reduction),
                            [model.l1.weight, model.l2.weight], batches, fisher_type=FisherType.EMPIRICAL,
                            kfac_approx=approx, check_deterministic=False)
    op.compute_kronecker_factors()
    g_scale = 1 / N if reduction == "sum" else T
    for name in ("l1", "l2"):
        close(ours.kronecker_factors(name).input_cov, op._input_covariances["net." + name])
        close(ours.kronecker_factors(name).grad_cov, op._gradient_covariances["net." + name] * g_scale)


# ---------------------------------------------------------------------------------------------------------
# Conv1d by explicit unfolding

def _kfac_reference(a, g, n_samples, approx):
    """A, G from normal-form a (B, P, in), g (B, P, out) by the package's documented definitions."""
    if approx == "expand":
        a2, g2 = a.reshape(-1, a.shape[-1]).double(), g.reshape(-1, g.shape[-1]).double()
        return a2.T @ a2 / a2.shape[0], g2.T @ g2 / n_samples
    am, gs = a.mean(1).double(), g.sum(1).double()
    return am.T @ am / am.shape[0], gs.T @ gs / n_samples


def check_conv_factors(conv: nn.Module, x, tgt, patches, weight_matrix, approx):
    """The KFAC factors of `conv` under the loss sum (tanh(conv(x)) - tgt)^2 against `_kfac_reference` on the
    layer written as a dense map: explicit `patches` (B, L_out, in*k) times `weight_matrix` (out, in*k)."""
    ours = estimate_on("conv", conv, (x, tgt), tanh_squared_error, kfac_approx=approx)
    y = (patches @ weight_matrix.T + conv.bias).transpose(1, 2)
    close(y, conv(x))  # the dense map really is this layer
    y = y.detach().requires_grad_()
    g, = torch.autograd.grad(((torch.tanh(y) - tgt) ** 2).sum(), y)
    A, G = _kfac_reference(patches, g.transpose(1, 2), len(x), approx)
    close(ours.kronecker_factors("conv").input_cov, A)
    close(ours.kronecker_factors("conv").grad_cov, G)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv1d_factors_match_explicit_unfold(approx):
    torch.manual_seed(0)
    k, stride, padding, dilation = 3, 2, 3, 2
    conv = weight_norm(nn.Conv1d(3, 4, k, stride=stride, padding=padding, dilation=dilation))
    with torch.no_grad():
        conv.weight_g.mul_(1.7)  # effective weight != weight_v
    x, tgt = torch.randn(5, 3, 11), torch.randn(5, 4, 7)
    W = conv.weight_g * conv.weight_v / conv.weight_v.norm(dim=(1, 2), keepdim=True)
    check_conv_factors(conv, x, tgt, conv1d_patches_loop(x, k, stride, padding, dilation), W.reshape(4, -1), approx)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv_transpose1d_factors_match_dense_map(approx):
    torch.manual_seed(0)
    k, stride, padding, dilation, out_pad = 3, 2, 1, 2, 1
    conv = nn.ConvTranspose1d(3, 4, k, stride=stride, padding=padding, output_padding=out_pad, dilation=dilation)
    x = torch.randn(5, 3, 6)
    L_out = conv(x).shape[-1]
    tgt = torch.randn(5, 4, L_out)
    W_mat = torch.stack([conv.weight[:, o, :].reshape(-1) for o in range(4)])  # W_mat[o, i*k+j] = W[i, o, j]
    check_conv_factors(conv, x, tgt, conv_transpose1d_patches_loop(x, k, stride, padding, dilation, L_out), W_mat,
                       approx)


# ---------------------------------------------------------------------------------------------------------
# LSTM from hand-computed gate gradients

@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_lstm_factors_match_gate_gradients(approx):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True)
    head = torch.randn(4, 2)
    x, tgt = torch.randn(5, 6, 3), torch.randn(5, 6, 2)
    ours = estimate_on("lstm", lstm, (x, tgt), lambda out, y: ((out[0] @ head - y) ** 2).sum((1, 2)),
                       kfac_approx=approx)
    assert set(ours.names) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0"}

    out, gates, prev = manual_lstm(x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    close(out, lstm(x)[0])
    grads = torch.autograd.grad(((out @ head - tgt) ** 2).sum(), gates)
    g = torch.stack(grads, 1)
    A_ih, G = _kfac_reference(x, g, 5, approx)
    A_hh, _ = _kfac_reference(torch.stack(prev, 1).detach(), g, 5, approx)
    close(ours.kronecker_factors("lstm.weight_ih_l0").input_cov, A_ih)
    close(ours.kronecker_factors("lstm.weight_hh_l0").input_cov, A_hh)
    close(ours.kronecker_factors("lstm.weight_ih_l0").grad_cov, G)
    close(ours.kronecker_factors("lstm.weight_hh_l0").grad_cov, G)


def test_lora_targets_measure_the_base_weights_with_adapters_off():
    """On a LoRA model (adapters non-zero) the factors are those of the plain model: adapters are disabled."""
    torch.manual_seed(0)
    plain = TwoLinear()
    X, Y = torch.randn(4, 3, 4), torch.randint(0, 3, (4, 3))

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]).transpose(1, 2), batch[1], reduction="none").sum(1)

    ref = estimate_curvature(plain, [(X, Y)], loss_fn, targets=["l1", "l2"], progress=False)
    model = add_lora(plain, ["l1", "l2"], r=2)
    with torch.no_grad():
        for t in lora_targets(model).values():
            t.layer.lora_B["default"].weight.normal_()
    got = estimate_curvature(model, [(X, Y)], loss_fn, progress=False)
    for name in ("l1", "l2"):
        close(got.kronecker_factors(name).input_cov, ref.kronecker_factors(name).input_cov)
        close(got.kronecker_factors(name).grad_cov, ref.kronecker_factors(name).grad_cov)
