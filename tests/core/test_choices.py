"""String options: one enum per option, parsed once with an error that lists the choices."""

import json

import pytest
import torch

from tts_bpeft import CurvatureMethod, PriorKind, estimate_curvature


def test_members_are_their_strings_in_configs_json_and_messages():
    kind = PriorKind.parse("ekfac", "prior kind")
    assert kind is PriorKind.EKFAC and kind == "ekfac" and str(kind) == "ekfac" and f"{kind}" == "ekfac"
    assert json.dumps({"kind": kind}) == '{"kind": "ekfac"}'
    assert PriorKind.parse(PriorKind.KFAC, "prior kind") is PriorKind.KFAC


def test_a_bad_value_names_the_option_and_every_choice():
    with pytest.raises(ValueError, match=r"^method must be one of 'kfac', 'ekfac', 'ewc'; got 'fisher'$"):
        CurvatureMethod.parse("fisher", "method")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    batches = [(torch.randn(4, 3), torch.randn(4, 2))]

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum(1)

    with pytest.raises(ValueError, match=r"fisher must be one of 'empirical', 'mc'; got 'mcmc'"):
        estimate_curvature(model, batches, loss_fn, fisher="mcmc", targets=["0"], progress=False)
    curvature = estimate_curvature(model, batches, loss_fn, method="ewc", targets=["0"], progress=False)
    assert type(curvature.method) is str and curvature.method == "ewc"  # plain strings in the file header
