"""The Kokoro comparison's bookkeeping (`tts_bpeft.kokoro.comparison`): settings checks, which runs are shared,
and equal-target-quality analysis, table and plot on results made by hand and checked by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from tts_bpeft.kokoro.comparison import (
    PLAIN,
    ComparisonSettings,
    analyse,
    budget,
    lines,
    markdown,
    plot,
    run_folder,
)
from tts_bpeft.selection import front_value


def test_front_value_interpolates_where_the_path_crosses_the_budget():
    path = [(1.0, 0.30), (1.1, 0.10), (1.3, 0.02)]
    assert front_value(path, 1.0) == pytest.approx(0.30)
    assert front_value(path, 1.05) == pytest.approx(0.20)  # halfway along the first segment
    assert front_value(path, 1.2) == pytest.approx(0.06)
    assert front_value(path, 2.0) == pytest.approx(0.02)
    assert front_value(path, 0.9) == math.inf


def test_settings_refuse_what_cannot_run():
    with pytest.raises(ValueError, match="systems"):
        ComparisonSettings(systems=("kfac",))
    with pytest.raises(ValueError, match="fisher"):
        ComparisonSettings(fisher="exact")
    with pytest.raises(ValueError, match="target sentences"):
        ComparisonSettings(train=190, heldout=20)
    targets, builtin = lines("target", 3), lines("builtin", 3)
    assert not {t.text for t in targets} & {b.text for b in builtin}


def test_runs_that_do_not_use_the_fisher_are_shared_between_fishers(tmp_path):
    free, empirical = ComparisonSettings(fisher="data-free"), ComparisonSettings(fisher="empirical")
    for system in (PLAIN, "l2sp", "replay"):
        assert run_folder(tmp_path, free, system, 1.0, 0) == run_folder(tmp_path, empirical, system, 1.0, 0)
    for system in ("ewc", "kfac", "kfac-damped", "kfac-bf16"):
        assert run_folder(tmp_path, free, system, 1.0, 0) != run_folder(tmp_path, empirical, system, 1.0, 0)
    damped_more = ComparisonSettings(damping=0.5)
    for system in ("kfac", "kfac-bf16"):  # only the damped system's runs depend on the damping
        assert run_folder(tmp_path, damped_more, system, 1.0, 0) == run_folder(tmp_path, empirical, system, 1.0, 0)
    assert run_folder(tmp_path, damped_more, "kfac-damped", 1.0, 0) != run_folder(tmp_path, empirical,
                                                                                  "kfac-damped", 1.0, 0)
    assert run_folder(tmp_path, free, "kfac", 1.0, 0) != run_folder(tmp_path, free, "kfac-bf16", 1.0, 0)
    assert run_folder(tmp_path, free, "kfac", 1.0, 0) != run_folder(tmp_path, free, "kfac", 1.0, 1)
    assert run_folder(tmp_path, free, "kfac", 1.0, 0) != run_folder(tmp_path, ComparisonSettings(steps=17), "kfac",
                                                                     1.0, 0)


def _run(system, strength, seed, objective, sim, target_sim=0.7):
    return {"system": system, "strength": strength, "seed": seed, "lam": strength * 10, "heldout_objective": objective,
            "builtin_SIM": sim, "builtin_WER": 0.1, "target_SIM": target_sim, "target_WER": 0.2,
            "folder": f"/runs/{system}-{strength}-{seed}"}


def test_budget_is_a_share_of_plain_loras_gain_over_the_original():
    original, plain = {"heldout_objective": 12.0, "target_SIM": 0.5}, {"heldout_objective": 10.0, "target_SIM": 0.7}
    assert budget(plain, original, "heldout_objective", False, 0.25) == pytest.approx(10.5)  # gain 2
    assert budget(plain, original, "target_SIM", True, 0.25) == pytest.approx(1 - 0.65)  # as a loss, 1 - SIM
    worse = {"heldout_objective": 13.0, "target_SIM": 0.4}  # plain LoRA lost: no slack
    assert budget(worse, original, "heldout_objective", False, 0.25) == pytest.approx(13.0)


def test_systems_are_compared_at_equal_target_quality(tmp_path):
    results = {
        "settings": {"seeds": [0, 1]},
        "original": {"run": "original", "heldout_objective": 12.0, "builtin_SIM": 1.0, "builtin_WER": 0.1,
                     "target_SIM": 0.5, "target_WER": 0.2},
        "runs": [_run(PLAIN, 0.0, 0, 10.0, 0.80), _run(PLAIN, 0.0, 1, 10.0, 0.84),
                 _run("kfac", 0.1, 0, 10.2, 0.90, 0.68), _run("kfac", 1.0, 0, 11.0, 0.98, 0.60),
                 _run("kfac", 0.1, 1, 10.8, 0.94, 0.70), _run("kfac", 1.0, 1, 12.0, 0.99, 0.50)],
    }
    rows = {r["system"]: r for r in analyse(results, tolerance=0.25)}
    # objective budget 10 + 0.25 * 2 = 10.5. seed 0: past 0.1 (10.2, 0.90) towards 1.0 (11.0, 0.98):
    # 0.90 + 0.08 * 0.3 / 0.8 = 0.93. seed 1: from plain (10.0, 0.84) towards 0.1 (10.8, 0.94): 0.84 + 0.10 * 0.5
    # / 0.8 = 0.9025.
    front = rows["kfac"]["builtin_SIM_at_budget"]["objective"]
    assert front["mean"] == pytest.approx((0.93 + 0.9025) / 2)
    assert front["sd"] == pytest.approx(abs(0.93 - 0.9025) / math.sqrt(2))
    # target SIM budget: at least 0.7 - 0.25 * 0.2 = 0.65. seed 0: past 0.1 (0.68, 0.90) towards 1.0 (0.60, 0.98):
    # 0.90 + 0.08 * 0.03 / 0.08 = 0.93. seed 1: past 0.1 (0.70, 0.94) towards 1.0 (0.50, 0.99): 0.94 + 0.05 / 4.
    by_sim = rows["kfac"]["builtin_SIM_at_budget"]["target SIM"]
    assert by_sim["mean"] == pytest.approx((0.93 + 0.9525) / 2)
    assert rows["kfac"]["selected_strength"] == [0.1, 0.0]  # seed 1: no strength within budget, plain LoRA
    assert rows["kfac"]["builtin_SIM"]["mean"] == pytest.approx((0.90 + 0.84) / 2)
    assert rows[PLAIN]["builtin_SIM_at_budget"]["objective"]["mean"] == pytest.approx(0.82)
    table = markdown(results, list(rows.values()), 0.25)
    assert "| kfac | 0.916 ± 0.019 | 0.941 ± 0.016 | 0.1, 0 |" in table
    assert "keeps at least 75% of plain LoRA's gain" in table
    assert table.count("\n| kfac |") == 5  # the comparison row and the four runs
    png = plot(results, tmp_path / "tradeoff.png", 0.25)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_benchmark_tables_each_fisher_at_each_measure_of_target_quality():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from forgetting_kokoro import fisher_table

    def analysis(ewc_objective, ewc_sim):
        stats = {"objective": {"mean": ewc_objective, "sd": 0.01, "n": 2},
                 "target SIM": {"mean": ewc_sim, "sd": 0.02, "n": 2}}
        return {"analysis": [{"system": "ewc", "builtin_SIM_at_budget": stats},
                             {"system": "kfac-bf16", "builtin_SIM_at_budget": stats}]}

    table = fisher_table({"data-free": analysis(0.95, 0.94), "empirical": analysis(0.97, 0.93)})
    assert table.splitlines()[0] == (
        "| prior | built-in SIM at equal objective, data-free Fisher | built-in SIM at equal objective, empirical "
        "Fisher | built-in SIM at equal target SIM, data-free Fisher | built-in SIM at equal target SIM, empirical "
        "Fisher |")
    assert "| ewc | 0.950 ± 0.010 | 0.970 ± 0.010 | 0.940 ± 0.020 | 0.930 ± 0.020 |" in table
    assert "| kfac-bf16 | 0.950 ± 0.010 | 0.970 ± 0.010 | 0.940 ± 0.020 | 0.930 ± 0.020 |" in table
    assert "| kfac |" not in table  # a row only for the priors that ran
