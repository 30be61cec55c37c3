"""The low-rank factors of any adapted weight, in the matrix view of `tts_bpeft.layers`.

For every LoRA layer (peft's own Linear, our Conv1d / ConvTranspose1d / LSTM classes) the weight shift is

    dW = scale * B @ A,    B: (out, r),  A: (r, in_flat),  dW: (out, in_flat)

with ``in_flat`` ordered as in `tts_bpeft.layers` (``i * k + j`` for convolutions).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import layer_kind, weight_to_matrix


def module_factors(lora_A: nn.Module, lora_B: nn.Module) -> tuple[Tensor, Tensor]:
    """(B, A) of a LoRA pair stored as modules: A a Linear/Conv1d/ConvTranspose1d into r, B a Linear or 1x1 Conv1d."""
    kind_A = layer_kind(lora_A)
    B = lora_B.weight.reshape(lora_B.weight.shape[0], -1)
    return B, weight_to_matrix(kind_A, lora_A.weight)


def lora_factors(layer: nn.Module, adapter_name: str, param: str = "weight") -> tuple[Tensor, Tensor, float]:
    """(B, A, scale) of one adapted weight of a LoRA `layer`; `param` picks an LSTM's weight matrix."""
    scale = layer.scaling[adapter_name]
    if isinstance(layer.lora_A[adapter_name], nn.ParameterDict):  # one pair per weight matrix (LSTM)
        return layer.lora_B[adapter_name][param], layer.lora_A[adapter_name][param], scale
    B, A = module_factors(layer.lora_A[adapter_name], layer.lora_B[adapter_name])
    return B, A, scale
