"""LoRA on every supported layer type, checked against the base layer computed independently with W + dW."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from torch.nn.utils import parametrizations, spectral_norm, weight_norm
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tts_bpeft.layers import conv1d_patches, conv_transpose1d_patches, matrix_to_weight, weight_to_matrix
from tts_bpeft.lora import add_lora, lora_targets, merged_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5


class Holder(nn.Module):
    """The layer under test as a named child (a model's root itself is never adapted)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        return self.layer(*args, **kwargs)


# ---------------------------------------------------------------- independent effective weights

def _norm_except_0(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def ref_weight(layer: nn.Module) -> Tensor:
    """The effective weight of a (deep-copied, never adapted) layer, from its stored tensors."""
    if hasattr(layer, "weight_g"):  # old weight norm, dim 0
        return layer.weight_g * layer.weight_v / _norm_except_0(layer.weight_v)
    if hasattr(layer, "weight_orig"):  # old spectral norm, eval mode: W / (u^T W v)
        w = layer.weight_orig
        sigma = layer.weight_u @ (w.reshape(w.shape[0], -1) @ layer.weight_v)
        return w / sigma
    if hasattr(layer, "parametrizations") and hasattr(layer.parametrizations.weight[0], "_u"):  # new spectral
        sn = layer.parametrizations.weight[0]
        w = layer.parametrizations.weight.original
        return w / (sn._u @ (w.reshape(w.shape[0], -1) @ sn._v))
    if hasattr(layer, "parametrizations"):  # new weight norm, dim 0
        g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
        return g * v / _norm_except_0(v)
    return layer.weight


def conv_ref(conv: nn.Conv1d, weight: Tensor, x: Tensor) -> Tensor:
    padding = conv.padding
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    return F.conv1d(x, weight, conv.bias, conv.stride, padding, conv.dilation)


def conv_t_ref(conv: nn.ConvTranspose1d, weight: Tensor, x: Tensor, output_size: int | None) -> Tensor:
    k, (s,), (p,), (d,) = conv.kernel_size[0], conv.stride, conv.padding, conv.dilation
    default = (x.shape[-1] - 1) * s - 2 * p + d * (k - 1) + 1
    out_pad = conv.output_padding[0] if output_size is None else output_size - default
    return F.conv_transpose1d(x, weight, conv.bias, s, p, out_pad, 1, d)


# ---------------------------------------------------------------- the cases

@dataclass
class Case:
    name: str
    kind: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[tuple, dict]]
    prepare: Callable[[nn.Module], None] | None = None  # run on the base before anything (spectral norm)


def _x(*shape):
    return lambda: ((torch.randn(*shape),), {})


def _spectral_conv() -> nn.Module:
    return spectral_norm(nn.Conv1d(3, 4, 3, padding=1))


def _converge_spectral(layer: nn.Module) -> None:
    layer.train()
    with torch.no_grad():
        for _ in range(20):
            layer(torch.randn(2, 3, 9))
    layer.eval()


def _lstm(batch_first: bool):
    return lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)


def _packed():
    x = torch.randn(3, 6, 3)  # batch first
    return (pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True),), {}


