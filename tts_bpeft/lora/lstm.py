"""LoRA for ``nn.LSTM``: every weight matrix ``weight_ih_l*`` / ``weight_hh_l*`` (and ``_reverse``) gets its
own pair, ``W + scale * B @ A``, and the LSTM runs with those weights through ``torch.func.functional_call``
(so packed sequences, ``batch_first``, several layers and both directions behave as in the base LSTM, on the
fused kernel). Each weight matrix is its own "layer" for the prior.

LoRA dropout on the input does not commute with the recurrence, so it is not applied inside an LSTM
(a warning says so once when dropout > 0 was asked for).
"""

from __future__ import annotations

import math
import warnings

import torch
from peft.tuners.lora import LoraConfig
from torch import Tensor, nn
from torch.func import functional_call

from ..layers import effective_weight, lstm_weight_names
from .factors import lora_factors
from .layer import CustomLoraLayer


class LoraLSTM(CustomLoraLayer):
    """LoRA around an ``nn.LSTM`` (no proj_size). ``lora_A[adapter][weight_name]`` is (r, in) and
    ``lora_B[adapter][weight_name]`` is (4H, r)."""

    def _check_base(self, base_layer: nn.Module) -> None:
        if base_layer.proj_size:
            raise ValueError("LoraLSTM does not support LSTMs with proj_size")
        self.weight_names = lstm_weight_names(base_layer)

    def _make_factors(self, r: int, config: LoraConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
        if config.lora_dropout:
            warnings.warn("LoRA dropout is not applied inside an LSTM (it does not commute with the "
                          "recurrence); the LSTM adapter trains without it", stacklevel=3)
        base = self.get_base_layer()
        like = base.weight_ih_l0
        A, B = nn.ParameterDict(), nn.ParameterDict()
        for name in self.weight_names:
            n_out, n_in = getattr(base, name).shape
            A[name] = nn.Parameter(torch.empty(r, n_in, dtype=like.dtype, device=like.device))
            B[name] = nn.Parameter(torch.empty(n_out, r, dtype=like.dtype, device=like.device))
        return A, B, nn.Identity()

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """A as nn.Linear's default init (or Gaussian), B zero: the adapter starts as the identity."""
        if init_lora_weights is False:
            return
        for name in self.weight_names:
            A = self.lora_A[adapter_name][name]
            if init_lora_weights is True:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            elif str(init_lora_weights).lower() == "gaussian":
                nn.init.normal_(A, std=1 / self.r[adapter_name])
            else:
                raise ValueError(f"LoraLSTM does not support init_lora_weights={init_lora_weights!r}")
            nn.init.zeros_(self.lora_B[adapter_name][name])

    def lora_factors(self, adapter_name: str, weight_name: str) -> tuple[Tensor, Tensor, float]:
        """(B (4H, r), A (r, in), scale) of one weight matrix."""
        return lora_factors(self, adapter_name, weight_name)

    def get_delta_weight(self, adapter_name: str, weight_name: str) -> Tensor:
        B, A, scale = self.lora_factors(adapter_name, weight_name)
        return scale * (B @ A)

    def delta_weights(self, adapter_name: str) -> dict[str, Tensor]:
        return {name: self.get_delta_weight(adapter_name, name) for name in self.weight_names}

    def flatten_parameters(self) -> None:
        """The wrapped LSTM's ``flatten_parameters`` (StyleTTS 2 and Kokoro call it before every forward)."""
        self.get_base_layer().flatten_parameters()

    def forward(self, x, *args, **kwargs):
        base = self.get_base_layer()
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, *args, **kwargs)
        adapters = [a for a in self.active_adapters if a in self.lora_A]
        if self.merged or not adapters:
            return base(x, *args, **kwargs)
        weights = {}
        for name in self.weight_names:
            weight = effective_weight(base, name)
            weights[name] = weight + sum(self.get_delta_weight(a, name).to(weight.dtype) for a in adapters)
        return functional_call(base, weights, (x, *args), kwargs)
