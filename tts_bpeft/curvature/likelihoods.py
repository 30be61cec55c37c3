"""Likelihoods that give a loss its probabilistic meaning, so that a *true* Fisher can be sampled.

A ``loss_fn`` given to `tts_bpeft.estimate_curvature` may return per-sample losses ``(B,)`` (then only the
empirical Fisher is defined) or one or more `Likelihood` terms. Each term knows its negative
log-likelihood per sample with the real targets (``nll``, the empirical Fisher) and with targets drawn
from the model's own predictive distribution (``sampled_nll``, the Monte-Carlo Fisher):

=============  ==========================================  ===========================================
likelihood     per-element NLL (constants dropped)         sampled target
=============  ==========================================  ===========================================
`Categorical`  ``-log softmax(logits)[y]`` (cross-entropy)  ``y ~ Categorical(softmax(logits))``
`Gaussian`     ``(y - pred)^2 / (2 sigma^2)`` (MSE)         ``y = pred + sigma * N(0, 1)``
`Laplace`      ``|y - pred| / scale`` (L1)                  ``y = pred + Laplace(0, scale)``
=============  ==========================================  ===========================================

(``pred`` is the term's ``prediction``.) Per sample, elements are summed (``reduction="sum"``) or averaged
over the sample's unmasked elements (``reduction="mean"``, what L1/MSE losses of TTS training do), then
multiplied by ``weight``. ``mask`` (broadcastable to the target, True = counted) removes padding.
Sampled targets carry no gradient.

`PerSampleDraws` wraps a term so that each sample draws its targets from its own seeded generator: the
sampled targets of a sample are then the same whatever batch it is in (batch 1 or 8, any shard).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(elementwise: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Per-sample sum or mean of an elementwise loss (B, ...) over its unmasked elements -> (B,)."""
    if mask is not None:
        mask = mask.expand_as(elementwise).to(elementwise.dtype)
        elementwise = elementwise * mask
    total = elementwise.reshape(elementwise.shape[0], -1).sum(1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = (mask.reshape(mask.shape[0], -1).sum(1) if mask is not None
                 else torch.full_like(total, elementwise[0].numel()))
        return total / count.clamp_min(1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


class Likelihood(ABC):
    """One likelihood term of a per-sample loss: ``nll()`` and ``sampled_nll()`` return shape (B,)."""

    weight: float = 1.0

    @abstractmethod
    def nll(self) -> Tensor:
        """The NLL per sample with the real targets (B,)."""

    @abstractmethod
    def sampled_nll(self, generator: torch.Generator | None = None) -> Tensor:
        """The NLL per sample with targets drawn from the model's predictive distribution (B,)."""


@dataclass
class Categorical(Likelihood):
    """Cross-entropy: ``logits`` (B, ..., C), ``target`` (B, ...) class ids; ``ignore_index`` is masked."""

    logits: Tensor
    target: Tensor
    mask: Tensor | None = None
    weight: float = 1.0
    reduction: str = "sum"
    ignore_index: int = -100

    def _nll(self, target: Tensor, mask: Tensor | None) -> Tensor:
        logp = F.log_softmax(self.logits.float(), dim=-1)
        safe = target.clamp_min(0).unsqueeze(-1)
        elementwise = -logp.gather(-1, safe).squeeze(-1)
        return self.weight * _reduce(elementwise, mask, self.reduction)

    def _mask(self) -> Tensor:
        valid = self.target != self.ignore_index
        return valid if self.mask is None else valid & self.mask.bool()

    def nll(self) -> Tensor:
        return self._nll(self.target, self._mask())

    def sampled_nll(self, generator: torch.Generator | None = None) -> Tensor:
        probs = F.softmax(self.logits.detach().float(), dim=-1)
        flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return self._nll(flat.reshape(self.target.shape), self._mask())


@dataclass
class _AdditiveNoise(Likelihood):
    """A real target as ``prediction`` plus noise (B, ...): the NLL is elementwise in the residual
    ``target - prediction``, and a sampled target is ``prediction`` plus a draw of the noise."""

    prediction: Tensor
    target: Tensor
    mask: Tensor | None = None
    weight: float = 1.0
    reduction: str = "sum"

    @abstractmethod
    def _elementwise_nll(self, residual: Tensor) -> Tensor:
        """The NLL of each element, constants dropped, from ``target - prediction`` (same shape)."""

    @abstractmethod
    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """A draw of the noise, the shape, dtype and device of ``like``."""

    def _nll(self, target: Tensor) -> Tensor:
        elementwise = self._elementwise_nll(target - self.prediction.float())
        return self.weight * _reduce(elementwise, self.mask, self.reduction)

    def nll(self) -> Tensor:
        return self._nll(self.target.float())

    def sampled_nll(self, generator: torch.Generator | None = None) -> Tensor:
        prediction = self.prediction.detach().float()
        return self._nll(prediction + self._noise(prediction, generator))


@dataclass
class Gaussian(_AdditiveNoise):
    """Squared error as a Gaussian with mean ``prediction`` and fixed standard deviation ``sigma``."""

    sigma: float = 1.0

    def _elementwise_nll(self, residual: Tensor) -> Tensor:
        return residual**2 / (2 * self.sigma**2)

    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.sigma * torch.randn(like.shape, generator=generator, device=like.device)


@dataclass
class Laplace(_AdditiveNoise):
    """Absolute error as a Laplace likelihood with location ``prediction`` and fixed ``scale``."""

    scale: float = 1.0

    def _elementwise_nll(self, residual: Tensor) -> Tensor:
        return residual.abs() / self.scale

    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(like.shape, generator=generator, device=like.device) - 0.5
        return -self.scale * torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse CDF of Laplace(0, scale)


def utterance_seed(seed: int, *parts: object) -> int:
    """A stable per-utterance seed from a run seed and the utterance's identity (the same in every process
    and run, unlike ``hash``)."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode())


@dataclass
class PerSampleDraws(Likelihood):
    """`term` (a dataclass likelihood over a batch of B samples) with targets drawn per sample: draw d of
    sample i comes from a generator seeded with ``utterance_seed(seeds[i], d)``, so a sample's draws do not
    depend on the batch it is in. Padding must trail a sample's real elements in row-major order (as a
    (B, T) sequence padded at the end): the real elements then get the same noise however long the padding.
    The generator passed to ``sampled_nll`` is not used."""

    term: Likelihood
    seeds: Sequence[int]
    _draws: int = field(default=0, init=False, repr=False)

    def nll(self) -> Tensor:
        return self.term.nll()

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: v for f in fields(self.term) if isinstance(v := getattr(self.term, f.name), Tensor)}

    def _sample(self, i: int) -> Likelihood:
        """The term restricted to sample i: its tensor fields that have the batch as first dimension."""
        batch = len(self.seeds)
        return replace(self.term, **{name: v[i:i + 1] for name, v in self._tensors().items()
                                     if v.dim() > 0 and v.shape[0] == batch})

    def sampled_nll(self, generator: torch.Generator | None = None) -> Tensor:
        device = next(iter(self._tensors().values())).device
        draws = [self._sample(i).sampled_nll(torch.Generator(device=device).manual_seed(utterance_seed(s, self._draws)))
                 for i, s in enumerate(self.seeds)]
        self._draws += 1
        return torch.cat(draws)
