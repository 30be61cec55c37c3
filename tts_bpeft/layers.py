"""Every supported layer type seen as matrices: one convention shared by LoRA, curvature and the prior.

A weight is viewed as a matrix ``W`` of shape ``(out, in_flat)``. One call of a layer is put in the
*normal form*: its input becomes ``a`` of shape ``(B, P, in_flat)`` and its output ``y`` of shape
``(B, P, out)`` with ``y[b, p] = W @ a[b, p] (+ bias)``. ``B`` is the sample (batch) index and ``P`` the
positions that share the weight (tokens, time steps, output frames).

========================  ==============  =====================================  ==========================
kind                      stored weight   matrix view ``W`` (out, in_flat)       positions ``P``
========================  ==============  =====================================  ==========================
``linear``                (out, in)       ``W``                                  all dims between B and in
``conv1d``                (out, in, k)    ``W.reshape(out, in * k)``             output frames
``conv_transpose1d``      (in, out, k)    ``W.permute(1, 0, 2).reshape(out, in*k)``  output frames
``lstm`` ``weight_ih_l*``  (4H, in)        ``W``                                  time steps (input x_t)
``lstm`` ``weight_hh_l*``  (4H, H)         ``W``                                  time steps (input h_{t-1})
========================  ==============  =====================================  ==========================

For both convolutions the flat input index is ``i * k + j`` (input channel ``i``, kernel tap ``j``), so the
patch of a frame is built by a convolution with a one-hot kernel: it honours every stride, padding,
dilation and output padding the layer has, with no index arithmetic of our own.

torch's row-major ``W.flatten()`` of this matrix is the vec convention of the whole package: with it, a
Kronecker-factored Fisher block is ``kron(G, A)`` (G: out x out, A: in_flat x in_flat).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

KINDS = ("linear", "conv1d", "conv_transpose1d", "lstm")


def layer_kind(module: nn.Module) -> str | None:
    """The kind of a supported layer, or None for a layer type (or configuration) we cannot adapt."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv1d):
        return "conv1d" if module.groups == 1 else None
    if isinstance(module, nn.ConvTranspose1d):
        return "conv_transpose1d" if module.groups == 1 else None
    if isinstance(module, nn.LSTM):
        return "lstm" if module.proj_size == 0 else None
    return None


def unsupported_reason(module: nn.Module) -> str:
    """Why `layer_kind` refused a module, in words for error messages."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and module.groups != 1:
        return f"grouped convolution (groups={module.groups}) is not supported"
    if isinstance(module, nn.LSTM) and module.proj_size != 0:
        return "LSTM with proj_size is not supported"
    return f"layer type {type(module).__name__} is not supported (Linear, Conv1d, ConvTranspose1d, LSTM are)"


def lstm_weight_names(lstm: nn.LSTM) -> list[str]:
    """The weight matrices of an LSTM in torch's order: weight_ih_l0, weight_hh_l0, [.._reverse], ..."""
    suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
    return [f"weight_{kind}_l{layer}{sfx}"
            for layer in range(lstm.num_layers) for sfx in suffixes for kind in ("ih", "hh")]


def effective_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The weight the layer computes with now, whatever parametrises it (weight norm, spectral norm).

    Old-style weight/spectral norm recompute ``module.weight`` only in a forward pre-hook, so the attribute
    can be stale; this recomputes it (spectral norm without a power iteration, as in eval mode).
    New-style parametrizations compute on attribute access.
    """
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == name:
            return hook.compute_weight(module)
        if isinstance(hook, SpectralNorm) and hook.name == name:
            return hook.compute_weight(module, do_power_iteration=False)
    return getattr(module, name)


def weight_to_matrix(kind: str, weight: Tensor) -> Tensor:
    """The stored weight of a layer of `kind` as the matrix ``(out, in_flat)`` (a view where possible)."""
    if kind in ("linear", "lstm"):
        return weight
    if kind == "conv1d":
        return weight.reshape(weight.shape[0], -1)
    if kind == "conv_transpose1d":
        return weight.permute(1, 0, 2).reshape(weight.shape[1], -1)
    raise ValueError(f"unknown layer kind {kind!r}; expected one of {KINDS}")


def matrix_to_weight(kind: str, matrix: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of `weight_to_matrix`: a ``(out, in_flat)`` matrix back in the stored weight's `shape`."""
    if kind in ("linear", "lstm"):
        return matrix.reshape(shape)
    if kind == "conv1d":
        return matrix.reshape(shape)
    if kind == "conv_transpose1d":
        n_in, n_out, k = shape
        return matrix.reshape(n_out, n_in, k).permute(1, 0, 2)
    raise ValueError(f"unknown layer kind {kind!r}; expected one of {KINDS}")


def _one_hot_kernel(n_in: int, k: int, like: Tensor) -> Tensor:
    """E (in*k, 1, k) with E[i*k + j, 0, j] = 1: a grouped convolution with it (``groups=in``) copies each patch
    into channels, ``O(L in k)`` work (a dense (in*k, in, k) kernel would cost as much as a Gram matrix)."""
    eye = torch.eye(k, dtype=like.dtype, device=like.device)
    return eye.repeat(n_in, 1).unsqueeze(1)


def conv1d_patches(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """Normal form of a Conv1d input: patches ``(B, L_out, in*k)`` with index ``i*k + j``.

    `x` is the layer input ``(B, in, L)``; ``conv(x)[b, :, t] = W.reshape(out, -1) @ patches[b, t]``.
    """
    k = conv.kernel_size[0]
    kernel = _one_hot_kernel(conv.in_channels, k, x)
    padding = conv.padding
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    patches = F.conv1d(x, kernel, None, conv.stride, padding, conv.dilation, groups=conv.in_channels)
    return patches.transpose(1, 2)


def conv_transpose1d_patches(conv: nn.ConvTranspose1d, x: Tensor, out_length: int) -> Tensor:
    """Normal form of a ConvTranspose1d input: ``(B, L_out, in*k)`` with index ``i*k + j``.

    `x` is the layer input ``(B, in, L)`` and `out_length` the length of the layer's output (it fixes the
    output padding). ``conv(x)[b, :, t] = W.permute(1, 0, 2).reshape(out, -1) @ patches[b, t]``.
    """
    k = conv.kernel_size[0]
    n_in = conv.in_channels
    kernel = _one_hot_kernel(n_in, k, x).reshape(n_in, k, k)  # groups=in: E[i, j, j] = 1 -> channel i*k + j
    stride, padding, dilation = conv.stride[0], conv.padding[0], conv.dilation[0]
    default_length = (x.shape[-1] - 1) * stride - 2 * padding + dilation * (k - 1) + 1
    patches = F.conv_transpose1d(x, kernel, None, stride, padding, out_length - default_length, n_in, dilation)
    return patches.transpose(1, 2)
