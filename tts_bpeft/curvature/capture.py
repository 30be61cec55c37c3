"""Hooks that see every targeted layer call in the normal form and accumulate curvature statistics.

For each call of a targeted layer a forward hook keeps the call (`tts_bpeft.curvature.calls`: the input rows
``a`` (B, P, in_flat) of a Linear or LSTM, the raw input of a convolution, whose patches are built only when
needed) and registers a hook on *that call's output tensor*, which later receives ``dL/d output`` and turns it
into ``g`` (B, P, out). Statistics are added only when the gradient arrives, pairing each gradient with the
input of the same call. So a forward without a backward (a no-grad pass,
the first pass of a checkpointed block, an evaluation pass) adds nothing, and a checkpointed block that
is recomputed during backward is counted once. Hooks attach to the wrapped base layer, so they see the
effective weight (weight norm and spectral norm included).

Accumulated sums, with ``n`` a sample, ``p`` a position with a non-zero output gradient (padding that the
loss masks out has exactly zero gradient and is not counted):

- KFAC ``expand``: ``A_sum += sum_{n,p} a a^T``, ``tokens += #(n, p)``, ``G_sum += sum_{n,p} g g^T``;
- KFAC ``reduce``: ``a_n = mean_p a``, ``g_n = sum_p g``; ``A_sum += sum_n a_n a_n^T``, ``tokens += #n``,
  ``G_sum += sum_n g_n g_n^T`` (one reduced position per sample and layer call);
- EWC: the per-sample gradient ``grad_n = sum_p g a^T`` (summed over all calls of the layer in one backward
  pass) and ``diag_sum += sum_n grad_n ** 2`` once the backward pass is over.
- EKFAC: as EWC, in the eigenbasis ``(Q_A, Q_G)`` of given KFAC factors: ``grad_n`` becomes ``Q_G^T grad_n Q_A``
  (``a`` and ``g`` rotated before their product, or the gradient after it, whichever costs less) and
  ``diag_sum`` its second moments.

Sums are kept in `statistics_dtype` (at least float32) and updated in place: a Gram matrix ``x^T x`` is added by
one ``addmm_`` (one pass over the sum, no temporary, no conversion), and the first value of a sum starts it (no
zero-filled pass, except for the block-structured sums of convolutions); `tts_bpeft.curvature.estimate` turns
them into means. Float32 running sums stay within 1.4e-6 (relative Frobenius norm) of float64 sums over 10000
calls (`tests/curvature/test_curvature_accumulation.py`), cost half their memory and no conversion per call. A
ConvTranspose1d's Gram matrix is summed phase by phase, a stride-1 Conv1d's by lags on the CPU, and
convolutions' per-sample gradients come from the weight-gradient kernel (`calls`; measured against the
arithmetic floor in docs/curvature.md). Every product is taken with autocast switched off, whatever autocast the
model runs under (bf16 inputs and gradients are cast up first), and nothing is read back to the host while
accumulating on an accelerator: token counts stay tensors on the layer's device until
`LayerStatistics.token_count`, and inactive positions are masked, not removed (only the CPU's lag form counts
them, where a read-back costs nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..lora.targets import LoraTarget
from .calls import Conv1dCall, ConvTranspose1dCall, LayerCall, RowsCall, add_gram
from .lstm import unrolled_lstm
from .options import CurvatureMethod, KfacApprox


def statistics_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The precision of a layer's ``a``, ``g`` and per-sample gradients: its weight's, at least float32
    (bf16/fp16 activations under autocast are promoted; a float64 model keeps float64, since a per-sample
    gradient ``sum_p g a^T`` can cancel to far below the size of its terms)."""
    return torch.promote_types(weight_dtype, torch.float32)


