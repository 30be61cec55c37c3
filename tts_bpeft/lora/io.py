"""Saving and loading adapters in peft's layout, and exporting merged plain weights.

For any model (not only transformers ones) an adapter folder holds peft's two files, exactly as
``PeftModel.save_pretrained`` writes them: ``adapter_config.json`` (a ``LoraConfig``: ``target_modules`` lists
the adapted module paths, per-layer r and alpha sit in ``rank_pattern`` / ``alpha_pattern``,
``base_model_name_or_path`` names the base model) and ``adapter_model.safetensors`` with peft's keys
(``base_model.model.<module path>.lora_A.weight``: the adapter name removed; an LSTM has
``<path>.lora_A.weight_ih_l0``...). So plain peft reads them: ``PeftModel.from_pretrained(model, folder,
config=config)`` with the custom layer types registered on ``config`` (docs/lora.md). `load_adapter` also
reads folders written before the prefix was added (keys without ``base_model.model.``).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ..io import save_json, save_safetensors
from .inject import add_lora
from .targets import PEFT_PREFIX, as_module, clean_name

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _lora_layers(root: nn.Module, adapter_name: str) -> dict[str, LoraLayer]:
    return {clean_name(n): m for n, m in root.named_modules()
            if isinstance(m, LoraLayer) and adapter_name in m.lora_A}


def adapter_state_dict(model: nn.Module | Mapping[str, nn.Module], adapter_name: str = "default"
                       ) -> dict[str, Tensor]:
    """The adapter's tensors under peft's saved keys: ``base_model.model.<path>.lora_A.weight`` (adapter name
    removed), as ``PeftModel.save_pretrained`` writes them."""
    out = {}
    for path, layer in _lora_layers(as_module(model), adapter_name).items():
        for part in ("lora_A", "lora_B"):
            for key, value in getattr(layer, part)[adapter_name].state_dict().items():
                out[f"{PEFT_PREFIX}{path}.{part}.{key}"] = value
    return out


def _base_model_name(root: nn.Module) -> str | None:
    """The hub id or folder a transformers model (or a PeftModel around one) was loaded from, if any."""
    config = getattr(getattr(root, "base_model", root), "config", None) or getattr(root, "config", None)
    return getattr(config, "_name_or_path", None) or None


def save_adapter(model: nn.Module | Mapping[str, nn.Module], directory: str | os.PathLike,
                 adapter_name: str = "default", base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (atomically) into `directory`.

    `base_model_name_or_path` (what the adapter applies to: a hub id, a checkpoint file) goes into the config;
    by default a transformers model's own ``_name_or_path``."""
    root = as_module(model)
    layers = _lora_layers(root, adapter_name)
    if not layers:
        raise ValueError(f"the model has no LoRA adapter named {adapter_name!r}")
    first = next(iter(layers.values()))
    r, alpha = first.r[adapter_name], first.lora_alpha[adapter_name]
    dropout = first.lora_dropout[adapter_name]
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=getattr(dropout, "p", 0.0), target_modules=sorted(layers),
        use_rslora=first.use_rslora[adapter_name],
        base_model_name_or_path=base_model_name_or_path or _base_model_name(root),
        rank_pattern={n: m.r[adapter_name] for n, m in layers.items() if m.r[adapter_name] != r},
        alpha_pattern={n: m.lora_alpha[adapter_name] for n, m in layers.items() if m.lora_alpha[adapter_name] != alpha},
    )
    directory = Path(directory)
    save_safetensors(adapter_state_dict(model, adapter_name), directory / WEIGHTS_NAME)
    config_dict = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    config_dict["target_modules"] = sorted(layers)
    save_json(config_dict, directory / CONFIG_NAME)
    return directory


def load_adapter(model: nn.Module | MutableMapping[str, nn.Module], directory: str | os.PathLike,
                 adapter_name: str = "default"):
    """Add the adapter saved in `directory` to a freshly built `model` and load its weights (strictly).

    Returns the adapted model, as `add_lora` does."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name}: missing; not an adapter folder")
    config = json.loads((directory / CONFIG_NAME).read_text())
    # anchored: a bare escaped path would also match as a dotted suffix ("proj" would pick "sub.proj" too)
    exact = {f"^{re.escape(n)}$": v for n, v in (config.get("rank_pattern") or {}).items()}
    exact_alpha = {f"^{re.escape(n)}$": v for n, v in (config.get("alpha_pattern") or {}).items()}
    model = add_lora(model, [f"^{re.escape(n)}$" for n in config["target_modules"]], r=config["r"],
                     alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0),
                     adapter_name=adapter_name, rank_pattern=exact, alpha_pattern=exact_alpha,
                     use_rslora=config.get("use_rslora", False))
    saved = {clean_name(k): v for k, v in load_file(str(directory / WEIGHTS_NAME)).items()}
    root = as_module(model)
    params = {}
    for path, layer in _lora_layers(root, adapter_name).items():
        for part in ("lora_A", "lora_B"):
            for key, value in getattr(layer, part)[adapter_name].state_dict(keep_vars=True).items():
                params[f"{path}.{part}.{key}"] = value
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_NAME}: does not fit the model; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, param in params.items():
        if param.shape != saved[key].shape:
            raise ValueError(f"{directory / WEIGHTS_NAME}: {key} has shape {tuple(saved[key].shape)}, "
                             f"the model expects {tuple(param.shape)}")
        param.data.copy_(saved[key])
    return model


def deepcopy_model(root: nn.Module) -> nn.Module:
    """copy.deepcopy that also copies layers with old-style weight/spectral norm after a forward pass with
    gradients: their ``weight`` attribute is then a non-leaf tensor (computed by the pre-hook) that deepcopy
    refuses; the copy gets it detached (the next forward recomputes it from the copied parameters)."""
    memo = {}
    for module in root.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, (WeightNorm, SpectralNorm)):
                weight = getattr(module, hook.name, None)
                if isinstance(weight, Tensor) and not weight.is_leaf:
                    memo[id(weight)] = weight.detach().clone()
    return copy.deepcopy(root, memo)


def merged_state_dict(model: nn.Module | Mapping[str, nn.Module], adapter_name: str | None = None
                      ) -> dict[str, Tensor]:
    """The plain state dict of the model with its adapters merged (keys as before LoRA was added).

    Works on a deep copy, so the model itself is left untouched. Weight-normed layers keep their
    ``weight_g``/``weight_v`` keys, with values that give exactly ``W + dW``.
    """
    root = deepcopy_model(as_module(model))
    for module in root.modules():
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[adapter_name] if adapter_name else None)
    state = {}
    for key, value in root.state_dict().items():
        if ".lora_" in key:
            continue
        state[clean_name(key.replace(".base_layer.", "."))] = value
    return state
