"""Issue 17, item 3: bad numbers are refused at start-up with a message naming them, and a loss that turns
non-finite stops training at that step, naming the terms, with the last good checkpoint kept."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from tts_bpeft import LaplacePrior, add_lora
from tts_bpeft.prior import load_prior
from tts_bpeft.training import CHECKPOINT_NAME, TrainSettings, train


def adapted() -> nn.Module:
    torch.manual_seed(0)
    return add_lora(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), ["0", "2"], r=2)


@pytest.mark.parametrize(("option", "value"), [
    ("lam", -1000.0), ("lam", math.nan), ("lam", math.inf), ("damping", math.nan), ("damping", -0.1),
    ("mu", math.nan), ("mu", -1.0)])
def test_prior_strengths_are_validated(option, value):
    options = {"lam": 1.0, "mix": "l2sp", "mu": 0.5} if option == "mu" else {"lam": 1.0}
    options[option] = value
    method = "kfac" if option == "damping" else "l2sp"
    with pytest.raises(ValueError, match=rf"prior {option} = {value!r}: must be a finite number >= 0"):
        if method == "l2sp":
            LaplacePrior(kind="l2sp", **options)
        else:
            load_prior(adapted(), "kfac", curvature="no-such-file.safetensors", **options)


def test_a_per_layer_lam_is_validated():
    with pytest.raises(ValueError, match=r"prior lam_per_layer\['0'\] = -5.0"):
        LaplacePrior(kind="l2sp", lam=1.0, lam_per_layer={"0": -5.0})


def test_load_prior_checks_numbers_before_reading_the_curvature_file(tmp_path):
    # the file does not exist: the bad lam must be reported first, before any (large) file is read
    with pytest.raises(ValueError, match=r"prior lam = nan"):
        load_prior(adapted(), "kfac", lam=math.nan, curvature=tmp_path / "absent.safetensors")


@pytest.mark.parametrize("options", [{"epochs": 0}, {"grad_accum": 0}, {"max_steps": -3}, {"checkpoint_every": 0},
                                     {"max_grad_norm": math.nan}, {"max_grad_norm": -1.0}])
def test_training_settings_are_validated(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=rf"training setting {name} = "):
        TrainSettings(**options)


def regression(tmp_path, bad_batch=None, bad_prior_step=None):
    """A linear regression trained on 6 batches, one optimizer step each; `bad_batch` holds a NaN input;
    the prior is NaN from optimizer step `bad_prior_step` on."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    xs, ys = torch.randn(6, 4, 3), torch.randn(6, 4, 1)
    if bad_batch is not None:
        xs[bad_batch, 0, 0] = math.nan
    calls = []

    def step_loss(batch):
        mse = ((model(batch[0]) - batch[1]) ** 2).mean()
        return mse, {"mse": float(mse), "scale": float(batch[0].abs().mean())}

    def penalty():
        calls.append(1)
        return torch.tensor(math.nan) if bad_prior_step and len(calls) >= bad_prior_step else (model.weight ** 2).sum()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    settings = TrainSettings(epochs=1, checkpoint_every=1, progress=False)
    return model, lambda: train(dict(model.named_parameters()), optimizer, lambda epoch: list(zip(xs, ys)),
                                step_loss, tmp_path, settings, penalty=penalty)


def test_a_nan_loss_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model, run = regression(tmp_path, bad_batch=3)
    with pytest.raises(FloatingPointError, match=r"non-finite \{'loss': nan, 'mse': nan, 'scale': nan\} at step 4 "
                                                 r"\(epoch 0, batch 3\).*keeps step 3"):
        run()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["position"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with open(tmp_path / "log.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_a_nan_prior_stops_the_run_naming_the_prior(tmp_path):
    _, run = regression(tmp_path, bad_prior_step=2)
    with pytest.raises(FloatingPointError, match=r"non-finite \{'prior': nan\} at step 2 .*keeps step 1"):
        run()
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["position"]["step"] == 1


@pytest.mark.parametrize("lr", [math.nan, -0.1, math.inf])
def test_bad_learning_rates_are_refused_before_the_first_step(tmp_path, lr):
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.param_groups[0]["lr"] = lr  # as a config value would arrive (torch checks only lr < 0 itself)
    with pytest.raises(ValueError, match=rf"optimizer parameter group 0: lr = {lr!r} must be finite and >= 0"):
        train(dict(model.named_parameters()), optimizer, lambda epoch: [(torch.ones(2, 3), torch.ones(2, 1))],
              lambda b: (((model(b[0]) - b[1]) ** 2).mean(), {}), tmp_path, TrainSettings(progress=False))
    assert not (tmp_path / CHECKPOINT_NAME).exists()
