"""Estimation semantics: batch-size independence with padding, MC Fisher expectations, merging, forwards
without backwards (no_grad, checkpointing) and restoring the model exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from tts_bpeft import Categorical, Curvature, Gaussian, Laplace, add_lora, estimate_curvature


def assert_same(c1: Curvature, c2: Curvature, tol: float = 1e-5) -> None:
    assert c1.names == c2.names
    for name in c1.names:
        f1, f2 = c1.term(name), c2.term(name)
        assert set(f1) == set(f2)
        for key in f1:
            torch.testing.assert_close(f1[key], f2[key], rtol=tol, atol=tol * 1e-2)


# ---------------------------------------------------------------------------------------------------------
# batch-size independence with masked padding

class SeqNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 5)
        self.lstm = nn.LSTM(5, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x, lengths):
        h = torch.tanh(self.lin(x))
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(out)


def _seq_data(n=8, T=7):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 3, 5, 1, 6, 2, 7, 4])[:n]
    x = torch.randn(n, T, 3, generator=g)
    y = torch.randn(n, T, 2, generator=g)
    return x, y, lengths


def _seq_loss(m, batch):
    x, y, lengths = batch
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).float()[..., None]
    return (((m(x, lengths) - y) ** 2) * mask).sum((1, 2))


@pytest.mark.parametrize(("method", "approx"), [("kfac", "expand"), ("kfac", "reduce"), ("ewc", "expand")])
def test_batch_size_one_equals_eight_with_padding(method, approx):
    torch.manual_seed(0)
    model = SeqNet()
    x, y, lengths = _seq_data()
    x_garbage = x.clone()
    for n, L in enumerate(lengths):  # padding holds large garbage: it must not leak into the statistics
        x_garbage[n, L:] = 100.0
    big = [(x_garbage, y, lengths)]
    single = [(x[n:n + 1, :L], y[n:n + 1, :L], lengths[n:n + 1]) for n, L in enumerate(lengths)]
    kw = dict(method=method, kfac_approx=approx, targets=["lin", "lstm"], progress=False)
    c8 = estimate_curvature(model, big, _seq_loss, **kw)
    c1 = estimate_curvature(model, single, _seq_loss, **kw)
    assert c8.samples == c1.samples == 8
    assert_same(c8, c1)
    if method == "kfac":
        tokens = int(lengths.sum()) if approx == "expand" else 8
        assert c8.layers["lin"].tokens == [tokens]
        assert c8.layers["lstm.weight_hh_l0"].tokens == [tokens]


def test_batches_of_different_sizes_give_the_same_estimate():
    torch.manual_seed(0)
    model = SeqNet()
    x, y, lengths = _seq_data()
    c_a = estimate_curvature(model, [(x, y, lengths)], _seq_loss, targets=["lin", "lstm"], progress=False)
    c_b = estimate_curvature(model, [(x[:3], y[:3], lengths[:3]), (x[3:], y[3:], lengths[3:])], _seq_loss,
                             targets=["lin", "lstm"], progress=False)
    assert_same(c_a, c_b)


# ---------------------------------------------------------------------------------------------------------
# Monte-Carlo Fisher against analytic expectations

class MLP(nn.Module):
    def __init__(self, d_out: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, d_out)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def _analytic_G(model: MLP, x: torch.Tensor, H_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """E[g g^T] per layer when E[d l/d out (d l/d out)^T] = H_out[n] (out x out) for sample n:
    G_l2 = mean_n H_n, G_l1 = mean_n J_n^T H_n J_n with J_n = W2 diag(1 - tanh^2(z1_n))."""
    with torch.no_grad():
        z1 = model.l1(x)
        J = model.l2.weight[None] * (1 - torch.tanh(z1) ** 2)[:, None, :]  # (N, out, hidden)
    return {"l2": H_out.mean(0).double(),
            "l1": torch.einsum("nop,noq,nqr->pr", J, H_out, J).double() / x.shape[0]}


@pytest.mark.parametrize("case", ["gaussian_sum", "gaussian_mean", "laplace", "categorical"])
def test_mc_fisher_approaches_the_expectation(case):
    """Per case, with out = network output of sample n (D values):

    - Gaussian(sigma), reduction sum: g = (out - y) / sigma^2, y ~ N(out, sigma^2): E[g g^T] = I / sigma^2;
      reduction mean divides the per-sample loss by D: E[g g^T] = I / (sigma^2 D^2).
    - Laplace(b): g = -sign(y - loc) / b with independent symmetric signs: E[g g^T] = I / b^2.
    - Categorical: g = softmax(z) - onehot(y), y ~ softmax(z): E[g g^T] = diag(p) - p p^T.
    """
    torch.manual_seed(0)
    N, D, draws = 4000, 3, 4
    model = MLP(D)
    x = torch.randn(N, 3)
    y = torch.randn(N, D)
    sigma, b = 0.7, 1.3
    if case.startswith("gaussian"):
        red = case.split("_")[1]

        def loss_fn(m, batch):
            return Gaussian(m(batch[0]), batch[1], sigma=sigma, reduction=red)

        H = torch.eye(D).expand(N, D, D) / sigma**2 / (D**2 if red == "mean" else 1)
    elif case == "laplace":
        def loss_fn(m, batch):
            return Laplace(m(batch[0]), batch[1], scale=b)

        H = torch.eye(D).expand(N, D, D) / b**2
    else:
        y = torch.randint(0, D, (N,))

        def loss_fn(m, batch):
            return Categorical(m(batch[0]), batch[1])

        with torch.no_grad():
            p = F.softmax(model(x), -1)
        H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    expected = _analytic_G(model, x, H)
    curv = estimate_curvature(model, [(x, y)], loss_fn, fisher="mc", mc_samples=draws, targets=["l1", "l2"],
                              progress=False)
    assert curv.mc_samples == draws and curv.fisher == "mc"
    emp = estimate_curvature(model, [(x, y)], loss_fn, targets=["l1", "l2"], progress=False)
    for name in ("l1", "l2"):
        G = curv.kronecker_factors(name).grad_cov.double()
        err = (G - expected[name]).norm() / expected[name].norm()
        assert err < 0.06, (name, err)  # 16,000 draws: MC error ~1-2%; a wrong scale (x2, /D) fails
        if case.startswith("gaussian"):  # the empirical Fisher on these targets is another matrix: teeth
            G_emp = emp.kronecker_factors(name).grad_cov.double()
            assert (G_emp - expected[name]).norm() / expected[name].norm() > 0.15
        # the input covariance is counted once per call, whatever the draws
        torch.testing.assert_close(curv.kronecker_factors(name).input_cov, emp.kronecker_factors(name).input_cov)


def test_mc_fisher_is_reproducible_with_a_seed():
    torch.manual_seed(0)
    model, x = MLP(3), torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))

    def loss_fn(m, batch):
        return Categorical(m(batch[0]), batch[1])

    kw = dict(fisher="mc", mc_samples=3, targets=["l1", "l2"], progress=False)
    c1 = estimate_curvature(model, [(x, y)], loss_fn, seed=5, **kw)
    c2 = estimate_curvature(model, [(x, y)], loss_fn, seed=5, **kw)
    c3 = estimate_curvature(model, [(x, y)], loss_fn, seed=6, **kw)
    assert torch.equal(c1.kronecker_factors("l2").grad_cov, c2.kronecker_factors("l2").grad_cov)
    assert not torch.equal(c1.kronecker_factors("l2").grad_cov, c3.kronecker_factors("l2").grad_cov)


def test_mc_fisher_with_plain_tensor_loss_is_a_type_error():
    model, x = MLP(2), torch.randn(4, 3)
    with pytest.raises(TypeError, match="Likelihood"):
        estimate_curvature(model, [x], lambda m, b: (m(b) ** 2).sum(-1), fisher="mc", targets=["l1"],
                           progress=False)


# ---------------------------------------------------------------------------------------------------------
# merging

@pytest.mark.parametrize("method", ["kfac", "ewc"])
def test_sum_of_estimates_equals_one_estimate_over_all_batches(method):
    torch.manual_seed(0)
    model = SeqNet()
    x, y, lengths = _seq_data()
    kw = dict(method=method, targets=["lin", "lstm"], progress=False)
    whole = estimate_curvature(model, [(x[:2], y[:2], lengths[:2]), (x[2:], y[2:], lengths[2:])], _seq_loss, **kw)
    c1 = estimate_curvature(model, [(x[:2], y[:2], lengths[:2])], _seq_loss, **kw)
    c2 = estimate_curvature(model, [(x[2:], y[2:], lengths[2:])], _seq_loss, **kw)
    pooled = c1 + c2
    assert pooled.samples == 8
    assert_same(pooled, whole)
    if method == "kfac":
        assert pooled.layers["lin"].tokens == whole.layers["lin"].tokens
        # not trivial
        assert not torch.allclose(c1.kronecker_factors("lin").input_cov, whole.kronecker_factors("lin").input_cov,
                                  rtol=1e-3)


def test_weighted_sum_semantics():
    torch.manual_seed(0)
    model = SeqNet()
    x, y, lengths = _seq_data()
    kw = dict(targets=["lin"], progress=False)
    k1 = estimate_curvature(model, [(x[:4], y[:4], lengths[:4])], _seq_loss, **kw)
    k2 = estimate_curvature(model, [(x[4:], y[4:], lengths[4:])], _seq_loss, **kw)
    s = Curvature.weighted_sum([k1, k2], [0.25, 3.0])
    terms = s.terms("lin")
    assert len(terms) == 2 and s.samples == 8
    torch.testing.assert_close(terms[0]["A"], k1.kronecker_factors("lin").input_cov)
    torch.testing.assert_close(terms[0]["G"], 0.25 * k1.kronecker_factors("lin").grad_cov)
    torch.testing.assert_close(terms[1]["G"], 3.0 * k2.kronecker_factors("lin").grad_cov)
    with pytest.raises(ValueError, match="Kronecker terms"):
        s.term("lin")
    with pytest.raises(ValueError, match="single-term"):
        _ = s + s
    e1 = estimate_curvature(model, [(x[:4], y[:4], lengths[:4])], _seq_loss, method="ewc", **kw)
    e2 = estimate_curvature(model, [(x[4:], y[4:], lengths[4:])], _seq_loss, method="ewc", **kw)
    es = Curvature.weighted_sum([e1, e2], [0.25, 3.0])
    torch.testing.assert_close(es.term("lin")["diag"], 0.25 * e1.term("lin")["diag"]
                               + 3.0 * e2.term("lin")["diag"])
    with pytest.raises(ValueError, match="one method"):
        Curvature.weighted_sum([k1, e1], [1.0, 1.0])
    with pytest.raises(ValueError, match="as many weights"):
        Curvature.weighted_sum([k1, k2], [1.0])
    with pytest.raises(ValueError, match="different methods"):
        _ = k1 + e1


# ---------------------------------------------------------------------------------------------------------
# forwards without backward

class CkNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x, reentrant=None):
        if reentrant is None:
            return self.b(torch.tanh(self.a(x)))
        return self.b(checkpoint(lambda z: torch.tanh(self.a(z)), x, use_reentrant=reentrant))


@pytest.mark.parametrize("variant", ["no_grad", "checkpoint", "checkpoint_reentrant"])
@pytest.mark.parametrize("method", ["kfac", "ewc"])
def test_forward_without_backward_adds_nothing(variant, method):
    torch.manual_seed(0)
    model = CkNet()
    x, y = torch.randn(6, 3), torch.randn(6, 2)

    def plain(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum(-1)

    def other(m, batch):
        if variant == "no_grad":
            with torch.no_grad():
                m(batch[0] * 3)  # an evaluation pass on other inputs
            return plain(m, batch)
        inp = batch[0].clone().requires_grad_(variant == "checkpoint_reentrant")  # reentrant needs it
        return ((m(inp, reentrant=variant == "checkpoint_reentrant") - batch[1]) ** 2).sum(-1)

    kw = dict(method=method, targets=["a", "b"], progress=False)
    ref = estimate_curvature(model, [(x, y)], plain, **kw)
    got = estimate_curvature(model, [(x, y)], other, **kw)
    assert_same(got, ref, tol=1e-6)
    if method == "kfac":
        assert got.layers["a"].tokens == [6]


# ---------------------------------------------------------------------------------------------------------
# the model is left as found

class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h, _ = self.lstm(torch.tanh(self.lin(x)))
        return self.conv(self.drop(h).transpose(1, 2))


def _snapshot(model: nn.Module):
    return dict(
        training={n: m.training for n, m in model.named_modules()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        grads={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        disabled={n: m._disable_adapters for n, m in model.named_modules() if isinstance(m, LoraLayer)},
        hooks={n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
               for n, m in model.named_modules()},
        instance_forward={n: m.__dict__.get("forward") for n, m in model.named_modules()},
        state={k: v.clone() for k, v in model.state_dict().items()},
    )


@pytest.mark.parametrize("fail", [None, "after_forward", "in_backward"])
def test_model_is_restored_even_when_loss_fn_raises(fail):
    torch.manual_seed(0)
    model = add_lora(Mixed(), ["lin", "lstm", "conv"], r=2)
    model.train()
    model.drop.eval()  # a mixed mode pattern
    for name, p in model.named_parameters():
        if name.endswith("lora_A.default.weight"):
            p.requires_grad_(False)  # a user choice that must survive
    model.lin.base_layer.weight.grad = torch.ones_like(model.lin.base_layer.weight)
    before = _snapshot(model)
    x = torch.randn(2, 5, 3)

    def loss_fn(m, batch):
        out = m(batch)
        if fail == "after_forward":
            raise RuntimeError("boom")
        if fail == "in_backward":
            def explode(grad):
                raise RuntimeError("boom")
            out.register_hook(explode)
        return (out ** 2).sum((1, 2))

    if fail is None:
        estimate_curvature(model, [x], loss_fn, progress=False)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            estimate_curvature(model, [x], loss_fn, progress=False)
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["disabled"] == before["disabled"] and not any(after["disabled"].values())
    assert after["hooks"] == before["hooks"]
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert "forward" not in model.lstm.get_base_layer().__dict__
    assert after["instance_forward"] == before["instance_forward"]
    assert set(after["grads"]) == set(before["grads"])
    for k, g in before["grads"].items():
        assert (g is None and after["grads"][k] is None) or torch.equal(g, after["grads"][k])
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


def test_an_instance_forward_on_an_lstm_is_put_back():
    model = Mixed()
    own = model.lstm.forward  # bound method stored on the instance, as wrappers do
    model.lstm.forward = own
    x = torch.randn(2, 5, 3)
    estimate_curvature(model, [x], lambda m, b: (m(b) ** 2).sum((1, 2)), targets=["lstm"], progress=False)
    assert model.lstm.__dict__["forward"] is own
