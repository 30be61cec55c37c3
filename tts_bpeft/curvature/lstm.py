"""An LSTM unrolled over time in Python, used only while curvature is measured.

The fused LSTM kernel hides the gate pre-activations, and the Fisher of ``weight_ih_l*`` / ``weight_hh_l*``
needs their gradients. Here each layer and direction computes ``Xi = x @ W_ih^T + b_ih`` for all time
steps at once and adds ``h_{t-1} @ W_hh^T + b_hh`` step by step, so

- ``weight_ih``: input ``x_t``, output gradient ``dL/dgates_t`` (the gradient of ``Xi`` at ``t``),
- ``weight_hh``: input ``h_{t-1}``, the same output gradient,

both in the normal form ``(B, T, features)``. Padding of packed sequences is carried with a time mask
(states stop updating past a sequence's length, outputs there are zero), so padded steps get exactly zero
gradient. Outputs equal ``nn.LSTM``'s (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..layers import effective_weight

Recorder = Callable[[str, Tensor, Tensor], None]


def _direction(lstm: nn.LSTM, x: Tensor, mask: Tensor, h: Tensor, c: Tensor, suffix: str, reverse: bool,
               record: Recorder | None) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction: x (B, T, in) -> outputs (B, T, H), final (h, c) (B, H)."""
    w_ih, w_hh = effective_weight(lstm, f"weight_ih{suffix}"), effective_weight(lstm, f"weight_hh{suffix}")
    b_ih = getattr(lstm, f"bias_ih{suffix}") if lstm.bias else None
    b_hh = getattr(lstm, f"bias_hh{suffix}") if lstm.bias else None
    xi = F.linear(x, w_ih, b_ih)
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    outputs: list[Tensor] = [x.new_zeros(())] * x.shape[1]
    previous: list[Tensor] = [x.new_zeros(())] * x.shape[1]
    for t in steps:
        previous[t] = h
        i, f, g, o = (xi[:, t] + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        m = mask[:, t, None]
        c, h = torch.where(m, c_new, c), torch.where(m, h_new, h)
        outputs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
    if record is not None:
        record(f"weight_ih{suffix}", x, xi)
        record(f"weight_hh{suffix}", torch.stack(previous, 1), xi)
    return torch.stack(outputs, 1), h, c


def unrolled_lstm(lstm: nn.LSTM, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None,
                  record: Recorder | None = None):
    """``lstm(input, hx)`` computed step by step; ``record(weight_name, a, xi)`` is called per weight matrix
    with its input ``a`` (B, T, in) and the gate pre-activations ``xi`` (B, T, 4H) whose gradient is g."""
    if lstm.proj_size:
        raise ValueError("unrolled_lstm does not support proj_size")
    packed = isinstance(input, PackedSequence)
    unbatched = False
    if packed:
        x, lengths = pad_packed_sequence(input, batch_first=True)
    else:
        x = input if lstm.batch_first else input.transpose(0, 1)
        if input.dim() == 2:
            unbatched, x = True, input.unsqueeze(0)
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
    batch, steps = x.shape[0], x.shape[1]
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).to(x.device)
    n_dir = 2 if lstm.bidirectional else 1
    if hx is None:
        zeros = x.new_zeros(lstm.num_layers * n_dir, batch, lstm.hidden_size)
        hx = (zeros, zeros)
    elif unbatched:
        hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    h_n, c_n = [], []
    layer_input = x
    for layer in range(lstm.num_layers):
        outs = []
        for d in range(n_dir):
            k = layer * n_dir + d
            out, h, c = _direction(lstm, layer_input, mask, hx[0][k], hx[1][k],
                                   f"_l{layer}{'_reverse' if d else ''}", bool(d), record)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outs, -1)
        if lstm.dropout and lstm.training and layer < lstm.num_layers - 1:
            layer_input = F.dropout(layer_input, lstm.dropout, training=True)
    h_n, c_n = torch.stack(h_n), torch.stack(c_n)
    if packed:
        order = input.sorted_indices if input.sorted_indices is not None else torch.arange(batch)
        data = pack_padded_sequence(layer_input.index_select(0, order.to(x.device)), lengths[order.cpu()],
                                    batch_first=True).data
        return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (h_n, c_n)
    if unbatched:
        return layer_input.squeeze(0), (h_n.squeeze(1), c_n.squeeze(1))
    output = layer_input if lstm.batch_first else layer_input.transpose(0, 1)
    return output, (h_n, c_n)
