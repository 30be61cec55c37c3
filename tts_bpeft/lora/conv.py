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

from abc import abstractmethod

from peft.tuners.lora import LoraConfig
from torch import Tensor, nn

from ..layers import effective_weight, layer_kind, matrix_to_weight
from .factors import lora_factors
from .layer import CustomLoraLayer


class _LoraConv(CustomLoraLayer):
    """Shared machinery of the two convolution LoRA layers; subclasses build ``lora_A``."""

    def _check_base(self, base_layer: nn.Module) -> None:
        self.kind = layer_kind(base_layer)

    @abstractmethod
    def _make_lora_A(self, r: int) -> nn.Module:
        """``lora_A`` of a new rank-`r` adapter (a convolution shaped like the base layer's)."""

    def _make_factors(self, r: int, config: LoraConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
        dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        return self._make_lora_A(r), nn.Conv1d(r, self.get_base_layer().out_channels, 1, bias=False), dropout

    def lora_factors(self, adapter_name: str) -> tuple[Tensor, Tensor, float]:
        """(B (out, r), A (r, in*k), scale) with dW = scale * B @ A in the matrix view."""
        return lora_factors(self, adapter_name)

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """dW in the base layer's stored weight shape."""
        B, A, scale = self.lora_factors(adapter_name)
        base_weight = effective_weight(self.get_base_layer())
        return matrix_to_weight(self.kind, scale * (B @ A), base_weight.shape).to(base_weight.dtype)

    def delta_weights(self, adapter_name: str) -> dict[str, Tensor]:
        return {"weight": self.get_delta_weight(adapter_name)}

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


