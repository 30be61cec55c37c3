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
first upsampling, stride 10: 100 times). Both convolutions take per-sample gradients from their own
weight-gradient kernel, one sample at a time, without patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import (
    conv1d_patches,
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
            mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
            padding, output_padding = [0], [0]
        weight = x.new_empty(1).expand(conv.weight.shape)  # the kernel reads its shape only
        grads = [torch.ops.aten.convolution_backward(g_b.T[None], x_b[None], weight, None, conv.stride, padding,
                                                     conv.dilation, self.transposed, output_padding, 1,
                                                     [False, True, False])[1]
                 for x_b, g_b in zip(x, g)]
        return torch.stack([weight_to_matrix(self.kind, w) for w in grads])


class Conv1dCall(_ConvCall):
    kind, transposed = "conv1d", False

    def patches(self, mask: Tensor | None = None) -> Tensor:
        return conv1d_patches(self.conv, self.x, mask)

    def add_gram(self, total: Tensor | None, mask: Tensor) -> Tensor:
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
