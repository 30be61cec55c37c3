"""What our own LoRA layers (Conv1d, ConvTranspose1d, LSTM) share inside peft: set-up, adapter
registration, merge and unmerge through the base layer's parametrisation.

A subclass builds its factors (`_make_factors`) and says which base weights an adapter shifts and by how
much (`delta_weights`: parameter name -> dW in that parameter's stored shape); merging adds those shifts
through `tts_bpeft.lora.reparam` (weight norm, spectral norm kept), unmerging subtracts them.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod

import torch
from peft.tuners.lora import LoraConfig, LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import Tensor, nn

from ..layers import effective_weight
from .reparam import add_to_effective_weight


class CustomLoraLayer(nn.Module, LoraLayer):
    """Base of the LoRA layers peft does not provide (plain LoRA only: no DoRA, no lora_bias)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int,
                 lora_alpha: float, **kwargs) -> None:
        super().__init__()
        with warnings.catch_warnings():  # peft warns that it cannot size this layer type; we size it
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            LoraLayer.__init__(self, base_layer)
        if config.use_dora or config.lora_bias:
            raise ValueError(f"{type(self).__name__} supports plain LoRA only (no DoRA, no lora_bias)")
        self._check_base(base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _check_base(self, base_layer: nn.Module) -> None:
        """Refuse a base layer this class cannot adapt (and note what it needs of it)."""

    @abstractmethod
    def _make_factors(self, r: int, config: LoraConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
        """``(lora_A, lora_B, dropout)`` of a new rank-`r` adapter."""

    @abstractmethod
    def delta_weights(self, adapter_name: str) -> dict[str, Tensor]:
        """Parameter name of the base layer -> the adapter's dW in that parameter's stored shape."""

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig,
                     **kwargs) -> None:
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
        lora_A, lora_B, dropout = self._make_factors(r, config)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = dropout
        self.lora_A[adapter_name] = lora_A
        self.lora_B[adapter_name] = lora_B
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.use_rslora[adapter_name] = config.use_rslora
        self.lora_bias[adapter_name] = False
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' dW to the base weights. `safe_merge` first checks that every merged weight is
        finite and raises (base weights untouched) if one is not, as peft's layers do."""
        base = self.get_base_layer()
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.lora_A:
                continue
            deltas = self.delta_weights(adapter)
            if safe_merge:
                for name, delta in deltas.items():
                    if not torch.isfinite(effective_weight(base, name) + delta).all():
                        raise ValueError(f"merging adapter {adapter!r} into {name} gives non-finite weights; "
                                         "the adapter seems broken (check its training for NaN/inf)")
            for name, delta in deltas.items():
                add_to_effective_weight(base, delta, name)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_A:
                for name, delta in self.delta_weights(adapter).items():
                    add_to_effective_weight(base, -delta, name)
