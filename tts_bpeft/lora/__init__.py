"""LoRA for every layer type StyleTTS 2 has (Linear, Conv1d, ConvTranspose1d, LSTM), inside peft."""

from .conv import LoraConv1d, LoraConvTranspose1d
from .inject import CUSTOM_LORA_LAYERS, LoraPlan, PlannedLayer, add_lora, plan_lora
from .io import adapter_state_dict, deepcopy_model, load_adapter, merged_state_dict, save_adapter
from .lstm import LoraLSTM
from .presets import PresetTable
from .targets import LoraTarget, lora_targets

__all__ = [
    "CUSTOM_LORA_LAYERS", "LoraConv1d", "LoraConvTranspose1d", "LoraLSTM", "LoraPlan", "LoraTarget", "PlannedLayer",
    "PresetTable",
    "add_lora", "adapter_state_dict", "deepcopy_model", "load_adapter", "lora_targets", "merged_state_dict",
    "plan_lora", "save_adapter",
]
