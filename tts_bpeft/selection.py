"""Choosing the prior's strength (lam, and mu for a mixed prior) for a tolerance instead of guessing it.

The rule. A *trial* fine-tunes with one ``(lam, mu)`` and measures two validation numbers, both lower =
better: the fine-tuning metric (loss or perplexity on a validation split of the fine-tuning data) and the
forgetting metric (the same on a held-out slice of pre-training data). Plain LoRA (``lam = 0``) sets the
budget ``(1 + tolerance) * plain.finetune``; the chosen trial is, among those within the budget, the one
with the lowest forgetting metric (plain LoRA itself when no prior trial fits).

The search (`select_strength`). For each ``mu``: from ``lam0``, lam is multiplied (or divided) by
`factor` until the budget is crossed, then the crossing is bisected `steps` times in log space (the
fine-tuning metric grows with lam). Trials are appended to a JSON log after each fit, so an interrupted
search resumes without refitting.

Comparing prior kinds at equal cost (`equal_cost_lam`). The raw quadratics of L2-SP, EWC, KFAC and EKFAC at
one weight shift differ by orders of magnitude, so one lam means something different for each. Without a
search per kind, lam can be set so that every prior charges the same ``cost`` (nats of mean per-sample loss,
``scaling="package"``) at one reference shift, usually plain LoRA's solution: ``lam = cost / q(dW_ref)``.
It needs one plain-LoRA fit and one penalty evaluation per prior; it is not a tolerance rule (the demo uses
it to rank priors at one price; choose lam for a tolerance with `select_strength`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from .curvature.storage import Curvature
from .io import save_json
from .prior import LaplacePrior


@dataclass(frozen=True)
class Trial:
    """One fine-tuning run: its prior strength and its validation metrics (lower = better)."""

    lam: float
    mu: float
    finetune: float
    forgetting: float


def within_budget(trial: Trial, plain: Trial, tolerance: float) -> bool:
    return trial.finetune <= (1.0 + tolerance) * plain.finetune


def pick(trials: Sequence[Trial], plain: Trial, tolerance: float) -> Trial:
    """The trial with the lowest forgetting metric among those within ``(1 + tolerance) * plain.finetune``
    (`plain` when none is)."""
    feasible = [t for t in trials if within_budget(t, plain, tolerance)]
    return min(feasible, key=lambda t: (t.forgetting, -t.lam)) if feasible else plain


def equal_cost_lam(model: nn.Module | Mapping[str, nn.Module], kind: str, curvature: Curvature | None = None,
                   cost: float = 1.0) -> float:
    """The lam at which the prior `kind` (``curvature`` for ewc, kfac, ekfac; package scaling) charges `cost`
    at the LoRA weight shift now in `model`: ``cost / q(dW)`` (see the module docstring).

    Raises:
        ValueError: when ``q(dW)`` is not positive (e.g. the adapters are still at their zero initialisation).
    """
    quadratic = float(LaplacePrior(curvature, lam=1.0, kind=kind, scaling="package").penalty(model))
    if not quadratic > 0:
        raise ValueError(f"the {kind} prior's quadratic at this model's LoRA shift is {quadratic}; equal_cost_lam "
                         "needs a trained adapter (a non-zero shift)")
    return cost / quadratic


def front_value(path: Sequence[tuple[float, float]], budget: float) -> float:
    """The lowest forgetting metric on a piecewise-linear path of ``(finetune, forgetting)`` points (ordered by
    strength, from plain LoRA on) whose fine-tuning metric is <= `budget`: at the points, and where a segment
    crosses the budget, linearly interpolated (inf when no point of the path is within budget)."""
    best = math.inf
    for (x0, y0), (x1, y1) in zip(path, [*path[1:], path[-1]]):
        for x, y in ((x0, y0), (x1, y1)):
            if x <= budget:
                best = min(best, y)
        if (x0 - budget) * (x1 - budget) < 0:  # the segment crosses the budget
            best = min(best, y0 + (y1 - y0) * (budget - x0) / (x1 - x0))
    return best


@dataclass
class StrengthSelection:
    """The outcome of `select_strength`: the chosen trial, plain LoRA, and every trial run."""

    chosen: Trial
    plain: Trial
    trials: list[Trial]
    tolerance: float

    def table(self) -> str:
        """The trials as a markdown table (the chosen one marked)."""
        budget = (1 + self.tolerance) * self.plain.finetune
        lines = [f"budget: fine-tuning metric <= {budget:.4g} ({1 + self.tolerance:g} x plain LoRA's "
                 f"{self.plain.finetune:.4g})", "",
                 "| lam | mu | fine-tuning metric | forgetting metric | within budget | chosen |",
                 "|---|---|---|---|---|---|"]
        for t in [self.plain] + sorted(self.trials, key=lambda t: (t.mu, t.lam)):
            lines.append(f"| {t.lam:.4g} | {t.mu:g} | {t.finetune:.4g} | {t.forgetting:.4g} | "
                         f"{'yes' if within_budget(t, self.plain, self.tolerance) else 'no'} | "
                         f"{'**yes**' if t == self.chosen else ''} |")
        return "\n".join(lines)


class _TrialLog:
    """Trials by (lam, mu), read from and appended to a JSON file (atomically) when a path is given."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.trials: dict[tuple[float, float], Trial] = {}
        if self.path is not None and self.path.is_file():
            try:
                rows = json.loads(self.path.read_text())["trials"]
                for row in rows:
                    trial = Trial(**row)
                    self.trials[(trial.lam, trial.mu)] = trial
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.path}: not a trial log written by select_strength ({error})") from error

    def run(self, fit: Callable[[float, float], tuple[float, float]], lam: float, mu: float) -> Trial:
        key = (float(lam), float(mu))
        if key not in self.trials:
            finetune, forgetting = fit(*key)
            if not (math.isfinite(finetune) and math.isfinite(forgetting)):
                raise ValueError(f"fit(lam={lam:g}, mu={mu:g}) returned non-finite metrics "
                                 f"({finetune}, {forgetting})")
            self.trials[key] = Trial(key[0], key[1], float(finetune), float(forgetting))
            if self.path is not None:
                save_json({"trials": [asdict(t) for t in self.trials.values()]}, self.path)
        return self.trials[key]


