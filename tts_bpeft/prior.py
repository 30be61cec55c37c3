"""The Laplace prior on the LoRA weight shift: ``penalty = sum_l lam_l * q_l(dW_l)``, ``dW_l = s B_l A_l``.

Each layer's quadratic ``q(dW) = vec(dW)^T F vec(dW)`` is one of these forms (`A` (r x in_flat) and `B`
(out x r) are the LoRA factors, ``A_F`` and ``G`` the KFAC factors, row-major vec as in
`tts_bpeft.curvature.storage`):

==========  ===================================================  ==========================================
kind        F                                                    q(dW), computed as
==========  ===================================================  ==========================================
``l2sp``    ``I``                                                ``s^2 sum((B^T B) * (A A^T))``      (r x r)
``ewc``     ``diag(d)``                                          ``sum(d * (s B A)^2)``      (d: out x in_flat)
``kfac``    ``(A_F + a I) (x) (G + g I)``                        ``s^2 sum((B^T G_d B) * (A A_F,d A^T))`` (r x r)
``ekfac``   ``(Q_A (x) Q_G) diag(S) (Q_A (x) Q_G)^T``            ``sum(S * (Q_G^T (s B A) Q_A)^2)``
==========  ===================================================  ==========================================

- **Damping** (kfac): ``damping = gamma`` is relative to the mean eigenvalue ``m = tr(A_F) tr(G) / (in out)``
  of the undamped Kronecker product and split between the factors by the usual pi rule (Martens & Grosse
  2015): ``a = pi sqrt(gamma m)``, ``g = sqrt(gamma m) / pi``, ``pi^2 = (tr(A_F)/in) / (tr(G)/out)``, i.e.
  ``a = sqrt(gamma) tr(A_F)/in`` and ``g = sqrt(gamma) tr(G)/out``. A layer with several Kronecker terms damps
  each with its own split.
- **Mixing**: ``mix`` adds ``mu`` times a second form rescaled to the main form's mean eigenvalue in each
  layer: ``q = q_main + mu * (m_main / m_mix) * q_mix`` (``mix="l2sp"``: ``m_mix = 1``; a curvature: its
  EWC, KFAC or EKFAC form; ``m_main`` of the damped product if damped). So ``mu`` is the mixed-in share of the main
  form's trace, whatever the layer's scale.
- **EKFAC** (George et al. 2018): the eigenbases ``Q_A``, ``Q_G`` of the KFAC factors with the diagonal
  ``S`` re-fitted to the per-sample gradients' second moments in that basis (`estimate_curvature`).

What lam means (``scaling``):

- ``"package"``: q as above; the penalty is the Fisher quadratic of the *mean per-sample* pre-training loss.
  A Laplace posterior from ``N_pre`` pre-training samples added to a fine-tuning loss averaged over
  ``N_ft`` samples corresponds to ``lam = N_pre / (2 N_ft)``.
- ``"reference"``: each KFAC layer times ``samples / tokens`` so that factors estimated here match the paper
  code's (means over batch and tokens of a per-sample *mean* loss, batch 1); its published lam values
  (1e5-1e6 KFAC, 1e4 EWC) can then be reused.
- ``"relative"`` (scale-free): ``sum_l q_l`` divided by ``m_bar * sum_l ||W0_l||^2``, where ``m_bar`` is the
  mean eigenvalue of the form itself over all adapted weights, ``sum_l tr(F_l) / sum_l numel_l`` with ``F_l``
  the whole charged form (damping and the mixed-in form included: `LaplacePrior.mean_eigenvalue`), and
  ``W0`` the base weights. With ``F = I`` this is ``sum ||dW||^2 / sum ||W0||^2``, the squared relative
  weight change; a curvature only redistributes that cost over directions (relative importance of layers
  kept). Since ``E[vec(dW)^T F vec(dW)] = sigma^2 tr(F)`` for an isotropic random ``dW`` (variance
  ``sigma^2`` per entry), every form then charges the same expected penalty for such a ``dW``: one lam means
  the same for every prior kind, layer type and model size.

The penalty is computed in float32 even under autocast.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .choices import Choice
from .curvature.blocks import PermutedBlocks, diagonal_blocks
from .curvature.storage import Curvature
from .lora.targets import LoraTarget, lora_targets


class PriorKind(Choice):
    """The prior's quadratic form (the module docstring's table); ``"none"`` in a config means no prior."""

    L2SP = "l2sp"
    EWC = "ewc"
    KFAC = "kfac"
    EKFAC = "ekfac"


class PriorScaling(Choice):
    """What lam means (the module docstring's list)."""

    PACKAGE = "package"
    REFERENCE = "reference"
    RELATIVE = "relative"


class _SymmetricSandwich(torch.autograd.Function):
    """``X^T M X`` for a symmetric ``M`` (d x d) that needs no gradient and ``X`` (d x r), or for stacks of
    them ((b, d, d) and (b, d, r): one product per block). The backward reuses ``M X`` from the forward,
    ``dL/dX = M X (dL/dY + dL/dY^T)``, so the ``d^2 r`` product is taken once per penalty evaluation, not twice
    (autograd of ``X.T @ M @ X`` multiplies by ``M`` again in the backward)."""

    @staticmethod
    def forward(ctx, X: Tensor, M: Tensor) -> Tensor:
        MX = M @ X
        ctx.save_for_backward(MX)
        return X.mT @ MX

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (MX,) = ctx.saved_tensors
        return MX @ (grad + grad.mT), None


def _sandwich(term: dict[str, Tensor], key: str, X: Tensor, damping: float = 0.0) -> Tensor:
    """``X^T (M + damping I) X`` for the factor `key` of a term, stored dense (``M``), by diagonal blocks
    (``M_blocks``, ``M_index``: `PermutedBlocks`) or as an eigenbasis."""
    if key in term:
        out = _SymmetricSandwich.apply(X, term[key])
    elif key + "_blocks" in term:  # sum over blocks b of X_b^T M_b X_b, batched (the blocks are stacked, mT)
        blocks = PermutedBlocks(term[key + "_blocks"], term[key + "_index"])
        out = _SymmetricSandwich.apply(blocks.gather(X), blocks.blocks).sum(0)
    else:
        P = term[key + "_vecs"].T @ X  # (k, r)
        out = P.T @ (term[key + "_vals"][:, None] * P)
    return out + damping * (X.T @ X) if damping else out


def _trace(term: dict[str, Tensor], key: str) -> float:
    return float(term[key].trace() if key in term else term[key + "_vals"].sum())


class _StoredForm:
    """A form whose curvature tensors (`terms`) are moved to the LoRA factors' device and dtype once, not at
    every penalty evaluation (a CPU curvature file serving a CUDA model is copied a single time)."""

    def __init__(self, terms: list[dict[str, Tensor]]) -> None:
        self.terms = terms
        self._moved: tuple[tuple, list[dict[str, Tensor]]] | None = None

    def terms_like(self, X: Tensor) -> list[dict[str, Tensor]]:
        key = (X.device, X.dtype)
        if self._moved is None or self._moved[0] != key:  # index tensors keep their integer dtype
            self._moved = (key, [{k: v.to(X) if v.is_floating_point() else v.to(X.device) for k, v in term.items()}
                                 for term in self.terms])
        return self._moved[1]


class Isotropic:
    """``q(dW) = ||dW||^2`` (L2-SP), in r x r form."""

    mean_eigenvalue = 1.0

    def __call__(self, B: Tensor, A: Tensor, scale: float) -> Tensor:
        return scale**2 * ((B.T @ B) * (A @ A.T)).sum()


class Diagonal(_StoredForm):
    """``q(dW) = sum(d * dW^2)`` (EWC), ``d`` (out x in_flat)."""

    def __init__(self, diag: Tensor) -> None:
        super().__init__([{"diag": diag}])
        self.mean_eigenvalue = float(diag.mean())

    def __call__(self, B: Tensor, A: Tensor, scale: float) -> Tensor:
        return (self.terms_like(B)[0]["diag"] * (scale * (B @ A)) ** 2).sum()


def _cheaper_form(term: dict[str, Tensor]) -> dict[str, Tensor]:
    """`term` with every eigenbasis factor that keeps more than half of its ``d`` eigenpairs made dense (float32):
    its sandwich then costs ``d^2 r`` (`_SymmetricSandwich`) instead of ``2 d k r``, for at most twice the
    memory of a float32 eigenbasis (four times a bf16 one). Truncated factors (``k <= d / 2``) stay eigenbases.
    A dense factor that is block diagonal up to a permutation (a ConvTranspose1d's ``A``: one block per output
    phase, `tts_bpeft.curvature.blocks`) is kept by its blocks when they hold at most half of ``d^2`` (padding
    included): its sandwich then costs ``sum_b d_b^2 r`` (Kokoro's first upsampler: 10 times less)."""
    out = dict(term)
    for key in ("A", "G"):
        vecs = out.get(key + "_vecs")
        if vecs is not None and 2 * vecs.shape[1] > vecs.shape[0]:
            vecs = vecs.float()
            out[key] = (vecs * out.pop(key + "_vals").float()) @ vecs.T
            del out[key + "_vecs"]
        if key in out:
            parts = diagonal_blocks(out[key])
            padded_entries = len(parts) * max(p.numel() for p in parts) ** 2  # what the stacked blocks hold
            if len(parts) > 1 and 2 * padded_entries <= out[key].shape[0] ** 2:
                out[key + "_blocks"], out[key + "_index"] = PermutedBlocks.of(out.pop(key), parts)
    return out


class Kronecker(_StoredForm):
    """``q(dW) = sum_terms tr(dW^T (G + g I) dW (A_F + a I))`` (KFAC, optionally damped), in r x r form."""

    def __init__(self, terms: list[dict[str, Tensor]], damping: float = 0.0) -> None:
        super().__init__([_cheaper_form(term) for term in terms])
        self.shifts: list[tuple[float, float]] = []  # (a, g) of each term
        self.mean_eigenvalue = 0.0  # of the damped product: sum_terms (mean(A_F) + a) (mean(G) + g)
        for term in terms:
            n_in = term["A"].shape[0] if "A" in term else term["A_vecs"].shape[0]
            n_out = term["G"].shape[0] if "G" in term else term["G_vecs"].shape[0]
            mean_a, mean_g = _trace(term, "A") / n_in, _trace(term, "G") / n_out
            a, g = math.sqrt(damping) * mean_a, math.sqrt(damping) * mean_g
            self.mean_eigenvalue += (mean_a + a) * (mean_g + g)
            self.shifts.append((a, g))

    def __call__(self, B: Tensor, A: Tensor, scale: float) -> Tensor:
        return scale**2 * sum((_sandwich(t, "G", B, g) * _sandwich(t, "A", A.T, a)).sum()
                              for t, (a, g) in zip(self.terms_like(B), self.shifts))


class EigenKronecker(_StoredForm):
    """``q(dW) = sum_terms sum(S * (Q_G^T dW Q_A)^2)`` (EKFAC); ``O(out in r)`` like EWC."""

    def __init__(self, terms: list[dict[str, Tensor]]) -> None:
        super().__init__(terms)
        self.mean_eigenvalue = sum(float(t["scales"].mean()) for t in terms)

    def __call__(self, B: Tensor, A: Tensor, scale: float) -> Tensor:
        return sum((t["scales"] * (scale * (t["G_basis"].T @ B) @ (A @ t["A_basis"])) ** 2).sum()
                   for t in self.terms_like(B))


QuadraticForm = Isotropic | Diagonal | Kronecker | EigenKronecker


def curvature_form(curvature: Curvature, name: str, damping: float = 0.0) -> QuadraticForm:
    """The quadratic form of one layer of a curvature estimate (`damping` only for KFAC)."""
    terms = curvature.terms(name)
    if curvature.method == "kfac":
        return Kronecker(terms, damping)
    if damping:
        raise ValueError(f"damping applies to KFAC only, not to a {curvature.method} estimate")
    if curvature.method == "ekfac":
        return EigenKronecker(terms)
    return Diagonal(sum(t["diag"] for t in terms))


def check_strengths(lam: float, damping: float = 0.0, mu: float = 0.0,
                    lam_per_layer: Mapping[str, float] | None = None) -> None:
    """lam (also per layer), damping and mu are finite numbers >= 0; raises ValueError naming the bad one."""
    for what, value in (("lam", lam), ("damping", damping), ("mu", mu),
                        *((f"lam_per_layer[{k!r}]", v) for k, v in (lam_per_layer or {}).items())):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"prior {what} = {value!r}: must be a finite number >= 0 (a negative strength "
                             "rewards moving away from the pre-trained weights)")


