"""One targeted layer call as the curvature capture keeps it, and the products the estimators take from it.

With ``a`` the call's input in the normal form ``(B, P, in_flat)`` (`tts_bpeft.layers`), ``g`` its output gradient
``(B, P, out)`` and ``m`` a 0/1 mask of positions ``(B, P)``:

- ``add_gram(total, m)``: ``total += sum_{b,p} m[b,p] a[b,p] a[b,p]^T`` (in_flat, in_flat), in place (a fresh
  tensor when `total` is None);
- ``patches(m)``: ``m a`` (B, P, in_flat);
- ``per_sample_gradients(g)``: ``sum_p g[b,p] a[b,p]^T`` for each sample (B, out, in_flat).

A convolution's call keeps its input ``x`` (B, in, L), not its patches, which are k times larger; it builds them
when the gradient arrives, with the mask applied in the one copy that builds them. A ConvTranspose1d's patches
are zero outside one set of taps per output phase (`conv_transpose1d_phases`), so its Gram matrix is a sum of
per-phase Gram matrices, ``(stride / gcd(stride, dilation))^2`` times fewer products (Kokoro's and StyleTTS 2's
first upsampling, stride 10: 100 times). A stride-1 Conv1d's Gram matrix is block Toeplitz up to edge terms, so
on the CPU it is summed from k lag products of its input (`_add_lagged_gram`, k times fewer products, no patches).
Both convolutions take per-sample gradients from their own weight-gradient kernel, one sample at a time,
without patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import (
    conv1d_padded_input,
    conv1d_patches,
    conv1d_windows,
    conv_transpose1d_output_padding,
    conv_transpose1d_patches,
    conv_transpose1d_phases,
    weight_to_matrix,
)


def add_gram(total: Tensor | None, rows: Tensor) -> Tensor:
    """``total + rows^T rows`` for `rows` (N, width): in place by one ``addmm_``, or a new tensor for None."""
    return rows.T @ rows if total is None else total.addmm_(rows.T, rows)


class RowsCall:
    """A Linear or LSTM call: its input rows ``a`` (B, P, in) are the patches."""

    def __init__(self, a: Tensor) -> None:
        self.a = a
        self.batch = a.shape[0]

    def regrouped(self, batch: int) -> RowsCall:
        """A call on a flattened batch ((B*T, 1, in), rows sample-major) seen per sample: (B, T, in)."""
        return RowsCall(self.a.reshape(batch, -1, self.a.shape[-1]))

    def patches(self, mask: Tensor | None = None) -> Tensor:
        return self.a if mask is None else self.a * mask[..., None].to(self.a.dtype)

    def add_gram(self, total: Tensor | None, mask: Tensor) -> Tensor:
        return add_gram(total, self.patches(mask).reshape(-1, self.a.shape[-1]))

    def per_sample_gradients(self, g: Tensor) -> Tensor:
        return torch.einsum("bpo,bpi->boi", g, self.a)


class _ConvCall:
    """A convolution call: the layer and its input ``x`` (B, in, L)."""

    kind: str
    transposed: bool

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d, x: Tensor, out_length: int) -> None:
        self.conv, self.x, self.out_length = conv, x, out_length
        self.batch = x.shape[0]

    def per_sample_gradients(self, g: Tensor) -> Tensor:
        """The layer's weight gradient for each sample alone, as matrices (B, out, in_flat); `g` (B, L_out, out)."""
        conv, x = self.conv, self.x
        if self.transposed:
            padding, output_padding = conv.padding, [conv_transpose1d_output_padding(conv, x.shape[-1],
                                                                                     self.out_length)]
        else:
            x, padding, output_padding = conv1d_padded_input(conv, x), [0], [0]
        weight = x.new_empty(1).expand(conv.weight.shape)  # the kernel reads its shape only
        grads = [torch.ops.aten.convolution_backward(g_b.T[None], x_b[None], weight, None, conv.stride, padding,
                                                     conv.dilation, self.transposed, output_padding, 1,
                                                     [False, True, False])[1]
                 for x_b, g_b in zip(x, g)]
        return torch.stack([weight_to_matrix(self.kind, w) for w in grads])


# Below this many positions a Conv1d's dense Gram matrix is the faster one: the lag form's k^2 / 2 passes over
# (in x in) blocks cost more than the products it saves (benchmarks/conv_gram.py, 2 threads, dense time / lags
# time: 1024 channels, k 3, 80 positions 0.56; 512 channels, k 3, 160 positions 1.17; k 11 at 9601 positions 8.5;
# docs/curvature.md).
LAGGED_MIN_POSITIONS = 128


def lagged_gram_fits(conv: nn.Conv1d, positions: int, device: torch.device) -> bool:
    """Whether a call of `conv` with `positions` (B * L_out) positions on `device`, all active, takes its Gram
    matrix by lags: a stride-1 Conv1d with k > 1, on the CPU (the inactive positions are counted on the host),
    with at least `LAGGED_MIN_POSITIONS` positions."""
    return (device.type == "cpu" and conv.stride[0] == 1 and conv.kernel_size[0] > 1
            and positions >= LAGGED_MIN_POSITIONS)