def select_strength(fit: Callable[[float, float], tuple[float, float]], tolerance: float, lam0: float = 1.0,
                    mus: Sequence[float] = (0.0,), factor: float = 10.0, steps: int = 3, max_expansions: int = 6,
                    log: str | os.PathLike | None = None,
                    report: Callable[[str], None] | None = print) -> StrengthSelection:
    """Search lam (for each of `mus`) for the least forgetting within `tolerance` (see the module docstring).

    `fit(lam, mu)` fine-tunes with that prior and returns ``(finetune_metric, forgetting_metric)`` on
    validation data; ``fit(0, 0)`` is plain LoRA. `tolerance` is relative (0.02: at most 2% above plain
    LoRA's fine-tuning metric). Costs 1 + len(mus) * (about 2 + `steps`) fits; `log` (a JSON path) keeps them.
    """
    if tolerance < 0 or lam0 <= 0 or factor <= 1 or steps < 0:
        raise ValueError(f"need tolerance >= 0, lam0 > 0, factor > 1, steps >= 0 (got {tolerance}, {lam0}, "
                         f"{factor}, {steps})")
    trials = _TrialLog(log)

    def run(lam: float, mu: float) -> Trial:
        trial = trials.run(fit, lam, mu)
        if report is not None and lam:
            state = "within" if within_budget(trial, plain, tolerance) else "over"
            report(f"lam={lam:.4g} mu={mu:g}: fine-tuning {trial.finetune:.4g} ({state} budget), "
                   f"forgetting {trial.forgetting:.4g}")
        return trial

    plain = trials.run(fit, 0.0, 0.0)
    for mu in mus:
        lam = lam0
        inside = within_budget(run(lam, mu), plain, tolerance)
        low, high = (lam, None) if inside else (None, lam)
        for _ in range(max_expansions):  # bracket the budget crossing
            if low is not None and high is not None:
                break
            lam = lam * factor if inside else lam / factor
            inside = within_budget(run(lam, mu), plain, tolerance)
            if inside:  # moving up, each lam within budget is the largest yet; moving down, the first
                low = lam
            else:
                high = lam
        if low is None or high is None:
            continue  # no crossing within the expansions: the extreme trial is already logged
        for _ in range(steps):  # bisect in log space
            lam = math.sqrt(low * high)
            if within_budget(run(lam, mu), plain, tolerance):
                low = lam
            else:
                high = lam
    ran = [t for key, t in trials.trials.items() if key != (0.0, 0.0)]
    selection = StrengthSelection(pick(ran, plain, tolerance), plain, ran, tolerance)
    if report is not None:
        report(selection.table())
    return selection