class LaplacePrior:
    """``penalty(model) = sum_l lam_l q_l(dW_l)`` over the model's LoRA targets (see the module docstring).

    `kind` (a `PriorKind`) defaults to the curvature's method; ``"l2sp"`` needs no curvature. `damping`
    (KFAC) and `mix` / `mu` (``mix="l2sp"`` or an EWC/KFAC/EKFAC `Curvature`) shape the form; `scaling` sets
    what lam means.
    `lam_per_layer` maps name patterns (exact, dotted suffix, or full regex) to a lam that replaces the
    global `lam` for matching layers (first match wins).
    """

    def __init__(self, curvature: Curvature | None = None, lam: float = 1.0,
                 lam_per_layer: Mapping[str, float] | None = None, kind: PriorKind | str | None = None,
                 adapter_name: str = "default", scaling: PriorScaling | str = "relative", damping: float = 0.0,
                 mix: str | Curvature | None = None, mu: float = 0.0) -> None:
        kind = PriorKind.parse(kind or (curvature.method if curvature is not None else None), "prior kind")
        if kind != PriorKind.L2SP and curvature is None:
            raise ValueError(f"prior kind '{kind}' needs a curvature estimate")
        if curvature is not None and kind != PriorKind.L2SP and curvature.method != kind:
            raise ValueError(f"a {curvature.method} estimate cannot serve a {kind} prior")
        scaling = PriorScaling.parse(scaling, "scaling")
        check_strengths(lam, damping, mu, lam_per_layer)
        if damping and kind != PriorKind.KFAC:
            raise ValueError(f"damping applies to the kfac prior only, not '{kind}'")
        if mix is not None and not (mix == "l2sp" or isinstance(mix, Curvature)):
            raise ValueError(f"mix must be 'l2sp' or a Curvature estimate, got {mix!r}")
        if mu and mix is None:
            raise ValueError("mu > 0 needs a form to mix in (mix='l2sp' or a Curvature)")
        self.curvature, self.kind, self.lam = curvature, kind, lam
        self.lam_per_layer = dict(lam_per_layer or {})
        self.adapter_name, self.scaling = adapter_name, scaling
        self.damping, self.mix, self.mu = damping, mix, mu
        self._targets: dict[int, dict[str, LoraTarget]] = {}
        self._forms: dict[str, tuple[QuadraticForm, QuadraticForm | None, float]] = {}
        self._normaliser: dict[int, float] = {}

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
            for what, curvature in (("curvature", self.curvature if self.kind != "l2sp" else None),
                                    ("mixed-in curvature", self.mix if isinstance(self.mix, Curvature) else None)):
                missing = [n for n in targets if curvature is not None and n not in curvature.layers]
                if missing:
                    raise ValueError(f"the {what} has no estimate for adapted layers {missing[:10]}")
            self._targets[key] = targets
        return self._targets[key]

    def forms(self, name: str) -> tuple[QuadraticForm, QuadraticForm | None, float]:
        """(main form, mixed-in form or None, weight of the mixed-in form) of one layer."""
        if name not in self._forms:
            main = Isotropic() if self.kind == "l2sp" else curvature_form(self.curvature, name, self.damping)
            other = None
            if self.mix is not None and self.mu:
                other = Isotropic() if self.mix == "l2sp" else curvature_form(self.mix, name)
            if other is not None and other.mean_eigenvalue <= 0:
                raise ValueError(f"layer {name!r}: the mixed-in curvature is zero there; it cannot be rescaled")
            weight = self.mu * main.mean_eigenvalue / other.mean_eigenvalue if other is not None else 0.0
            self._forms[name] = (main, other, weight)
        return self._forms[name]

    def mean_eigenvalue(self, name: str) -> float:
        """The mean eigenvalue ``tr(F) / numel`` of one layer's whole form as charged, damping and the
        mixed-in form included: ``m_main + weight * m_mix = (1 + mu) m_main``."""
        main, other, weight = self.forms(name)
        return main.mean_eigenvalue + (weight * other.mean_eigenvalue if other is not None else 0.0)

    def _layer_scale(self, name: str) -> float:
        if self.scaling == "reference" and self.kind == "kfac":
            return self.curvature.samples / self.curvature.layers[name].tokens[0]
        return 1.0

    def normaliser(self, model: nn.Module | Mapping[str, nn.Module]) -> float:
        """What ``scaling="relative"`` divides by: ``m_bar * sum_l ||W0_l||^2`` (1 for other scalings)."""
        if self.scaling != "relative":
            return 1.0
        key = id(model)
        if key not in self._normaliser:
            targets = self._targets_of(model)
            trace = numel = weight = 0.0
            for name, target in targets.items():
                W0 = target.weight().detach().float()
                trace += self.mean_eigenvalue(name) * W0.numel()
                numel += W0.numel()
                weight += float((W0**2).sum())
            if trace <= 0 or weight <= 0:
                raise ValueError("scaling='relative' needs a curvature with a positive trace and non-zero base weights")
            self._normaliser[key] = trace / numel * weight
        return self._normaliser[key]

    def layer_penalties(self, model: nn.Module | Mapping[str, nn.Module]) -> dict[str, Tensor]:
        """q_l(dW_l) of every adapted weight matrix (without lam, with the scaling), float32 scalars."""
        out = {}
        normaliser = self.normaliser(model)
        for name, target in self._targets_of(model).items():
            B, A, scale = target.lora_factors()
            main, other, weight = self.forms(name)
            # autocast is switched off for the device the factors live on (a CPU model on a CUDA machine
            # runs under CPU autocast, which disabling "cuda" autocast would leave on)
            with torch.autocast(device_type=B.device.type, enabled=False):
                B, A = B.float(), A.float()
                q = main(B, A, scale)
                if other is not None:
                    q = q + weight * other(B, A, scale)
                out[name] = q * (self._layer_scale(name) / normaliser)
        return out

    def penalty(self, model: nn.Module | Mapping[str, nn.Module]) -> Tensor:
        """``sum_l lam_l q_l`` as a float32 scalar with gradients to the LoRA parameters."""
        return sum(self.layer_lam(name) * q for name, q in self.layer_penalties(model).items())

    __call__ = penalty