@dataclass
class LayerStatistics:
    """Running sums for one weight matrix (out x in_flat)."""

    kind: str
    shape: tuple[int, int]
    dtype: torch.dtype = torch.float32  # of the sums (`statistics_dtype`)
    A_sum: Tensor | None = None
    G_sum: Tensor | None = None
    diag_sum: Tensor | None = None
    tokens: Tensor | int = 0  # a device tensor while accumulating (no host sync), an int after `token_count`
    per_sample_grad: Tensor | None = field(default=None, repr=False)

    def add(self, name: str, value: Tensor) -> None:
        """``sum += value`` in place; a first `value` (a fresh tensor) becomes the sum."""
        current = getattr(self, name)
        if current is None:
            setattr(self, name, value.detach())
        else:
            current.add_(value.detach())

    def add_per_sample_gradients(self, grads: Tensor) -> None:
        """Add one call's per-sample gradients (B, out, in_flat) to this backward pass's (EWC, EKFAC)."""
        if self.per_sample_grad is None:
            self.per_sample_grad = grads
        else:
            self.per_sample_grad.add_(grads)

    def token_count(self) -> int:
        """The number of counted positions (reads a device count back to the host once)."""
        self.tokens = int(self.tokens)
        return self.tokens


class CurvatureCapture:
    """Context manager: while active, every targeted layer call that is back-propagated adds statistics.

    `targets` maps names to `LoraTarget`s (or plain-layer targets). `method` (checked by
    `estimate_curvature`, which builds captures) is KFAC, EWC or EKFAC (which needs `bases`, a ``(Q_A, Q_G)``
    pair per target); `kfac_approx` expand or reduce. Call `begin_backward(batch_size)` before each backward
    pass and `end_backward()` after it.
    """

    def __init__(self, targets: dict[str, LoraTarget], method: CurvatureMethod,
                 kfac_approx: KfacApprox = KfacApprox.EXPAND,
                 bases: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        if method == "ekfac" and (bases is None or set(bases) != set(targets)):
            raise ValueError("ekfac needs the KFAC eigenbases (Q_A, Q_G) of every target")
        self.method, self.kfac_approx = method, kfac_approx
        weights = {n: t.weight() for n, t in targets.items()}
        self.dtypes = {n: statistics_dtype(w.dtype) for n, w in weights.items()}
        # on the device and in the statistics' precision of each target's weight once, not at every layer call
        self.bases = {n: tuple(Q.to(weights[n].device, self.dtypes[n]) for Q in (Q_A, Q_G))
                      for n, (Q_A, Q_G) in (bases or {}).items()}
        self.targets = targets
        self.stats = {name: LayerStatistics(t.kind, tuple(weights[name].shape), self.dtypes[name])
                      for name, t in targets.items()}
        self._handles: list[RemovableHandle] = []
        self._lstm_names: dict[nn.Module, dict[str, str]] = {}
        self._own_forward: dict[nn.Module, object] = {}
        self._batch_size: int | None = None

    # -- attaching ---------------------------------------------------------------------------------
    def __enter__(self) -> CurvatureCapture:
        by_layer: dict[nn.Module, list[LoraTarget]] = {}
        for target in self.targets.values():
            by_layer.setdefault(target.base_layer, []).append(target)
        for layer, targets in by_layer.items():
            if targets[0].kind == "lstm":
                self._lstm_names[layer] = {t.param: t.name for t in targets}
                self._own_forward[layer] = layer.__dict__.get("forward")
                layer.forward = self._lstm_forward(layer)
            else:
                self._handles.append(layer.register_forward_hook(self._hook_for(targets[0])))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer, own in self._own_forward.items():
            if own is None:
                del layer.forward  # the class's forward shows again
            else:
                layer.forward = own
        self._own_forward.clear()
        self._lstm_names.clear()

    def _hook_for(self, target: LoraTarget):
        dtype = self.dtypes[target.name]

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0].detach().to(dtype)
            if target.kind == "linear":
                a = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1, x.shape[-1])
                self.record(target.name, RowsCall(a), output, lambda g, n=a.shape[0]: g.reshape(n, -1, g.shape[-1]))
                return
            batched = x.dim() == 3
            call = (Conv1dCall if target.kind == "conv1d" else ConvTranspose1dCall)(
                module, x if batched else x.unsqueeze(0), output.shape[-1])
            self.record(target.name, call, output, lambda g: (g if batched else g.unsqueeze(0)).transpose(1, 2))
        return hook

    def _lstm_forward(self, lstm: nn.LSTM):
        names = self._lstm_names[lstm]

        def forward(input, hx=None):
            def record(param: str, a: Tensor, xi: Tensor) -> None:
                if param in names:
                    self.record(names[param], RowsCall(a.detach().to(self.dtypes[names[param]])), xi, lambda g: g)
            return unrolled_lstm(lstm, input, hx, record)
        return forward

    # -- accumulating ------------------------------------------------------------------------------
    def record(self, name: str, call: LayerCall, output: Tensor, to_normal) -> None:
        """Register the statistics of one layer call: its input (`call`) now, g (B, P, out) when it arrives."""
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        dtype = self.dtypes[name]
        first = [True]  # the inputs are counted once per call, however many backward passes (MC draws)

        def on_gradient(grad: Tensor) -> None:
            # a backward pass run inside an autocast region runs its hooks there too: the products are fp32
            with torch.autocast(grad.device.type, enabled=False):
                self._accumulate(name, call, to_normal(grad.detach()).to(dtype), first[0])
            first[0] = False
        output.register_hook(on_gradient)

    def _by_sample(self, name: str, call: LayerCall, g: Tensor) -> tuple[LayerCall, Tensor]:
        """`call`, `g` with the sample index first. A linear layer called on a flattened batch ((B*T, in): rows
        sample-major, as transformer MLPs do) is seen as (B*T, 1, in) and is regrouped to (B, T, in)."""
        B = self._batch_size
        if B is None or call.batch == B:
            return call, g
        if isinstance(call, RowsCall) and call.a.shape[1] == 1 and call.batch % B == 0:
            return call.regrouped(B), g.reshape(B, -1, g.shape[-1])
        raise ValueError(f"layer {name!r} saw a leading dimension of {call.batch} but the batch has "
                         f"{B} samples; {self.method}"
                         f"{'/' + self.kfac_approx if self.method == 'kfac' else ''} needs the sample index "
                         "first in every targeted layer's input (or a sample-major flattened batch)")

    def _accumulate(self, name: str, call: LayerCall, g: Tensor, first: bool) -> None:
        stats = self.stats[name]
        if self.method == "ewc":
            call, g = self._by_sample(name, call, g)
            stats.add_per_sample_gradients(call.per_sample_gradients(g))
            return
        if self.method == "ekfac":
            call, g = self._by_sample(name, call, g)
            stats.add_per_sample_gradients(_rotated_per_sample_gradients(call, g, *self.bases[name]))
            return
        if self.kfac_approx == "expand":
            if first:
                active = (g != 0).any(-1)  # (B, P); masked rather than indexed: no host sync
                stats.A_sum = call.add_gram(stats.A_sum, active)
                stats.tokens = stats.tokens + active.sum()
            stats.G_sum = add_gram(stats.G_sum, g.reshape(-1, g.shape[-1]))
            return
        call, g = self._by_sample(name, call, g)
        if first:
            active = (g != 0).any(-1)
            count = active.sum(1)  # a sample without active positions has a zero mean: it adds nothing to A_sum
            a_mean = call.patches(active).sum(1) / count.clamp(min=1)[:, None]
            stats.A_sum = add_gram(stats.A_sum, a_mean)
            stats.tokens = stats.tokens + (count > 0).sum()
        stats.G_sum = add_gram(stats.G_sum, g.sum(1))

    def begin_backward(self, batch_size: int) -> None:
        self._batch_size = batch_size

    def end_backward(self) -> None:
        """Close one backward pass: square the per-sample gradients (EWC)."""
        for stats in self.stats.values():
            if stats.per_sample_grad is not None:
                stats.add("diag_sum", stats.per_sample_grad.square().sum(0))
                stats.per_sample_grad = None


def _rotated_per_sample_gradients(call: LayerCall, g: Tensor, Q_A: Tensor, Q_G: Tensor) -> Tensor:
    """``Q_G^T grad_n Q_A`` for each sample n (B, out, in_flat), ``grad_n = sum_p g a^T``: the rows rotated before
    their product (``P (in^2 + out^2)`` multiply-adds per sample for P positions) or the per-sample gradient
    after it (``out in (in + out)``), whichever is fewer. Long inputs take the second: a HiFi-GAN resblock
    convolution (128 channels, k 11, 9601 positions) 19 GFLOP -> 0.3 GFLOP per call; an LSTM step or a short
    text's Linear the first."""
    positions, width, out = g.shape[1], Q_A.shape[0], Q_G.shape[0]
    if positions * (width**2 + out**2) <= width * out * (width + out):
        return torch.einsum("bpo,bpi->boi", g @ Q_G, call.patches() @ Q_A)
    return Q_G.T @ call.per_sample_gradients(g) @ Q_A