CASES = [
    Case("linear_2d", "linear", lambda: nn.Linear(5, 4), _x(3, 5)),
    Case("linear_3d", "linear", lambda: nn.Linear(5, 4), _x(2, 7, 5)),
    Case("conv_stride2_pad1", "conv1d", lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), _x(2, 3, 11)),
    Case("conv_same_dil3", "conv1d", lambda: nn.Conv1d(3, 4, 3, padding="same", dilation=3), _x(2, 3, 10)),
    Case("conv_same_dil1", "conv1d", lambda: nn.Conv1d(3, 4, 4, padding="same"), _x(2, 3, 9)),
    Case("conv_reflect_dil3", "conv1d",
         lambda: nn.Conv1d(3, 4, 3, padding=3, dilation=3, padding_mode="reflect"), _x(2, 3, 12)),
    Case("conv_reflect_stride2", "conv1d",
         lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2, padding_mode="reflect"), _x(2, 3, 12)),
    Case("conv_weight_norm_old", "conv1d",
         lambda: weight_norm(nn.Conv1d(3, 4, 3, padding=3, dilation=3)), _x(2, 3, 10)),
    Case("conv_weight_norm_new", "conv1d",
         lambda: parametrizations.weight_norm(nn.Conv1d(3, 4, 3, padding=1)), _x(2, 3, 10)),
    Case("conv_spectral_norm_old", "conv1d", _spectral_conv, _x(2, 3, 10), _converge_spectral),
    Case("conv_spectral_norm_new", "conv1d", lambda: parametrizations.spectral_norm(nn.Conv1d(3, 4, 3, padding=1)),
         _x(2, 3, 10), _converge_spectral),
    Case("convT_stride2_outpad", "conv_transpose1d",
         lambda: nn.ConvTranspose1d(3, 4, 4, stride=2, padding=1, output_padding=1), _x(2, 3, 7)),
    Case("convT_dil3", "conv_transpose1d",
         lambda: nn.ConvTranspose1d(3, 4, 3, stride=3, padding=2, output_padding=2, dilation=3), _x(2, 3, 6)),
    Case("convT_output_size", "conv_transpose1d",
         lambda: nn.ConvTranspose1d(3, 4, 4, stride=3, padding=1),
         lambda: ((torch.randn(2, 3, 6),), {"output_size": [18]})),
    Case("convT_weight_norm_old", "conv_transpose1d",
         lambda: weight_norm(nn.ConvTranspose1d(3, 4, 4, stride=2, padding=1, output_padding=1)), _x(2, 3, 7)),
    Case("convT_weight_norm_old_output_size", "conv_transpose1d",
         lambda: weight_norm(nn.ConvTranspose1d(3, 4, 4, stride=2, padding=1)),
         lambda: ((torch.randn(2, 3, 7),), {"output_size": [15]})),
    Case("convT_weight_norm_new", "conv_transpose1d",
         lambda: parametrizations.weight_norm(nn.ConvTranspose1d(3, 4, 5, stride=2, padding=2, dilation=2)),
         _x(2, 3, 6)),
    Case("lstm_seq_first", "lstm", _lstm(False), _x(6, 2, 3)),
    Case("lstm_batch_first", "lstm", _lstm(True), _x(2, 6, 3)),
    Case("lstm_packed", "lstm", _lstm(True), _packed),
]
IDS = [c.name for c in CASES]


def _first(out):
    """The tensor of a layer output (an LSTM's output sequence, unpacked)."""
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = pad_packed_sequence(out, batch_first=True)[0]
    return out


def _all_outputs(out) -> list[Tensor]:
    """Every tensor of an output: for an LSTM the sequence and both final states."""
    if isinstance(out, tuple):
        return [_first(out[0]), *out[1]]
    return [out]


