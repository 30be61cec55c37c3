"""PerSampleDraws: a sample's sampled targets do not depend on the batch it is in."""

import pytest
import torch

from tts_bpeft.curvature import Gaussian, Laplace, PerSampleDraws


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_draws_are_per_sample_and_advance(kind):
    torch.manual_seed(0)
    mean, mask = torch.randn(3, 5), torch.arange(5) < torch.tensor([[5], [3], [4]])

    def term(rows):
        if kind == "gaussian":
            return Gaussian(mean[rows], mean[rows], mask[rows], sigma=0.5, reduction="mean")
        return Laplace(mean[rows], mean[rows], mask[rows], scale=0.5, reduction="mean")

    seeds = [11, 12, 13]
    together = PerSampleDraws(term([0, 1, 2]), seeds)
    alone = [PerSampleDraws(term([i]), [seeds[i]]) for i in range(3)]
    for _ in range(2):  # the second draw differs from the first, equally in both batchings
        joint = together.sampled_nll()
        single = torch.cat([a.sampled_nll() for a in alone])
        torch.testing.assert_close(joint, single, rtol=0, atol=0)
    assert not torch.equal(PerSampleDraws(term([0]), [11]).sampled_nll(), joint[:1])  # second != first draw
    # the NLL of a single draw is that of the wrapped term at its own generator (same noise, same formula)
    plain = term([1]).sampled_nll(torch.Generator().manual_seed(12))
    torch.testing.assert_close(PerSampleDraws(term([1]), [12]).sampled_nll(), plain)
    torch.testing.assert_close(together.nll(), term([0, 1, 2]).nll())
