"""OPT training on the shared loop: the per-epoch batch order, the learning-rate schedule, exact resume."""

from __future__ import annotations

import pytest
import torch
from transformers import OPTForCausalLM

from tts_bpeft import LaplacePrior, add_lora
from tts_bpeft.text import clm_loss, epoch_batches, fit, lm_loader, tiny_opt_config
from tts_bpeft.text.recipe import claim_output_dir
from tts_bpeft.training import linear_schedule

BLOCKS = torch.randint(3, 100, (18, 8), generator=torch.Generator().manual_seed(0))


def test_epoch_batches_give_the_consecutive_passes_of_the_loader():
    consecutive = lm_loader(BLOCKS, 1, 4, shuffle=True, seed=3)
    passes = [[b["input_ids"] for b in consecutive] for _ in range(3)]
    batches = epoch_batches(lm_loader(BLOCKS, 1, 4, shuffle=True, seed=3))
    for epoch in (2, 0, 1):  # any epoch, in any order (a resumed run starts in the middle)
        got = [b["input_ids"] for b in batches(epoch)]
        assert all(torch.equal(a, b) for a, b in zip(got, passes[epoch], strict=True))
    assert not torch.equal(passes[0][0], passes[1][0])  # the passes do differ


def test_linear_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = linear_schedule(optimizer, total_steps=10, warmup_ratio=0.2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # warm-up (step + 1) / 2 over 2 steps, then (10 - step) / 8
    assert rates == pytest.approx([2.0 * f for f in [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]])


def _model():
    torch.manual_seed(0)
    config = tiny_opt_config(100, hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32, max_positions=12)
    return add_lora(OPTForCausalLM(config), ["q_proj", "v_proj"], r=2, alpha=4)


def test_interrupted_fit_resumes_to_the_same_weights_and_history(tmp_path):
    """Stopped mid-epoch (after a checkpoint), rerun: the same weights as one uninterrupted run; the warm-up
    and decay restart where they were (the scheduler is checkpointed) and the per-epoch metrics are kept."""
    settings = dict(prior=LaplacePrior(None, lam=1.0, kind="l2sp"), lr=1e-2, epochs=3, warmup_ratio=0.3,
                    progress=False, checkpoint_every=2)

    def metric(model):
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        return lambda epoch: {"lora_norm": float(sum(p.detach().norm() for p in params))}

    whole = _model()
    reference = fit(whole, lm_loader(BLOCKS, 1, 4, shuffle=True, seed=1), clm_loss, tmp_path / "whole",
                    on_epoch_end=metric(whole), **settings)
    calls = {"n": 0}

    def stopping_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 9:  # the 4th batch of epoch 2 (5 batches an epoch); checkpoint at step 8
            raise KeyboardInterrupt
        return clm_loss(model, batch)

    first = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(first, lm_loader(BLOCKS, 1, 4, shuffle=True, seed=1), stopping_loss, tmp_path / "resumed",
            on_epoch_end=metric(first), **settings)
    again = _model()
    resumed = fit(again, lm_loader(BLOCKS, 1, 4, shuffle=True, seed=1), clm_loss, tmp_path / "resumed",
                  on_epoch_end=metric(again), **settings)
    for (name, a), b in zip(whole.named_parameters(), again.parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), name
    assert resumed["steps"] == reference["steps"] == 15
    assert [h["steps"] for h in resumed["history"]] == [5, 10, 15]
    for a, b in zip(reference["history"], resumed["history"], strict=True):
        assert a["lora_norm"] == pytest.approx(b["lora_norm"], rel=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["prior"] == pytest.approx(b["prior"], rel=1e-6)


def test_an_output_dir_with_a_checkpoint_of_other_settings_is_refused(tmp_path):
    settings = {"prior": {"kind": "kfac", "lam": 1.0}, "seed": 0}
    claim_output_dir(tmp_path, settings)
    claim_output_dir(tmp_path, settings)  # no checkpoint yet: any settings may take the folder
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    claim_output_dir(tmp_path, settings)  # the same settings resume
    with pytest.raises(ValueError, match=r"holds a run with other settings \(prior.lam, seed\)"):
        claim_output_dir(tmp_path, {"prior": {"kind": "kfac", "lam": 10.0}, "seed": 1})