def build(case: Case, seed: int = 0) -> tuple[Holder, Holder]:
    """(model to adapt, independent copy of the base built the same way), both in eval mode.

    (Built twice rather than deep-copied: torch cannot deep-copy a fresh old-style weight-norm layer.)"""
    models = []
    for _ in range(2):
        torch.manual_seed(seed)
        model = Holder(case.build())
        if case.prepare:
            case.prepare(model.layer)
        models.append(model.eval())
    for (k, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    return models[0], models[1]


def adapt(model: Holder, r: int = 2, alpha: float = 4) -> Holder:
    add_lora(model, ["layer"], r=r, alpha=alpha)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def ref_forward(case: Case, ref: Holder, deltas: dict[str, Tensor], args, kwargs):
    """The base layer computed with W + dW, from the deep copy (dW: matrix view -> stored shape)."""
    layer = ref.layer
    if case.kind == "lstm":
        lstm = copy.deepcopy(layer)
        with torch.no_grad():
            for param, dW in deltas.items():
                w = getattr(lstm, param)
                w.add_(matrix_to_weight("lstm", dW, w.shape))
        return lstm(*args, **kwargs)
    w = ref_weight(layer).detach()
    if "weight" in deltas:
        w = w + matrix_to_weight(case.kind, deltas["weight"], w.shape)
    if case.kind == "linear":
        return F.linear(args[0], w, layer.bias)
    if case.kind == "conv1d":
        return conv_ref(layer, w, args[0])
    size = kwargs.get("output_size")
    return conv_t_ref(layer, w, args[0], None if size is None else size[-1])


def deltas_of(model) -> dict[str, Tensor]:
    return {t.param: t.delta_weight_matrix().detach() for t in lora_targets(model).values()}



@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_adapted_forward_is_base_with_delta_and_only_lora_trains(case):
    model, ref = build(case)
    args, kwargs = case.inputs()
    with torch.no_grad():
        base = _all_outputs(ref(*args, **kwargs))
        # the independent reference reproduces the untouched layer, so the checks below mean something
        for a, b in zip(_all_outputs(ref_forward(case, ref, {}, args, kwargs)), base, strict=True):
            torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    adapt(model)
    out = _all_outputs(model(*args, **kwargs))
    deltas = deltas_of(model)
    assert deltas and all(d.abs().max() > 0.1 for d in deltas.values())
    with torch.no_grad():
        expected = _all_outputs(ref_forward(case, ref, deltas, args, kwargs))
    for a, b, c in zip(out, expected, base, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
        assert (a - c).abs().max() > 1e-2  # the adapter does change the output

    sum(o.square().sum() for o in out).backward()
    lora, other = [], []
    for name, p in model.named_parameters():
        (lora if ".lora_" in name else other).append((name, p))
    assert lora and other
    for name, p in other:
        assert not p.requires_grad and p.grad is None, name
    for name, p in lora:
        assert p.requires_grad and p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_unmerge_and_merged_state_dict(case):
    model, ref = build(case)
    adapt(model)
    layer = model.layer
    args, kwargs = case.inputs()
    with torch.no_grad():
        adapted = _all_outputs(model(*args, **kwargs))
        base = _all_outputs(ref(*args, **kwargs))

        state = merged_state_dict(model)
        assert not any("lora_" in k or "base_layer" in k for k in state)
        assert isinstance(layer, LoraLayer) and not layer.merged  # merged_state_dict leaves the model alone
        torch.manual_seed(123)  # other random weights: everything must come from the state dict
        fresh = Holder(case.build()).eval()
        fresh.load_state_dict(state, strict=True)
        exported = _all_outputs(fresh(*args, **kwargs))

        layer.merge()
        assert layer.merged
        merged = _all_outputs(model(*args, **kwargs))
        merged_base = _all_outputs(layer.get_base_layer()(*args, **kwargs))  # the base layer alone
        layer.unmerge()
        assert not layer.merged
        restored_base = _all_outputs(layer.get_base_layer()(*args, **kwargs))
        again = _all_outputs(model(*args, **kwargs))
    for a, e, m, mb, g in zip(adapted, exported, merged, merged_base, again, strict=True):
        assert (e - a).abs().max() <= TOL
        assert (m - a).abs().max() <= TOL
        assert (mb - a).abs().max() <= TOL
        assert (g - a).abs().max() <= TOL  # unmerged: the adapter acts through its own branch again
    for b, rb in zip(base, restored_base, strict=True):
        assert (rb - b).abs().max() <= TOL


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_safe_merge_refuses_a_broken_adapter_and_leaves_the_base_alone(case):
    model, _ = build(case)
    adapt(model)
    layer = model.layer
    with torch.no_grad():
        next(p for n, p in layer.named_parameters() if "lora_B" in n).view(-1)[0] = float("nan")
    before = {n: p.detach().clone() for n, p in layer.get_base_layer().named_parameters()}
    with pytest.raises(ValueError, match="non-finite|NaNs detected"):  # ours | peft's Linear
        layer.merge(safe_merge=True)
    assert not layer.merged
    for n, p in layer.get_base_layer().named_parameters():
        assert torch.equal(p, before[n]), n
    layer.merge()  # unsafe: merged as asked, NaN included
    assert layer.merged and any(not torch.isfinite(p).all() for p in layer.get_base_layer().parameters())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_factors_and_matrix_view(case):
    model, ref = build(case)
    adapt(model, r=3, alpha=6)
    targets = lora_targets(model)
    layer = ref.layer
    if case.kind == "lstm":
        n_dir = 2
        assert len(targets) == 2 * layer.num_layers * n_dir
        assert "layer.weight_ih_l0" in targets and "layer.weight_hh_l1_reverse" in targets
    else:
        assert list(targets) == ["layer"]
    for t in targets.values():
        assert t.kind == case.kind
        B, A, scale = t.lora_factors()
        assert scale == 2.0
        if case.kind == "lstm":
            expected = getattr(layer, t.param)
            n_in = expected.shape[1]
        elif case.kind == "linear":
            expected = layer.weight
            n_in = layer.in_features
        elif case.kind == "conv1d":
            w = ref_weight(layer)
            expected = torch.cat([w[:, :, j:j + 1] for j in range(w.shape[2])], 2).reshape(w.shape[0], -1)
            n_in = layer.in_channels * layer.kernel_size[0]
        else:  # stored (in, out, k): W[o, i*k + j] = w[i, o, j]
            w = ref_weight(layer)
            n_i, n_o, k = w.shape
            expected = torch.stack([torch.stack([w[i, :, j] for j in range(k)], 1) for i in range(n_i)], 1)
            expected = expected.reshape(n_o, n_i * k)
            n_in = n_i * k
        n_out = expected.shape[0]
        assert B.shape == (n_out, 3) and A.shape == (3, n_in)
        torch.testing.assert_close(t.weight(), expected, atol=TOL, rtol=0)
        torch.testing.assert_close(t.delta_weight_matrix(), 2.0 * B @ A)
        assert t.base_layer is model.layer.get_base_layer()


CONV_CASES = [c for c in CASES if c.kind in ("conv1d", "conv_transpose1d")]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c.name for c in CONV_CASES])
def test_conv_patches_normal_form(case):
    """conv(x)[b, :, t] = W_matrix @ patches[b, t] + bias for every convolution geometry."""
    model, ref = build(case)
    layer = ref.layer
    args, kwargs = case.inputs()
    x = args[0]
    with torch.no_grad():
        y = layer(*args, **kwargs)
        w = weight_to_matrix(case.kind, ref_weight(layer))
        if case.kind == "conv1d":
            patches = conv1d_patches(layer, x)
        else:
            patches = conv_transpose1d_patches(layer, x, y.shape[-1])
    assert patches.shape == (x.shape[0], y.shape[-1], w.shape[1])
    y_nf = patches @ w.T + layer.bias
    torch.testing.assert_close(y_nf.transpose(1, 2), y, atol=TOL, rtol=0)


