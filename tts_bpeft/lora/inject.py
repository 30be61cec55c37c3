"""Choosing layers by name pattern and layer type, and injecting LoRA into them through peft.

Selection rule (`plan_lora`):

- entries of ``target_modules`` that are layer-type names (``"Linear"``, ``"Conv1d"``, ``"ConvTranspose1d"``,
  ``"LSTM"``) restrict the layer types; the other entries are name patterns;
- a name pattern matches a module path exactly, as a dotted suffix (peft's rule: ``"q_proj"`` matches
  ``"...attn.q_proj"``) or as a full regular expression (``r"decoder\\..*"``);
- selected = layers of those types (all supported types if none is named) whose path matches a pattern
  (any path if no pattern is given), minus those matching an ``exclude`` pattern or lying inside a module
  that matches one (``exclude="mpd"`` leaves the whole ``mpd`` sub-model alone);
- a layer named exactly (or by suffix) that cannot be adapted is an error; one reached only through a type
  or a regular expression (e.g. a grouped convolution) is skipped and listed in the plan.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..layers import effective_weight, layer_kind, unsupported_reason, weight_to_matrix
from .conv import LoraConv1d, LoraConvTranspose1d
from .lstm import LoraLSTM
from .targets import as_module, weight_entries

LAYER_TYPES: dict[str, type[nn.Module]] = {
    "Linear": nn.Linear, "Conv1d": nn.Conv1d, "ConvTranspose1d": nn.ConvTranspose1d, "LSTM": nn.LSTM,
}
CUSTOM_LORA_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: LoraConv1d, nn.ConvTranspose1d: LoraConvTranspose1d, nn.LSTM: LoraLSTM,
}


@dataclass(frozen=True)
class PlannedLayer:
    """A layer that `add_lora` would adapt: its path, type, weight shape and LoRA parameter count."""

    name: str
    layer_type: str
    weight_shapes: tuple[tuple[int, ...], ...]
    base_params: int
    lora_params: int


@dataclass
class LoraPlan:
    """What `add_lora` would do: the selected layers and those skipped (with the reason)."""

    selected: list[PlannedLayer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.selected]

    def format(self) -> str:
        """A table: one line per selected layer, totals, then the skipped layers."""
        width = max([len(p.name) for p in self.selected] + [10])
        lines = [f"{'layer':<{width}}  {'type':<16} {'weight':<22} {'base':>11} {'lora':>9}"]
        for p in self.selected:
            shapes = ", ".join("x".join(map(str, s)) for s in p.weight_shapes[:1])
            more = f" (+{len(p.weight_shapes) - 1})" if len(p.weight_shapes) > 1 else ""
            lines.append(f"{p.name:<{width}}  {p.layer_type:<16} {shapes + more:<22} "
                         f"{p.base_params:>11,} {p.lora_params:>9,}")
        base = sum(p.base_params for p in self.selected)
        lora = sum(p.lora_params for p in self.selected)
        lines.append(f"{len(self.selected)} layers, {base:,} base weights, {lora:,} LoRA parameters")
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def _split_targets(target_modules: str | Iterable[str]) -> tuple[set[type[nn.Module]], list[str]]:
    entries = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    types = {LAYER_TYPES[e] for e in entries if e in LAYER_TYPES}
    return types, [e for e in entries if e not in LAYER_TYPES]


def _matches(pattern: str, name: str, *, exact_only: bool = False) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    return not exact_only and re.fullmatch(pattern, name) is not None


def _excluded(name: str, excludes: list[str]) -> bool:
    """Whether `name` or one of the modules containing it matches an exclude pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(_matches(e, prefix) for e in excludes for prefix in prefixes)


def _pattern_value(name: str, patterns: Mapping[str, float] | None, default: float) -> float:
    """The value of the first pattern that matches `name` (per-layer r or alpha), else `default`."""
    return next((v for p, v in (patterns or {}).items() if _matches(p, name)), default)