def load_prior(model: nn.Module | Mapping[str, nn.Module], kind: str, lam: float = 1.0,
               curvature: str | os.PathLike | None = None, lam_per_layer: Mapping[str, float] | None = None,
               scaling: str = "relative", damping: float = 0.0, mix: str | os.PathLike | None = None,
               mu: float = 0.0, adapter_name: str = "default") -> LaplacePrior | None:
    """The prior a recipe's configuration describes, curvature files read by path and checked against the
    model's LoRA targets: ``kind="none"`` -> None; ``"l2sp"`` needs no file; ``"ewc"``, ``"kfac"``,
    ``"ekfac"`` need `curvature` holding that method. `mix` is ``"l2sp"`` or the path of a second curvature
    file (EWC, KFAC or EKFAC) mixed in with weight `mu` (see the module docstring)."""
    if kind == "none":
        return None
    kind = PriorKind.parse(kind, "prior kind ('none' for no prior)")
    check_strengths(lam, damping, mu, lam_per_layer)  # before reading (possibly large) curvature files
    estimate = None
    if kind != "l2sp":
        if not curvature:
            raise ValueError(f"prior '{kind}' needs a curvature file of the base model (prior.curvature)")
        estimate = Curvature.load(curvature, model, adapter_name)
        if estimate.method != kind:
            raise ValueError(f"{curvature}: holds a {estimate.method} estimate, the prior is '{kind}'")
    mixed = mix if mix in (None, "l2sp") else Curvature.load(mix, model, adapter_name)
    return LaplacePrior(estimate, lam=float(lam), lam_per_layer=lam_per_layer, kind=kind, adapter_name=adapter_name,
                        scaling=scaling, damping=float(damping), mix=mixed, mu=float(mu))