def test_matrix_view_round_trip():
    for kind, shape in [("linear", (4, 5)), ("conv1d", (4, 3, 5)), ("conv_transpose1d", (3, 4, 5))]:
        w = torch.randn(shape)
        m = weight_to_matrix(kind, w)
        assert m.shape[0] == 4
        assert torch.equal(matrix_to_weight(kind, m, w.shape), w)
    with pytest.raises(ValueError, match="unknown layer kind"):
        weight_to_matrix("gru", torch.zeros(2, 2))


def test_lstm_dropout_warns_and_no_dropout_applied():
    torch.manual_seed(0)
    model = Holder(nn.LSTM(3, 4))
    with pytest.warns(UserWarning, match="dropout is not applied inside an LSTM"):
        add_lora(model, ["layer"], r=2, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.randn(5, 2, 3)
        model.train()
        assert torch.equal(model(x)[0], model(x)[0])


def test_lstm_adapter_keeps_flatten_parameters_that_model_code_calls():
    class Encoder(nn.Module):  # StyleTTS 2's and Kokoro's text encoders call flatten_parameters every forward
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 3, batch_first=True, bidirectional=True)

        def forward(self, x: Tensor) -> Tensor:
            self.lstm.flatten_parameters()
            return self.lstm(x)[0]

    torch.manual_seed(0)
    model = Encoder()
    x = torch.randn(2, 5, 4)
    expected = model(x)
    add_lora(model, ["LSTM", r"lstm"], r=2, alpha=4)
    out = model(x)
    torch.testing.assert_close(out, expected)  # B starts at zero
    out.square().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)
