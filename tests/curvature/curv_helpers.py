"""Independent reference computations shared by the curvature and prior tests.

Everything here is written from the definitions, without the package's normal-form code: dense Kronecker
forms, LoRA weight shifts from the raw LoRA parameters, patches by explicit indexing, an LSTM unrolled by
hand. The few package functions used are only the ones under test being compared against (`estimate_on`
runs the estimator on one layer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tts_bpeft import Curvature, estimate_curvature


class Holder(nn.Module):
    """A model made of the given named layers, without a forward: the loss functions call the layers."""

    def __init__(self, **layers: nn.Module) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)


def tanh_squared_error(out: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``sum (tanh(out) - y)^2`` over (channels, time): (B, C, T) -> (B,)."""
    return ((torch.tanh(out) - y) ** 2).sum((1, 2))


def estimate_on(name: str, layer: nn.Module, batch: tuple[Tensor, Tensor], output_loss: Callable[..., Tensor],
                **options) -> Curvature:
    """`estimate_curvature` (any `options`) of the per-sample loss ``output_loss(layer(x), y)`` on one batch
    ``(x, y)``, the layer alone in a model under `name`."""
    def loss_fn(model: nn.Module, data: tuple[Tensor, Tensor]) -> Tensor:
        return output_loss(getattr(model, name)(data[0]), data[1])

    return estimate_curvature(Holder(**{name: layer}), [batch], loss_fn, targets=[name], progress=False, **options)


def dense_factor(term: dict[str, Tensor], key: str) -> Tensor:
    """A KFAC factor as a dense matrix, whether stored dense or as an eigenbasis."""
    if key in term:
        return term[key].double()
    vecs, vals = term[key + "_vecs"].double(), term[key + "_vals"].double()
    return vecs @ torch.diag(vals) @ vecs.T


def dense_kfac(dW: Tensor, terms: list[dict[str, Tensor]]) -> Tensor:
    """``sum_terms vec(dW)^T kron(G, A) vec(dW)`` with torch's row-major vec, built densely (float64)."""
    v = dW.double().flatten()
    return sum(v @ torch.kron(dense_factor(t, "G"), dense_factor(t, "A")) @ v for t in terms)


def lora_delta(layer: nn.Module, param: str = "weight", adapter: str = "default") -> Tensor:
    """dW (out, in_flat) from the raw LoRA parameters of one layer, by type (with autograd to them)."""
    s = layer.scaling[adapter]
    A_mod, B_mod = layer.lora_A[adapter], layer.lora_B[adapter]
    if isinstance(A_mod, nn.ParameterDict):  # LSTM: one (A, B) pair per weight matrix
        return s * B_mod[param] @ A_mod[param]
    if isinstance(A_mod, nn.Linear):
        return s * B_mod.weight @ A_mod.weight
    if isinstance(A_mod, nn.ConvTranspose1d):  # weight (in, r, k) -> (r, in*k), index i*k + j
        A = A_mod.weight.permute(1, 0, 2).reshape(A_mod.weight.shape[1], -1)
        return s * B_mod.weight[:, :, 0] @ A
    if isinstance(A_mod, nn.Conv1d):  # weight (r, in, k) -> (r, in*k)
        return s * B_mod.weight[:, :, 0] @ A_mod.weight.reshape(A_mod.weight.shape[0], -1)
    raise TypeError(type(A_mod))


def randomise_lora(model: nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    """Give every LoRA parameter (B starts at zero) a random value so the penalties are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def conv1d_patches_loop(x: Tensor, k: int, stride: int, padding: int, dilation: int) -> Tensor:
    """(B, L_out, in*k) patches of a zero-padded Conv1d by explicit indexing: a[b, t, i*k + j] =
    x[b, i, t*stride - padding + j*dilation] (0 outside)."""
    B, n_in, L = x.shape
    L_out = (L + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out = torch.zeros(B, L_out, n_in * k, dtype=x.dtype)
    for t in range(L_out):
        for i in range(n_in):
            for j in range(k):
                pos = t * stride - padding + j * dilation
                if 0 <= pos < L:
                    out[:, t, i * k + j] = x[:, i, pos]
    return out


def conv_transpose1d_patches_loop(x: Tensor, k: int, stride: int, padding: int, dilation: int, L_out: int
                                  ) -> Tensor:
    """(B, L_out, in*k) inputs of a ConvTranspose1d seen per output frame: y[:, t] = W_mat @ a[:, t] with
    W_mat[o, i*k + j] = W[i, o, j]. Input frame s feeds output t = s*stride - padding + j*dilation."""
    B, n_in, L = x.shape
    out = torch.zeros(B, L_out, n_in * k, dtype=x.dtype)
    for s in range(L):
        for j in range(k):
            t = s * stride - padding + j * dilation
            if 0 <= t < L_out:
                for i in range(n_in):
                    out[:, t, i * k + j] += x[:, i, s]
    return out


def manual_lstm(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, lengths: list[int] | None = None
                ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """A one-layer batch-first LSTM written out: returns outputs (B, T, H), the gate pre-activations per
    step (each (B, 4H), a graph node whose gradient is the G-side vector) and h_{t-1} per step."""
    B, T, _ = x.shape
    H = w_hh.shape[1]
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    lengths = lengths or [T] * B
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    outs, gates, prev = [], [], []
    for t in range(T):
        prev.append(h)
        z = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        gates.append(z)
        i, f, g, o = z.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        m = mask[:, t, None]
        c = torch.where(m, c_new, c)
        h = torch.where(m, h_new, h)
        outs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
    return torch.stack(outs, 1), gates, prev