def plan_lora(model: nn.Module | Mapping[str, nn.Module], target_modules: str | Iterable[str], r: int = 16,
              exclude: str | Iterable[str] | None = None, rank_pattern: Mapping[str, int] | None = None
              ) -> LoraPlan:
    """Which layers `add_lora` would adapt (a dry run): raises on patterns that match nothing and on layers
    named explicitly that cannot be adapted."""
    root = as_module(model)
    types, patterns = _split_targets(target_modules)
    excludes = [exclude] if isinstance(exclude, str) else list(exclude or [])
    modules = [(n, m) for n, m in root.named_modules() if n]
    unmatched = [p for p in patterns if not any(_matches(p, n) for n, _ in modules)]
    if unmatched:
        examples = ", ".join(n for n, _ in modules[:8])
        raise ValueError(f"target pattern(s) {unmatched} match no module; module names look like: {examples}, ...")
    plan = LoraPlan()
    refused = []
    lora_paths = [n for n, m in modules if isinstance(m, LoraLayer)]
    for name, module in modules:
        if any(name.startswith(p + ".") for p in lora_paths) or _excluded(name, excludes):
            continue  # the insides of a LoRA layer (base_layer, lora_A, ...) are never targets themselves
        if isinstance(module, LoraLayer):  # already adapted: plan a further adapter on its base layer
            module = module.get_base_layer()
        named_exactly = any(_matches(p, name, exact_only=True) for p in patterns)
        by_pattern = not patterns or named_exactly or any(_matches(p, name) for p in patterns)
        family = isinstance(module, tuple(LAYER_TYPES.values()))
        if not by_pattern or (types and not isinstance(module, tuple(types))):
            continue
        if layer_kind(module) is None:
            if named_exactly:
                refused.append(f"{name} ({type(module).__name__}): {unsupported_reason(module)}")
            elif family:
                plan.skipped.append((name, unsupported_reason(module)))
            continue
        rank = _pattern_value(name, rank_pattern, r)
        entries = weight_entries(name, module)
        shapes = tuple(tuple(effective_weight(module, p).shape) for _, _, p in entries)
        matrices = [weight_to_matrix(kind, effective_weight(module, p)).shape for _, kind, p in entries]
        lora = sum(rank * (n_out + n_in) for n_out, n_in in matrices)
        plan.selected.append(PlannedLayer(name, type(module).__name__, shapes,
                                          sum(p.numel() for p in module.parameters(recurse=False)), lora))
    if refused:
        raise ValueError("cannot adapt these layers:\n  " + "\n  ".join(refused))
    if not plan.selected:
        raise ValueError(f"no adaptable layer selected by target_modules={target_modules!r}, exclude={excludes}; "
                         f"skipped: {plan.skipped}")
    return plan


def _write_back(model: MutableMapping[str, nn.Module], root: nn.Module) -> None:
    """peft replaced top-level entries inside the ModuleDict view; put them into the user's dict too."""
    for key, module in root.items():
        if model[key] is not module:
            model[key] = module


def add_lora(model: nn.Module | MutableMapping[str, nn.Module], target_modules: str | Iterable[str],
             r: int = 16, alpha: float = 32, dropout: float = 0.0, exclude: str | Iterable[str] | None = None,
             adapter_name: str = "default", rank_pattern: Mapping[str, int] | None = None,
             alpha_pattern: Mapping[str, float] | None = None, use_rslora: bool = False):
    """Inject LoRA (dW = alpha / r * B @ A, B initialised to zero) into the layers `plan_lora` selects.

    `model` is any nn.Module, a dict of modules (StyleTTS 2's Munch: changed in place and returned), or a
    transformers ``PreTrainedModel`` (returned wrapped by ``peft.get_peft_model``, so
    ``save_pretrained``/``PeftModel.from_pretrained`` work). `rank_pattern` / `alpha_pattern` map name
    patterns (same matching rule) to per-layer r / alpha. Adapting a layer twice under one adapter name is
    refused. Returns the adapted model.
    """
    root = as_module(model)
    twice = [n for n, m in root.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]
    if twice:
        raise ValueError(f"adapter {adapter_name!r} already exists on {twice[:5]}{'...' if len(twice) > 5 else ''}; "
                         "use another adapter_name")
    plan = plan_lora(root, target_modules, r=r, exclude=exclude, rank_pattern=rank_pattern)
    if plan.skipped:
        warnings.warn(f"add_lora skipped {len(plan.skipped)} layer(s) it cannot adapt: "
                      + "; ".join(f"{n} ({why})" for n, why in plan.skipped[:5]), stacklevel=2)
    ranks = {n: _pattern_value(n, rank_pattern, r) for n in plan.names}
    alphas = {n: _pattern_value(n, alpha_pattern, alpha) for n in plan.names}
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora,
        target_modules="|".join(re.escape(n) for n in plan.names),
        rank_pattern={f"^{re.escape(n)}$": v for n, v in ranks.items() if v != r},
        alpha_pattern={f"^{re.escape(n)}$": v for n, v in alphas.items() if v != alpha},
    )
    config._register_custom_module(CUSTOM_LORA_LAYERS)
    if _is_hf_model(root):
        return get_peft_model(root, config, adapter_name=adapter_name)
    inject_adapter_in_model(config, root, adapter_name=adapter_name)
    if isinstance(model, MutableMapping):
        _write_back(model, root)
        return model
    return root


def _is_hf_model(module: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, PreTrainedModel)
