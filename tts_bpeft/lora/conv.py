"""LoRA for Conv1d and ConvTranspose1d of any stride, padding and dilation, weight-normed or not.

peft's own Conv1d LoRA builds ``lora_A`` without the base layer's dilation (wrong output length for dilated
convolutions) and merges into ``weight_v`` of weight-normed layers (wrong weights). Here ``lora_A`` is a
convolution of the same geometry as the base layer into ``r`` channels and ``lora_B`` a 1x1 convolution
back to ``out`` channels, so

    layer(x) = base(x) + scale * lora_B(lora_A(dropout(x)))
             = the base layer computed with W + dW,  dW = scale * B @ A  (matrix view of tts_bpeft.layers),

and merging writes ``W + dW`` through the layer's parametrisation (`tts_bpeft.lora.reparam`).
"""

from __future__ import annotations

import math
import warnings

from peft.tuners.lora import LoraConfig, LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import Tensor, nn

from ..layers import effective_weight, layer_kind, matrix_to_weight
from .factors import lora_factors
from .reparam import add_to_effective_weight


class _LoraConv(nn.Module, LoraLayer):
    """Shared machinery of the two convolution LoRA layers; subclasses build ``lora_A``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int,
                 lora_alpha: float, **kwargs) -> None:
        super().__init__()
        with warnings.catch_warnings():  # peft warns that it cannot size this layer type; we size it
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            LoraLayer.__init__(self, base_layer)
        if config.use_dora or config.lora_bias:
            raise ValueError(f"{type(self).__name__} supports plain LoRA only (no DoRA, no lora_bias)")
        self.kind = layer_kind(base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _make_lora_A(self, r: int) -> nn.Module:
        raise TypeError("subclasses build lora_A")

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig,
                     **kwargs) -> None:
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
        base = self.get_base_layer()
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        self.lora_A[adapter_name] = self._make_lora_A(r)
        self.lora_B[adapter_name] = nn.Conv1d(r, base.out_channels, 1, bias=False)
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.use_rslora[adapter_name] = config.use_rslora
        self.lora_bias[adapter_name] = False
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def lora_factors(self, adapter_name: str) -> tuple[Tensor, Tensor, float]:
        """(B (out, r), A (r, in*k), scale) with dW = scale * B @ A in the matrix view."""
        return lora_factors(self, adapter_name)

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """dW in the base layer's stored weight shape."""
        B, A, scale = self.lora_factors(adapter_name)
        base_weight = effective_weight(self.get_base_layer())
        return matrix_to_weight(self.kind, scale * (B @ A), base_weight.shape).to(base_weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for name in check_adapters_to_merge(self, adapter_names):
            if name in self.lora_A:
                add_to_effective_weight(self.get_base_layer(), self.get_delta_weight(name))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.lora_A:
                add_to_effective_weight(self.get_base_layer(), -self.get_delta_weight(name))

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A = self.lora_A[name]
            h = lora_A(self.lora_dropout[name](x.to(lora_A.weight.dtype)), *args, **kwargs)
            result = result + (self.lora_B[name](h) * self.scaling[name]).to(result.dtype)
        return result


class LoraConv1d(_LoraConv):
    """LoRA around an ``nn.Conv1d`` (groups=1; any stride, padding, padding mode and dilation)."""

    def _make_lora_A(self, r: int) -> nn.Module:
        base = self.get_base_layer()
        return nn.Conv1d(base.in_channels, r, base.kernel_size, base.stride, base.padding, base.dilation,
                         bias=False, padding_mode=base.padding_mode)


class LoraConvTranspose1d(_LoraConv):
    """LoRA around an ``nn.ConvTranspose1d`` (groups=1); ``forward(x, output_size)`` as the base layer."""

    def _make_lora_A(self, r: int) -> nn.Module:
        base = self.get_base_layer()
        return nn.ConvTranspose1d(base.in_channels, r, base.kernel_size, base.stride, base.padding,
                                  base.output_padding, bias=False, dilation=base.dilation)


