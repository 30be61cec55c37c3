"""PerSampleDraws: a sample's sampled targets do not depend on the batch it is in, nor on its padding."""

import pytest
import torch

from tts_bpeft.curvature import Gaussian, Laplace, PerSampleDraws, utterance_seed


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_draws_are_per_sample_and_ignore_trailing_padding(kind):
    torch.manual_seed(0)
    lengths = [5, 3, 4]
    mean = torch.randn(3, 5)
    mask = torch.arange(5) < torch.tensor(lengths)[:, None]

    def term(values, mask=None):
        if kind == "gaussian":
            return Gaussian(values, values, mask, sigma=0.5, reduction="mean")
        return Laplace(values, values, mask, scale=0.5, reduction="mean")

    seeds = [11, 12, 13]
    together = PerSampleDraws(term(mean, mask), seeds)  # padded batch
    alone = [PerSampleDraws(term(mean[i:i + 1, :n]), [seeds[i]]) for i, n in enumerate(lengths)]  # unpadded
    draws = []
    for _ in range(3):
        joint = together.sampled_nll()
        single = torch.cat([a.sampled_nll() for a in alone])
        torch.testing.assert_close(joint, single, rtol=1e-6, atol=0)
        draws.append(joint)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])  # draws differ
    # draw d of a sample is the wrapped term's draw at the generator seeded with utterance_seed(seed, d)
    plain = term(mean[1:2]).sampled_nll(torch.Generator().manual_seed(utterance_seed(12, 0)))
    torch.testing.assert_close(PerSampleDraws(term(mean[1:2]), [12]).sampled_nll(), plain)
    torch.testing.assert_close(together.nll(), term(mean, mask).nll())
