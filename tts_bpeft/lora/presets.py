"""Named LoRA presets: tables of (layer types, module-path regex) rules that a model family defines once.

A preset is a list of rules; each rule selects the layers of the given types (any supported type if the
tuple is empty) whose path matches the regular expression, with `plan_lora`'s matching rule. A family's
`PresetTable` also names the layers that never receive a gradient in its forward (a no-grad branch, an
unused pooler): no preset adapts them, and the dry-run plan lists them as skipped with the reason.
User patterns are added with ``extra`` (any supported type) and removed with ``exclude``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from .inject import LoraPlan, _excluded, add_lora, plan_lora

Rule = tuple[tuple[str, ...], str]
"""(layer type names such as ``"Linear"``, module-path pattern)."""


@dataclass(frozen=True)
class PresetTable:
    """A model family's presets (name -> rules) and its never-trained layers (path -> reason)."""

    presets: Mapping[str, Sequence[Rule]]
    unused: Mapping[str, str] = field(default_factory=dict)

    def plan(self, model: nn.Module | Mapping[str, nn.Module], preset: str, extra: Iterable[str] = (),
             exclude: Iterable[str] = (), r: int = 16) -> LoraPlan:
        """The layers a preset (plus `extra` patterns, minus `exclude`) selects on this model."""
        if preset not in self.presets:
            raise ValueError(f"unknown LoRA preset {preset!r}; choose one of {sorted(self.presets)}")
        rules = list(self.presets[preset]) + [((), pattern) for pattern in extra]
        excludes = list(exclude)
        plan = LoraPlan()
        for types, pattern in rules:  # `exclude` may empty a rule (not an error while other rules select)
            part = plan_lora(model, [*types, pattern], r=r)
            for layer in part.selected:
                if _excluded(layer.name, excludes):
                    continue
                if layer.name in self.unused:
                    skip = (layer.name, self.unused[layer.name])
                    if skip not in plan.skipped:
                        plan.skipped.append(skip)
                elif layer.name not in plan.names:
                    plan.selected.append(layer)
            plan.skipped += [s for s in part.skipped if s not in plan.skipped and not _excluded(s[0], excludes)]
        if not plan.selected:
            raise ValueError(f"preset {preset!r} selects no trainable layer on this model; skipped: {plan.skipped}")
        return plan

    def add(self, model: nn.Module | MutableMapping[str, nn.Module], preset: str, r: int = 16,
            alpha: float = 32, dropout: float = 0.0, extra: Iterable[str] = (), exclude: Iterable[str] = (),
            adapter_name: str = "default") -> list[str]:
        """Add LoRA to the layers of a preset, in place (a dict of modules too); returns their names."""
        names = self.plan(model, preset, extra, exclude, r).names
        add_lora(model, [f"^{re.escape(n)}$" for n in names], r=r, alpha=alpha, dropout=dropout,
                 adapter_name=adapter_name)
        return names
