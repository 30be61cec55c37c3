"""The Laplace prior on the LoRA weight shift: ``penalty = sum_l lam_l * q_l(dW_l)``, ``dW_l = s B_l A_l``.

=========  =====================================  ===============================================
method     q(dW)                                  computed as (never forming dW for kfac / l2sp)
=========  =====================================  ===============================================
``l2sp``   ``||dW||^2``                           ``s^2 sum((B^T B) * (A A^T))``             (r x r)
``ewc``    ``sum(F * dW^2)``                      ``sum(F * (s B @ A)^2)``           (F: out x in_flat)
``kfac``   ``vec(dW)^T (A_F (x) G) vec(dW)``      ``s^2 sum((B^T G B) * (A A_F A^T))``        (r x r)
           ``= tr(dW^T G dW A_F)``
=========  =====================================  ===============================================

``A`` (r x in_flat) and ``B`` (out x r) are the LoRA factors, ``A_F`` and ``G`` the KFAC factors; a
layer with several Kronecker terms sums them; a factor stored as an eigenbasis ``(Q, lambda)`` enters as
``X^T Q diag(lambda) Q^T X``. The r x r form costs ``O(r (in^2 + out^2))`` instead of ``O(in * out * ...)``.

What lam = 1 means: the penalty is the Fisher quadratic of the *mean per-sample* pre-training loss. A
Laplace posterior from ``N_pre`` pre-training samples, added to a fine-tuning loss averaged over
``N_ft`` samples, corresponds to ``lam = N_pre / (2 N_ft)``. ``scaling="reference"`` multiplies each KFAC
layer by ``samples / tokens`` so that factors estimated here match the paper code's (means over batch
and tokens of a per-sample *mean* loss, batch 1), whose published lam values (1e5-1e6 KFAC, 1e4 EWC)
can then be reused. The penalty is computed in float32 even under autocast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .curvature.storage import Curvature
from .lora.targets import LoraTarget, lora_targets

METHODS = ("l2sp", "ewc", "kfac")


def _quadratic(term: dict[str, Tensor], key: str, X: Tensor) -> Tensor:
    """``X^T M X`` for the factor `key` of a term, stored dense (``M``) or as an eigenbasis."""
    if key in term:
        return X.T @ term[key].to(X) @ X
    P = term[key + "_vecs"].to(X).T @ X  # (k, r)
    return P.T @ (term[key + "_vals"].to(X)[:, None] * P)


def kfac_quadratic(B: Tensor, A: Tensor, scale: float, terms: list[dict[str, Tensor]]) -> Tensor:
    """``sum_terms tr(dW^T G dW A_F)`` for ``dW = scale * B @ A``, in r x r form."""
    return scale**2 * sum((_quadratic(t, "G", B) * _quadratic(t, "A", A.T)).sum() for t in terms)


def ewc_quadratic(B: Tensor, A: Tensor, scale: float, diag: Tensor) -> Tensor:
    """``sum(F * dW^2)`` for ``dW = scale * B @ A``."""
    return (diag.to(B) * (scale * (B @ A)) ** 2).sum()


def l2_quadratic(B: Tensor, A: Tensor, scale: float) -> Tensor:
    """``||scale * B @ A||^2`` in r x r form."""
    return scale**2 * ((B.T @ B) * (A @ A.T)).sum()


class LaplacePrior:
    """``penalty(model) = sum_l lam_l q_l(dW_l)`` over the model's LoRA targets (see the module docstring).

    `lam_per_layer` maps name patterns (exact, dotted suffix, or full regex) to a lam that replaces the
    global `lam` for matching layers (first match wins). `method` defaults to the curvature's method;
    ``"l2sp"`` needs no curvature.
    """

    def __init__(self, curvature: Curvature | None = None, lam: float = 1.0,
                 lam_per_layer: Mapping[str, float] | None = None, method: str | None = None,
                 adapter_name: str = "default", scaling: str = "package") -> None:
        method = method or (curvature.method if curvature is not None else None)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method != "l2sp" and curvature is None:
            raise ValueError(f"method {method!r} needs a curvature estimate")
        if curvature is not None and method != "l2sp" and curvature.method != method:
            raise ValueError(f"a {curvature.method} estimate cannot serve a {method} prior")
        if scaling not in ("package", "reference"):
            raise ValueError(f"scaling must be 'package' or 'reference', got {scaling!r}")
        self.curvature, self.method, self.lam = curvature, method, lam
        self.lam_per_layer = dict(lam_per_layer or {})
        self.adapter_name, self.scaling = adapter_name, scaling
        self._targets: dict[int, dict[str, LoraTarget]] = {}

    def layer_lam(self, name: str) -> float:
        """The lam of one layer: the first matching `lam_per_layer` pattern, else the global lam."""
        for pattern, value in self.lam_per_layer.items():
            if name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name):
                return value
        return self.lam

    def _targets_of(self, model: nn.Module | Mapping[str, nn.Module]) -> dict[str, LoraTarget]:
        key = id(model)
        if key not in self._targets:
            targets = lora_targets(model, self.adapter_name)
            if not targets:
                raise ValueError(f"the model has no LoRA adapter {self.adapter_name!r} to regularise")
            if self.method != "l2sp":
                missing = [n for n in targets if n not in self.curvature.layers]
                if missing:
                    raise ValueError(f"the curvature has no estimate for adapted layers {missing[:10]}")
            self._targets[key] = targets
        return self._targets[key]

    def _layer_scale(self, name: str) -> float:
        if self.scaling == "reference" and self.method == "kfac":
            return self.curvature.samples / self.curvature.layers[name].tokens[0]
        return 1.0

    def layer_penalties(self, model: nn.Module | Mapping[str, nn.Module]) -> dict[str, Tensor]:
        """q_l(dW_l) of every adapted weight matrix (without lam), float32 scalars."""
        out = {}
        for name, target in self._targets_of(model).items():
            B, A, scale = target.factors()
            # autocast is switched off for the device the factors live on (a CPU model on a CUDA machine
            # runs under CPU autocast, which disabling "cuda" autocast would leave on)
            with torch.autocast(device_type=B.device.type, enabled=False):
                B, A = B.float(), A.float()
                if self.method == "l2sp":
                    q = l2_quadratic(B, A, scale)
                elif self.method == "ewc":
                    q = ewc_quadratic(B, A, scale, self.curvature.factors(name)["diag"])
                else:
                    q = kfac_quadratic(B, A, scale, self.curvature.terms(name))
                out[name] = q * self._layer_scale(name)
        return out

    def penalty(self, model: nn.Module | Mapping[str, nn.Module]) -> Tensor:
        """``sum_l lam_l q_l`` as a float32 scalar with gradients to the LoRA parameters."""
        return sum(self.layer_lam(name) * q for name, q in self.layer_penalties(model).items())

    __call__ = penalty
