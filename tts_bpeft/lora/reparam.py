"""Writing a new effective weight into a layer, exactly, whatever parametrises its weight.

Merging LoRA into a weight-normed layer by adding ``dW`` to the stored direction ``v`` (what generic merge
code does) changes the effective weight ``g * v / ||v||`` by something other than ``dW``. Here the
effective weight ``W`` is replaced by ``W + dW`` through the parametrisation's own inverse:

- weight norm (old ``weight_g``/``weight_v`` hook, or the new parametrization): ``v = W + dW``,
  ``g = ||W + dW||`` over all dims but ``dim``; exact.
- spectral norm (old hook or new parametrization): the stored weight becomes ``W + dW`` and the left
  singular-vector estimate ``u`` is rescaled so that ``u^T (W + dW) v = 1``, i.e. the layer divides by one.
  Exact whenever no power iteration runs (eval mode, the mode one merges for); a train-mode forward
  re-normalises the weight, which is what spectral norm is for.
- anything else: the parameter itself is updated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ..layers import effective_weight


def _rescale_u(u: Tensor, weight: Tensor, v: Tensor, dim: int) -> None:
    """Scale the power-iteration vector u in place so that u^T W v = 1 (W as a matrix along `dim`)."""
    if dim != 0:
        weight = weight.movedim(dim, 0)
    sigma = torch.dot(u, weight.reshape(weight.shape[0], -1) @ v)
    u.div_(sigma)


@torch.no_grad()
def add_to_effective_weight(module: nn.Module, delta: Tensor, name: str = "weight") -> None:
    """Make the layer compute with ``effective_weight(module, name) + delta`` (delta in the stored shape)."""
    new = effective_weight(module, name).detach() + delta.to(effective_weight(module, name).dtype)
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == name:
            getattr(module, name + "_v").copy_(new)
            getattr(module, name + "_g").copy_(torch.norm_except_dim(new, 2, hook.dim))
            setattr(module, name, hook.compute_weight(module))
            return
        if isinstance(hook, SpectralNorm) and hook.name == name:
            getattr(module, name + "_orig").copy_(new)
            _rescale_u(getattr(module, name + "_u"), new, getattr(module, name + "_v"), hook.dim)
            setattr(module, name, hook.compute_weight(module, do_power_iteration=False))
            return
    if parametrize.is_parametrized(module, name):
        setattr(module, name, new)  # runs the chain's right_inverse: exact for weight norm
        for p in module.parametrizations[name]:
            if hasattr(p, "_u") and hasattr(p, "_v"):  # spectral norm keeps the value as given
                _rescale_u(p._u, new, p._v, p.dim)
        return
    getattr(module, name).add_(delta.to(getattr(module, name).dtype))
