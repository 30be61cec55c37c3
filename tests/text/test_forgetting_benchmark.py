"""The forgetting benchmark's analysis: fronts, families chosen on validation, replay paths, the default lam's
ratio, and the lam extension."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from forgetting_opt import budget_ranges, default_ratio, extensions, seed_front, spread  # noqa: E402

from tts_bpeft.selection import front_value as front  # noqa: E402

# (news ratio, wiki ppl) ordered by lam, starting at plain LoRA
PATH = [(1.0, 120.0), (1.02, 114.0), (1.10, 110.0), (1.30, 105.0)]


def test_front_interpolates_the_segment_that_crosses_the_budget():
    assert front(PATH, 1.0) == 120.0
    assert front(PATH, 1.01) == pytest.approx(117.0)  # halfway along the first segment
    assert front(PATH, 1.06) == pytest.approx(112.0)
    assert front(PATH, 1.30) == 105.0 and front(PATH, 2.0) == 105.0


def test_front_takes_the_best_point_within_budget_on_a_non_monotone_path():
    # noise: the strongest lam came out cheaper on news than a weaker one
    path = [(1.0, 120.0), (1.05, 112.0), (1.03, 111.0)]
    assert front(path, 1.04) == 111.0
    assert front(path, 1.02) == pytest.approx(120.0 - 8.0 * 0.02 / 0.05)  # first segment only
    assert front([(1.0, 118.0), (0.99, 117.5)], 1.0) == 117.5  # a run better than plain on both axes


def _run(prior, seed, news_val, wiki_val, news_test, wiki_test, lam=0.0, replay=0.0, world="0:w"):
    return {"prior": prior, "seed": seed, "lam": lam, "replay": replay, "world": world, "news_val": news_val,
            "wiki_val": wiki_val, "news_test": news_test, "wiki_test": wiki_test}


def test_a_family_member_is_chosen_on_validation_and_reported_on_test():
    plain = _run("none", 0, 100.0, 120.0, 100.0, 120.0)
    # at budget 1.05: on validation kfac reaches 110, kfac-damped 112 -> kfac is chosen, although on the test
    # split kfac-damped (105) is lower than kfac (111): the family reports kfac's 111, not the minimum 105
    rows = [plain, _run("kfac", 0, 105.0, 110.0, 105.0, 111.0, lam=1.0),
            _run("kfac-damped", 0, 105.0, 112.0, 105.0, 105.0, lam=1.0)]
    assert seed_front(rows, "kfac or kfac-damped", plain, 1.05) == 111.0
    assert seed_front(rows, "kfac-damped", plain, 1.05) == 105.0
    # replay's path is ordered by its replayed share, and other worlds' runs are not on this world's path
    rows += [_run("replay", 0, 102.0, 115.0, 102.0, 114.0, replay=0.1),
             _run("replay", 0, 101.0, 110.0, 101.0, 110.0, replay=0.1, world="0:other")]
    assert seed_front(rows, "replay", plain, 1.02) == 114.0


def test_default_ratio_interpolates_in_log_lam_and_budget_ranges_join_neighbours():
    plain = _run("none", 0, 100.0, 120.0, 100.0, 120.0)
    runs = [_run("kfac", 0, 0, 0, 101.0, 0, lam=0.1), _run("kfac", 0, 0, 0, 105.0, 0, lam=10.0)]
    assert default_ratio(runs, plain, 1.0) == pytest.approx(1.03)  # halfway in log lam
    assert default_ratio(runs, plain, 10.0) == pytest.approx(1.05)
    assert default_ratio(runs, plain, 100.0) is None
    assert budget_ranges([1.01, 1.02, 1.03, 1.05, 1.2]) == "1.01-1.03, 1.05, 1.20"


def test_a_lam_path_is_extended_until_it_reaches_the_pretrained_model():
    args = argparse.Namespace(priors=["ewc", "kfac"], seeds=[0], reach=0.1, extend_factor=10.0, max_lam=1e4,
                              budgets=[1.0, 1.3])
    pretrained = {"wiki_val": 105.0, "wiki_test": 104.0}
    rows = [_run("none", 0, 100.0, 118.0, 100.0, 118.0),
            _run("ewc", 0, 118.0, 107.0, 118.0, 106.0, lam=1000.0),     # still 2 above: extend to 1e4
            _run("kfac", 0, 122.0, 105.05, 122.0, 104.05, lam=1000.0)]  # within 0.1 on both splits: done
    assert extensions(rows, pretrained, args) == [("ewc", 1e4, 0, 0.0)]
    rows.append(_run("ewc", 0, 119.0, 106.0, 119.0, 105.0, lam=1e4))
    assert extensions(rows, pretrained, args) == []  # the next lam would pass --max-lam


def test_spread_pools_worlds_on_the_lams_every_world_and_seed_ran():
    rows = []
    for world, shift in (("0:a", 0.0), ("0:b", 2.0)):
        for seed in (0, 1):
            rows += [_run("none", seed, 100.0, 120.0 + shift, 100.0, 120.0 + shift, world=world),
                     _run("l2sp", seed, 110.0, 110.0 + shift, 110.0, 110.0 + shift + seed, lam=1.0, world=world)]
    rows.append(_run("l2sp", 0, 105.0, 100.0, 105.0, 100.0, lam=0.5, world="0:a"))  # not run everywhere: left out
    cell = spread(rows, ["0:a", "0:b"], argparse.Namespace(budgets=[1.1]).__dict__)["l2sp"]["1.1"]
    assert cell["0:a"] == {"mean": 110.5, "sd": pytest.approx(0.5**0.5)}
    assert cell["pooled"]["mean"] == pytest.approx(111.5)  # 110, 111, 112, 113
