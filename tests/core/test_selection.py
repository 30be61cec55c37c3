"""select_strength and pick on a synthetic trade-off whose budget crossing is known in closed form."""

from __future__ import annotations

import math

import pytest

from tts_bpeft.selection import Trial, equal_cost_lam, pick, select_strength


class TradeOff:
    """finetune = 1 + c(mu) * lam / (1 + lam), forgetting = 2 - lam / (1 + lam) - 0.3 mu; counts fits."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    @staticmethod
    def cost(mu: float) -> float:
        return 0.1 / (1 + mu)  # mixing in mu makes the same lam cheaper for the fine-tuning metric

    def __call__(self, lam: float, mu: float) -> tuple[float, float]:
        self.calls.append((lam, mu))
        share = lam / (1 + lam)
        return 1 + self.cost(mu) * share, 2 - share - 0.3 * mu

    def crossing(self, tolerance: float, mu: float) -> float:
        """The lam where finetune = (1 + tolerance) * 1."""
        share = tolerance / self.cost(mu)
        return share / (1 - share)


def test_select_strength_finds_the_budget_crossing_and_the_better_mu(tmp_path):
    fit = TradeOff()
    selection = select_strength(fit, tolerance=0.02, lam0=1.0, mus=(0.0, 1.0), steps=6, report=None,
                                log=tmp_path / "trials.json")
    assert selection.plain == Trial(0.0, 0.0, 1.0, 2.0)
    # mu = 1 halves the cost: its crossing (lam = 0.667) forgets less than mu = 0's (lam = 0.25)
    assert selection.chosen.mu == 1.0
    exact = fit.crossing(0.02, 1.0)
    assert exact / 10 ** (1 / 2**6) <= selection.chosen.lam <= exact  # the bisection's resolution, from below
    assert selection.chosen.finetune <= 1.02
    assert all(t.finetune <= 1.02 or t.lam > exact for t in selection.trials if t.mu == 1.0)
    assert "**yes**" in selection.table()
    # a rerun with the log fits nothing again
    calls = len(fit.calls)
    again = select_strength(fit, tolerance=0.02, lam0=1.0, mus=(0.0, 1.0), steps=6, report=None,
                            log=tmp_path / "trials.json")
    assert len(fit.calls) == calls and again.chosen == selection.chosen


def test_a_budget_no_prior_meets_keeps_plain_lora():
    fit = TradeOff()
    selection = select_strength(fit, tolerance=0.0, lam0=1.0, max_expansions=2, report=None)
    assert selection.chosen == selection.plain
    assert min(t.lam for t in selection.trials) == pytest.approx(0.01)  # lam0 / factor^2


def test_a_loose_budget_takes_the_strongest_prior_tried():
    fit = TradeOff()
    selection = select_strength(fit, tolerance=0.5, lam0=1.0, max_expansions=3, report=None)
    assert selection.chosen.lam == pytest.approx(1000.0)


def test_pick_prefers_least_forgetting_within_budget():
    plain = Trial(0, 0, 10.0, 5.0)
    trials = [Trial(1, 0, 10.1, 4.0), Trial(10, 0, 10.4, 3.0), Trial(3, 0.1, 10.19, 3.5)]
    assert pick(trials, plain, 0.02) == Trial(3, 0.1, 10.19, 3.5)
    assert pick(trials, plain, 0.05) == Trial(10, 0, 10.4, 3.0)
    assert pick(trials, plain, 0.0) == plain


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        select_strength(lambda lam, mu: (math.nan, 1.0), tolerance=0.1, report=None)
    bad = tmp_path / "trials.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="trials.json: not a trial log"):
        select_strength(TradeOff(), tolerance=0.1, log=bad, report=None)
    with pytest.raises(ValueError, match="tolerance >= 0"):
        select_strength(TradeOff(), tolerance=-0.1, report=None)


def test_equal_cost_lam_makes_every_prior_cost_the_same_at_the_reference_shift():
    import torch
    from torch import nn

    from tts_bpeft import LaplacePrior, add_lora, estimate_curvature

    torch.manual_seed(0)
    model = add_lora(nn.Sequential(nn.Linear(4, 3)), ["0"], r=2, alpha=4)
    with pytest.raises(ValueError, match="needs a trained adapter"):
        equal_cost_lam(model, "l2sp")  # B = 0: no shift yet
    with torch.no_grad():
        model[0].lora_B["default"].weight.normal_()
    dW = 2.0 * model[0].lora_B["default"].weight @ model[0].lora_A["default"].weight  # alpha / r = 2
    assert equal_cost_lam(model, "l2sp", cost=3.0) == pytest.approx(3.0 / float((dW**2).sum()), rel=1e-5)
    x = torch.randn(8, 4)
    kfac = estimate_curvature(model, [(x, torch.randn(8, 3))], lambda m, b: ((m(b[0]) - b[1]) ** 2).sum(1),
                              progress=False)
    lam = equal_cost_lam(model, "kfac", kfac, cost=3.0)
    assert float(LaplacePrior(kfac, lam=lam, kind="kfac", scaling="package").penalty(model)) == pytest.approx(3.0)
