"""`LoraTarget`: one adapted weight matrix, the unit the curvature and the prior work on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from ..layers import effective_weight, layer_kind, lstm_weight_names, weight_to_matrix
from .factors import lora_factors

PEFT_PREFIX = "base_model.model."  # peft's prefix of the wrapped model's module paths and saved keys


@dataclass(frozen=True)
class LoraTarget:
    """One adapted weight matrix, seen in the matrix view of `tts_bpeft.layers`.

    ``name`` is the module path without peft's wrapper prefixes; for an LSTM the weight name is appended
    (``text_encoder.lstm.weight_ih_l0``, ``..._reverse``). ``kind`` is one of `tts_bpeft.layers.KINDS`.
    """

    name: str
    layer: nn.Module
    kind: str
    param: str = "weight"
    adapter_name: str = "default"

    @property
    def base_layer(self) -> nn.Module:
        """The wrapped layer whose (effective) weight is adapted; curvature hooks attach here."""
        return self.layer.get_base_layer() if isinstance(self.layer, LoraLayer) else self.layer

    def weight(self) -> Tensor:
        """The effective base weight as the matrix (out, in_flat)."""
        return weight_to_matrix(self.kind, effective_weight(self.base_layer, self.param))

    def lora_factors(self) -> tuple[Tensor, Tensor, float]:
        """(B (out, r), A (r, in_flat), scale) with dW = scale * B @ A."""
        return lora_factors(self.layer, self.adapter_name, self.param)

    def delta_weight_matrix(self) -> Tensor:
        """dW = scale * B @ A, shape (out, in_flat)."""
        B, A, scale = self.lora_factors()
        return scale * (B @ A)


def clean_name(name: str) -> str:
    """A module path without peft's ``base_model.model.`` prefix."""
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def weight_entries(name: str, module: nn.Module) -> list[tuple[str, str, str]]:
    """(target name, kind, weight parameter name) for each weight matrix of a supported layer."""
    kind = layer_kind(module)
    if kind == "lstm":
        return [(f"{name}.{w}", kind, w) for w in lstm_weight_names(module)]
    return [(name, kind, "weight")]


def as_module(model: nn.Module | Mapping[str, nn.Module]) -> nn.Module:
    """The model as one nn.Module: a dict of modules (StyleTTS 2's Munch) becomes a ModuleDict *view* that
    shares its modules; a DDP wrapper is unwrapped."""
    if isinstance(model, Mapping):
        return nn.ModuleDict(dict(model))
    if isinstance(getattr(model, "module", None), nn.Module) and type(model).__name__ in (
            "DistributedDataParallel", "DataParallel"):
        return model.module
    return model


def lora_targets(model: nn.Module | Mapping[str, nn.Module], adapter_name: str = "default"
                 ) -> dict[str, LoraTarget]:
    """Every weight matrix adapted under `adapter_name`, keyed by `LoraTarget.name`, in module order."""
    model = as_module(model)
    targets: dict[str, LoraTarget] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            for key, kind, param in weight_entries(clean_name(name), module.get_base_layer()):
                targets[key] = LoraTarget(key, module, kind, param, adapter_name)
    return targets
