"""Tests of tts_bpeft.styletts2.losses: term values, per-utterance independence, one training step."""

from __future__ import annotations

import math

import pytest
import torch
from styletts2.losses import MultiResolutionSTFTLoss
from tiny_model import random_batch, sub_batch, tiny_model

from tts_bpeft.styletts2 import losses as L
from tts_bpeft.styletts2.build import GENERATOR_MODULES, TINY_CONFIG, build_tiny_styletts2, load_config
from tts_bpeft.styletts2.loss_terms import duration_terms, mel_convergence, monotonic_alignment

NO_DECODER = ("f0", "norm", "dur", "ce", "diff", "sty", "mono", "s2s")


def set_mode(model, training: bool):
    for module in model.values():
        module.train(training)


def joint_and_alone(model, objective, batch, seeds):
    """The objective in eval mode (no dropout) on the whole batch and on each utterance alone, with the
    same per-utterance seeds."""
    set_mode(model, False)
    try:
        with torch.no_grad():
            joint = objective(batch, seeds=seeds)
            alone = [objective(sub_batch(batch, i), seeds=[seed]) for i, seed in enumerate(seeds)]
    finally:
        set_mode(model, True)
    return joint, alone


def test_mel_convergence_matches_the_official_loss_for_one_utterance():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 24000, generator=g) * 0.1
    prediction = target + torch.randn(1, 24000, generator=g) * 0.05
    official = MultiResolutionSTFTLoss()
    ours, mels = mel_convergence(prediction, target, official.stft_losses)
    torch.testing.assert_close(ours, official(prediction, target), rtol=1e-5, atol=1e-6)
    assert [m[0].shape[1] for m in mels] == [128, 128, 128]
    assert mels[1][0].shape[-1] == 24000 // 240 + 1
    zero, _ = mel_convergence(target, target, official.stft_losses)
    assert zero == 0


def test_monotonic_alignment_gives_every_frame_one_token():
    g = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn(2, 5, 12, generator=g), dim=1)
    path = monotonic_alignment(attention)
    assert path.shape == (2, 5, 12)
    assert (path.sum(1) == 1).all() and (path.sum(2) >= 1).all()
    token_of_frame = path.argmax(1)
    assert (token_of_frame.diff(dim=1) >= 0).all() and (token_of_frame[:, 0] == 0).all()
    assert (token_of_frame[:, -1] == 4).all()
    diagonal = torch.zeros(1, 3, 6)
    diagonal[0, 0, :1] = diagonal[0, 1, 1:5] = diagonal[0, 2, 5:] = 1.0
    torch.testing.assert_close(monotonic_alignment(diagonal * 0.9 + 0.05), diagonal)
    with pytest.raises(ValueError, match="at least as many aligned frames as tokens"):
        monotonic_alignment(torch.rand(1, 7, 6))


def test_duration_terms_by_hand():
    logits = torch.zeros(4, 5)
    durations = torch.tensor([1.0, 2.0, 3.0, 4.0])
    dur, ce, expected = duration_terms(logits, durations)
    torch.testing.assert_close(expected, torch.full((4,), 2.5))
    torch.testing.assert_close(dur, torch.tensor(0.5))  # tokens 1 and 2 only: |2.5-2|, |2.5-3|
    torch.testing.assert_close(ce, torch.tensor(math.log(2.0)))
    logits = torch.full((3, 4), -30.0)
    logits[:, :2] = 30.0  # confident "duration 2" for every token
    dur, ce, _ = duration_terms(logits, torch.tensor([2.0, 2.0, 2.0]))
    assert dur < 1e-6 and ce < 1e-6


def test_loss_weights_and_term_validation():
    weights = L.loss_weights({"loss_params": {"lambda_mel": 2.0, "lambda_ce": 10}}, {"sty": 0.5})
    assert weights["mel"] == 2.0 and weights["ce"] == 10.0 and weights["sty"] == 0.5 and weights["dur"] == 1.0
    assert L.loss_weights()["mel"] == 5.0 and L.loss_weights()["ce"] == 20.0
    with pytest.raises(ValueError, match="unknown loss term 'wavlm'"):
        L.loss_weights(None, {"wavlm": 1.0})
    assert L.loss_weights({"loss_params": {"lambda_slm": 0.5}})["slm"] == 0.5
    with pytest.raises(ValueError, match="unknown"):
        L.GeneratorObjective(tiny_model(), terms=("mel", "wavlm"))


def test_terms_are_per_utterance_without_the_decoder():
    model = tiny_model()
    objective = L.GeneratorObjective(model, load_config(TINY_CONFIG), terms=NO_DECODER)
    joint, alone = joint_and_alone(model, objective, random_batch([84, 92], [6, 9], seed=1), seeds=[11, 12])
    assert set(joint.terms) == set(NO_DECODER)
    for name, values in joint.terms.items():
        assert values.shape == (2,) and torch.isfinite(values).all(), name
        for i in range(2):
            torch.testing.assert_close(values[i], alone[i].terms[name][0], rtol=1e-5, atol=1e-5)
    expected_total = sum(objective.weights[n] * joint.terms[n] for n in NO_DECODER)
    torch.testing.assert_close(joint.total, expected_total)
    assert set(joint.predictions) == {"f0", "norm", "dur"}
    f0 = joint.predictions["f0"]
    # Decoder segment of utterance i: min(frames/2 - 1, 150) aligned frames = 2x that in mel frames.
    assert f0.prediction.shape == (2, 90) and f0.mask.sum(1).tolist() == [82, 90]
    dur = joint.predictions["dur"]
    assert dur.prediction.shape == (2, 9) and dur.mask.sum(1).tolist() == [4, 7]
    assert not dur.mask[0, 0] and not dur.mask[0, 5]
    # The duration target is the monotonic alignment: every aligned frame assigned to exactly one token.
    assert dur.target.sum(1).tolist() == [42.0, 46.0]


def test_short_utterance_is_refused_with_its_path():
    objective = L.GeneratorObjective(tiny_model(), terms=("dur",))
    with pytest.raises(ValueError, match=r"utterance 1 \(u1.wav\): 80 mel frames"):
        objective(random_batch([90, 80], [5, 5]))


@pytest.mark.slow
def test_all_terms_per_utterance_and_train_mode():
    model = tiny_model()
    terms = L.ALL_TERMS
    objective = L.GeneratorObjective(model, load_config(TINY_CONFIG), terms=terms)
    batch = random_batch([84, 92], [5, 7], seed=2)
    joint, alone = joint_and_alone(model, objective, batch, seeds=[5, 6])
    for name in terms:
        for i in range(2):
            torch.testing.assert_close(joint.terms[name][i], alone[i].terms[name][0], rtol=1e-5, atol=1e-5)
    mel = joint.predictions["mel_2048"]
    assert mel.prediction.shape[:2] == (2, 128) and not mel.target.requires_grad
    with torch.no_grad():
        trained = objective(batch)  # train mode: decoder smoothing and dropout on the CPU
    assert torch.isfinite(trained.total).all()


@pytest.mark.slow
def test_one_step_lowers_the_loss_on_a_fixed_batch():
    model = build_tiny_styletts2(seed=3)
    set_mode(model, False)
    objective = L.GeneratorObjective(model, load_config(TINY_CONFIG))
    batch = random_batch([84, 88], [5, 6], seed=4)
    params = [p for name in GENERATOR_MODULES for p in model[name].parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    before = objective(batch, seeds=[1, 2]).total.mean()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = objective(batch, seeds=[1, 2]).total.mean()
    assert after < before
