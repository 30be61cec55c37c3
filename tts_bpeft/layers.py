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

For both convolutions the flat input index is ``i * k + j`` (input channel ``i``, kernel tap ``j``). A Conv1d's
patches are a strided window view of its padded input; a ConvTranspose1d's are built phase by phase (the output
frames ``t = t0 (mod stride)`` see every ``stride / gcd(stride, dilation)``-th tap only), which is also how the
curvature estimators take their products from them (`tts_bpeft.curvature.calls`).

torch's row-major ``W.flatten()`` of this matrix is the vec convention of the whole package: with it, a
Kronecker-factored Fisher block is ``kron(G, A)`` (G: out x out, A: in_flat x in_flat).
"""

from __future__ import annotations

import math

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


def _scaled_copy(view: Tensor, row_scale: Tensor | None) -> Tensor:
    """`view` (B, P, ...) as a new contiguous tensor, each row ``[b, p]`` times ``row_scale[b, p]`` (one pass)."""
    out = torch.empty(view.shape, dtype=view.dtype, device=view.device)
    if row_scale is None:
        return out.copy_(view)
    return torch.mul(view, row_scale.reshape(*row_scale.shape, *[1] * (view.dim() - 2)).to(view.dtype), out=out)


def conv1d_padded_input(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """`x` (B, in, L) padded as the layer pads it (any padding mode, 'same' included): the input of an unpadded
    convolution with the same output."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)


def conv1d_windows(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """The taps each output frame of a Conv1d reads: a view ``(B, in, L_out, k)`` of its padded input, ``[b, i, t,
    j] = padded[b, i, t*stride + j*dilation]``."""
    k, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    return conv1d_padded_input(conv, x).unfold(-1, dilation * (k - 1) + 1, stride)[..., ::dilation]


def conv1d_patches(conv: nn.Conv1d, x: Tensor, row_scale: Tensor | None = None) -> Tensor:
    """Normal form of a Conv1d input: patches ``(B, L_out, in*k)`` with index ``i*k + j``, contiguous.

    `x` is the layer input ``(B, in, L)``; ``conv(x)[b, :, t] = W.reshape(out, -1) @ patches[b, t]``. The patches
    are one copy of a strided window view of the padded input (any padding mode, stride and dilation);
    `row_scale` ``(B, L_out)``, if given, multiplies each patch in that copy (a mask costs nothing extra).
    """
    return _scaled_copy(conv1d_windows(conv, x).permute(0, 2, 1, 3), row_scale).flatten(2)


def conv_transpose1d_output_padding(conv: nn.ConvTranspose1d, in_length: int, out_length: int) -> int:
    """The output padding of a call that turned `in_length` input frames into `out_length` output frames (a
    call with ``output_size`` chooses it per call)."""
    k, stride, padding, dilation = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return out_length - ((in_length - 1) * stride - 2 * padding + dilation * (k - 1) + 1)


def conv_transpose1d_phase_taps(conv: nn.ConvTranspose1d) -> dict[int, list[int]]:
    """The taps ``j`` each output phase ``t0`` (frames ``t = t0 (mod stride)``) sees, for the phases that see any:
    those with ``(t0 + padding - j*dilation) % stride == 0`` (see `conv_transpose1d_phases`)."""
    k, stride, padding, dilation = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    phases = {t0: [j for j in range(k) if (t0 + padding - j * dilation) % stride == 0] for t0 in range(stride)}
    return {t0: taps for t0, taps in phases.items() if taps}


def conv_transpose1d_phases(conv: nn.ConvTranspose1d, x: Tensor, out_length: int,
                            row_scale: Tensor | None = None) -> list[tuple[slice, slice, Tensor]]:
    """A ConvTranspose1d input in the normal form, phase by phase: only the non-zero part of its patches.

    Input frame ``l`` reaches output frame ``t = l*stride - padding + j*dilation`` through tap ``j``. So the
    output frames of one phase, ``t = t0, t0 + stride, ...``, see only the taps with ``(t0 + padding -
    j*dilation) % stride == 0``: every ``stride / gcd(stride, dilation)``-th tap from the first such ``j0``. Their
    patches are zero at every other tap, and a Gram matrix or product of the phases' patches is that factor
    squared (or that factor) cheaper than one of the full patches.

    Returns ``(frames, taps, patches)`` for each phase with at least one tap: ``frames = slice(t0, out_length,
    stride)``, ``taps = slice(j0, k, step)`` and ``patches`` ``(B, #frames, in, #taps)``, contiguous, with
    ``patches[b, q, i, n] = x[b, i, l]`` for the q-th frame ``t`` and the n-th tap ``j``, ``l = (t + padding -
    j*dilation) / stride`` (0 where ``l`` is outside the input), times ``row_scale[b, t]`` if given.
    """
    k, stride, padding, dilation = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    length = x.shape[-1]
    padded = F.pad(x, (0, 1))  # frame `length` is a zero: out-of-range frames read it
    step = stride // math.gcd(stride, dilation)
    phases = []
    for t0, taps in conv_transpose1d_phase_taps(conv).items():
        if t0 >= out_length:
            continue
        frames = torch.arange(t0, out_length, stride, device=x.device)
        offsets = torch.tensor(taps, device=x.device) * dilation - padding
        source = (frames[:, None] - offsets[None, :]) // stride  # exact: the division has no remainder
        source = source.masked_fill((source < 0) | (source >= length), length)
        scale = None if row_scale is None else row_scale[:, t0::stride]
        gathered = padded[..., source]  # (B, in, #frames, #taps)
        phases.append((slice(t0, out_length, stride), slice(taps[0], k, step),
                       _scaled_copy(gathered.permute(0, 2, 1, 3), scale)))
    return phases


def conv_transpose1d_patches(conv: nn.ConvTranspose1d, x: Tensor, out_length: int,
                             row_scale: Tensor | None = None) -> Tensor:
    """Normal form of a ConvTranspose1d input: ``(B, L_out, in*k)`` with index ``i*k + j``.

    `x` is the layer input ``(B, in, L)`` and `out_length` the length of the layer's output (it fixes the
    output padding). ``conv(x)[b, :, t] = W.permute(1, 0, 2).reshape(out, -1) @ patches[b, t]``. Assembled from
    `conv_transpose1d_phases` (zero at the taps a frame does not see); `row_scale` as there.
    """
    patches = x.new_zeros(x.shape[0], out_length, conv.in_channels, conv.kernel_size[0])
    for frames, taps, phase in conv_transpose1d_phases(conv, x, out_length, row_scale):
        patches[:, frames, :, taps] = phase
    return patches.flatten(2)
