"""The capture's running sums: in place, in the statistics' precision, started by their first value."""

import torch

from tts_bpeft.curvature.calls import add_gram
from tts_bpeft.curvature.capture import LayerStatistics


def test_float32_gram_sums_stay_within_1e6_of_float64_over_10000_calls():
    torch.manual_seed(0)
    stats = LayerStatistics("linear", (128, 128))
    reference = torch.zeros(128, 128, dtype=torch.float64)
    for _ in range(10000):
        rows = torch.randn(16, 128) * (1 + 3 * torch.rand(1)) + 0.5  # a non-zero mean: entries of one sign add up
        stats.A_sum = add_gram(stats.A_sum, rows)
        reference.addmm_(rows.double().T, rows.double())
    assert stats.A_sum.dtype == torch.float32
    error = (stats.A_sum.double() - reference).norm() / reference.norm()
    assert error < 1e-5, error  # measured 1.4e-6


def test_the_first_value_starts_the_sum_and_later_ones_add_in_place():
    stats = LayerStatistics("linear", (3, 2), torch.float64)
    first = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    stats.A_sum = add_gram(stats.A_sum, first)
    started = stats.A_sum
    torch.testing.assert_close(started, first.T @ first)
    stats.A_sum = add_gram(stats.A_sum, 2 * first)
    assert stats.A_sum is started  # updated in place: no new tensor per call
    torch.testing.assert_close(started, 5 * first.T @ first)
    stats.add("diag_sum", torch.ones(3, 2, dtype=torch.float64))
    stats.add("diag_sum", torch.full((3, 2), 2.0, dtype=torch.float64))
    torch.testing.assert_close(stats.diag_sum, torch.full((3, 2), 3.0, dtype=torch.float64))