def _add_lagged_gram(total: Tensor, padded: Tensor, k: int, dilation: int) -> None:
    """``total += sum_{b,t} a a^T`` over all patches ``a`` of a stride-1 Conv1d, from lag products of its input.

    With ``X = padded[b]`` (in, L_p), ``T = L_p - dilation (k - 1)`` output frames and ``D = dilation``, the
    (in x in) block of taps ``(j, j + lag)`` is ``V_j = sum_{u = j D}^{j D + T - 1} X[:, u] X[:, u + lag D]^T``:
    ``V_0`` is the lag's product over the frames ``[0, T)``, and ``V_j = V_{j-1}`` plus the chunk of ``D`` frames
    from ``T + (j - 1) D`` minus the one from ``(j - 1) D``; block ``(j + lag, j)`` is ``V_j^T``. So k products of
    ``in x T`` replace the ``in k x T`` one (k times fewer multiplications), read straight from the input.
    """
    n_in, frames = padded.shape[1], padded.shape[-1] - dilation * (k - 1)
    blocks = total.view(n_in, k, n_in, k)
    for lag in range(k):
        shift = lag * dilation
        values = padded.new_empty(k - lag, n_in, n_in)  # [j] = V_j
        torch.mm(padded[0, :, :frames], padded[0, :, shift:shift + frames].T, out=values[0])
        for X in padded[1:]:
            values[0].addmm_(X[:, :frames], X[:, shift:shift + frames].T)
        for j in range(1, k - lag):
            enter, leave = frames + (j - 1) * dilation, (j - 1) * dilation  # the chunks' first frames
            left = torch.cat([padded[..., enter:enter + dilation], -padded[..., leave:leave + dilation]], -1)
            right = torch.cat([padded[..., enter + shift:enter + shift + dilation],
                               padded[..., leave + shift:leave + shift + dilation]], -1)
            torch.addmm(values[j - 1], left.transpose(0, 1).flatten(1), right.transpose(0, 1).flatten(1).T,
                        out=values[j])
        blocks.diagonal(lag, 1, 3).add_(values.permute(1, 2, 0))  # [a, b, j] = blocks[a, j, b, j + lag]
        if lag:
            blocks.diagonal(-lag, 1, 3).add_(values.permute(2, 1, 0))  # block (j + lag, j): the transpose


class Conv1dCall(_ConvCall):
    kind, transposed = "conv1d", False

    def patches(self, mask: Tensor | None = None) -> Tensor:
        return conv1d_patches(self.conv, self.x, mask)

    def add_gram(self, total: Tensor | None, mask: Tensor) -> Tensor:
        """A call that `lagged_gram_fits` sums its Gram matrix by lags (`_add_lagged_gram`) and takes the inactive
        positions' patches back out, when that is cheaper (fewer than ``1 - 1/k`` of the positions inactive;
        counting them is a read-back, free on the CPU); otherwise, the Gram of the masked patches."""
        conv, k = self.conv, self.conv.kernel_size[0]
        if lagged_gram_fits(conv, mask.numel(), self.x.device):
            inactive = mask == 0
            n_inactive = int(inactive.sum())
            if k * n_inactive < (k - 1) * mask.numel():
                if total is None:
                    total = self.x.new_zeros(conv.in_channels * k, conv.in_channels * k)
                _add_lagged_gram(total, conv1d_padded_input(conv, self.x), k, conv.dilation[0])
                if n_inactive:
                    samples, frames = inactive.nonzero(as_tuple=True)
                    rows = conv1d_windows(conv, self.x)[samples, :, frames].flatten(1)  # (n_inactive, in*k)
                    total.addmm_(rows.T, rows, alpha=-1)
                return total
        patches = self.patches(mask)
        return add_gram(total, patches.reshape(-1, patches.shape[-1]))


class ConvTranspose1dCall(_ConvCall):
    kind, transposed = "conv_transpose1d", True

    def patches(self, mask: Tensor | None = None) -> Tensor:
        return conv_transpose1d_patches(self.conv, self.x, self.out_length, mask)

    def add_gram(self, total: Tensor | None, mask: Tensor) -> Tensor:
        """The per-phase Gram matrices, each added into the (taps x taps) block its phase reaches."""
        n_in, k = self.conv.in_channels, self.conv.kernel_size[0]
        if total is None:
            total = self.x.new_zeros(n_in * k, n_in * k)
        blocks = total.view(n_in, k, n_in, k)
        for _, taps, phase in conv_transpose1d_phases(self.conv, self.x, self.out_length, mask):
            width = phase.shape[2] * phase.shape[3]
            rows = phase.reshape(-1, width)
            blocks[:, taps, :, taps].add_((rows.T @ rows).view(phase.shape[2:] * 2))
        return total


LayerCall = RowsCall | Conv1dCall | ConvTranspose1dCall
