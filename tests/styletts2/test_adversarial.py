"""The official fine-tuning objective's adversarial side: discriminator steps, WavLM terms, the schedule,
differentiable durations, and the curvature's refusal of every adversarial or WavLM term."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from styletts2.losses import DiscriminatorLoss
from tiny_model import random_batch, tiny_model

from tts_bpeft.family import TTSModel
from tts_bpeft.styletts2 import losses as L
from tts_bpeft.styletts2.adversarial import Discriminators, Segment
from tts_bpeft.styletts2.build import GENERATOR_MODULES, TINY_CONFIG, build_tiny_styletts2, load_config
from tts_bpeft.styletts2.curvature import styletts2_loss_fn
from tts_bpeft.styletts2.family import StyleTTS2Family
from tts_bpeft.styletts2.presets import add_preset_lora
from tts_bpeft.styletts2.slm import load_slm, slm_discriminator_loss
from tts_bpeft.styletts2.slm_generation import GenerationSettings, soft_alignment

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = load_config(TINY_CONFIG)
DISCRIMINATORS = ("mpd", "msd", "wd")



@pytest.fixture
def model():
    """The shared tiny model; the discriminators' weights are put back afterwards."""
    model = tiny_model()
    saved = {k: {n: v.clone() for n, v in model[k].state_dict().items()} for k in DISCRIMINATORS}
    yield model
    for k in DISCRIMINATORS:
        model[k].load_state_dict(saved[k])
        model[k].requires_grad_(False)


@pytest.fixture(scope="module")
def slm():
    return load_slm(CONFIG["model_params"]["slm"], tiny=True)


def segments(seed: int, n: int = 2, samples: int = 2400, generated: bool = False) -> list[Segment]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        real, fake = (torch.randn(1, samples, generator=g) * 0.1 for _ in range(2))
        fake.requires_grad_(True)  # as a generator's output
        extra = {}
        if generated:
            extra = {"generated": torch.randn(1, samples, generator=g) * 0.1,
                     "generated_real": torch.randn(1, samples, generator=g) * 0.1}
        out.append(Segment(real=real, fake=fake, **extra))
    return out


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_soft_alignment_is_the_original_grouped_convolution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g) * 2
    sigma = 1.5
    ours = soft_alignment(logits, sigma)
    # the original: Gaussians h (L, T) around T - centre, convolved per token (groups = L) with the logits
    durations = torch.sigmoid(logits).sum(-1)
    frames = int(torch.round(durations.sum()))
    centres = torch.cumsum(durations, 0) - durations / 2
    t = torch.arange(frames).unsqueeze(0).expand(5, frames)
    h = torch.exp(-0.5 * torch.square(t - (frames - centres.unsqueeze(-1))) / sigma**2)
    scores = F.conv1d(logits.unsqueeze(0), h.unsqueeze(1), padding=frames - 1, groups=5)[..., :frames]
    torch.testing.assert_close(ours, F.softmax(scores.squeeze(0), dim=0), rtol=1e-5, atol=1e-6)
    assert ours.shape == (5, frames)
    torch.testing.assert_close(ours.sum(0), torch.ones(frames))
    logits.requires_grad_(True)
    soft_alignment(logits, sigma)[2].sum().backward()
    assert logits.grad.abs().sum() > 0  # durations are differentiable


def test_generation_settings_from_the_official_keys():
    official = GenerationSettings.from_config({})
    assert (official.min_len, official.max_len, official.sig, official.iter) == (400, 500, 1.5, 10)
    tiny = GenerationSettings.from_config(CONFIG, {"iter": 3, "sig": None})
    assert (tiny.min_len, tiny.max_len, tiny.sig, tiny.iter) == (40, 60, 1.5, 3)
    with pytest.raises(ValueError, match="unknown slmadv settings"):
        GenerationSettings.from_config(CONFIG, {"min_length": 3})


def test_discriminator_step_trains_mpd_and_msd_and_nothing_else(model):
    disc = Discriminators(model)
    batch = segments(0)
    expected = torch.stack([DiscriminatorLoss(model.mpd, model.msd)(s.real.unsqueeze(1), s.fake.detach().unsqueeze(1))
                            for s in batch]).mean()
    before = {k: flat(model[k]) for k in (*DISCRIMINATORS, "decoder")}
    out = disc.step(batch)
    torch.testing.assert_close(torch.tensor(out["d_loss"]), expected.detach(), rtol=1e-5, atol=1e-6)
    assert set(out) == {"d_loss"}
    for key in ("mpd", "msd"):
        assert (flat(model[key]) - before[key]).abs().max() > 0, key
        assert not any(p.requires_grad for p in model[key].parameters())  # frozen again for the generator
    for key in ("wd", "decoder"):
        torch.testing.assert_close(flat(model[key]), before[key], rtol=0, atol=0)
    assert all(s.fake.grad is None for s in batch)  # the generated side was detached
    group = disc.optimizers["mpd"].param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-4, (0.0, 0.99), 1e-9, 1e-4)
    assert not disc.step(batch, gan=False)  # gen off: nothing trains


def test_wavlm_discriminator_trains_every_iter_steps_from_the_slm_term(model, slm):
    disc = Discriminators(model, slm, slm_every=2)
    batch = segments(1, generated=True)
    wd_before = flat(model.wd)
    assert not disc.step(batch, gan=False, slm=False)
    assert not disc.step(batch, gan=False, slm=True)  # first active call: not its turn
    torch.testing.assert_close(flat(model.wd), wd_before, rtol=0, atol=0)
    expected = torch.stack([slm_discriminator_loss(slm, model.wd, s.generated_real, s.generated) for s in batch]).mean()
    out = disc.step(batch, gan=False, slm=True)
    torch.testing.assert_close(torch.tensor(out["d_slm"]), expected.detach(), rtol=1e-5, atol=1e-6)
    assert (flat(model.wd) - wd_before).abs().max() > 0
    assert not any(p.requires_grad for p in model.wd.parameters())


def test_discriminator_state_resumes_exactly(model, slm):
    disc = Discriminators(model, slm, slm_every=1)
    disc.step(segments(2, n=1, generated=True), slm=True)
    buffer = io.BytesIO()
    torch.save(disc.state_dict(), buffer)
    after_one = {k: flat(model[k]) for k in DISCRIMINATORS}
    disc.step(segments(3, n=1, generated=True), slm=True)
    continued = {k: flat(model[k]) for k in DISCRIMINATORS}

    fresh = Discriminators(model, slm, slm_every=1)  # a new process: weights rewound, optimizers empty
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for k in DISCRIMINATORS:
        torch.testing.assert_close(flat(model[k]), after_one[k], rtol=0, atol=0)
    assert fresh.calls == 1 and fresh.optimizers["msd"].state_dict()["state"]
    fresh.step(segments(3, n=1, generated=True), slm=True)
    for k in DISCRIMINATORS:
        torch.testing.assert_close(flat(model[k]), continued[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="slmadv term was switched"):
        Discriminators(model).load_state_dict(disc.state_dict())


def test_curvature_never_takes_adversarial_or_wavlm_terms(slm):
    finetune_terms = ("mel", "f0", "gen", "slm", "slmadv")  # as the fine-tuning config's loss.terms
    objective = L.GeneratorObjective(tiny_model(), CONFIG, terms=finetune_terms, slm=slm)
    with pytest.raises(ValueError, match=r"\['gen', 'slm', 'slmadv'\] are scored by discriminators or WavLM"):
        styletts2_loss_fn(objective)
    family_model = TTSModel("styletts2", tiny_model(), {"config": "tiny"}, CONFIG)
    with pytest.raises(ValueError, match=r"\['gen'\]"):
        StyleTTS2Family().per_sample_loss(family_model, terms=("mel", "gen"))  # the curvature recipes' path
    likelihood = L.GeneratorObjective(tiny_model(), CONFIG, terms=("f0", "dur"))
    loss = styletts2_loss_fn(likelihood)(tiny_model(), random_batch([84], [5], seed=3))
    assert loss.shape == (1,) and torch.isfinite(loss).all()


def test_wavlm_terms_need_the_wavlm():
    with pytest.raises(ValueError, match="need the WavLM"):
        L.GeneratorObjective(tiny_model(), CONFIG, terms=("mel", "slm"))


def lora_b(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters() if ".lora_B." in f".{n}"]


@pytest.mark.slow
def test_each_term_reaches_the_generator_lora_and_slmadv_waits_for_joint_epoch(slm):
    model = build_tiny_styletts2(seed=3)
    for key in GENERATOR_MODULES:
        model[key].requires_grad_(False)
    add_preset_lora(model, "paper", r=4, alpha=8)
    for key in GENERATOR_MODULES:
        model[key].train()
    objective = L.GeneratorObjective(model, CONFIG, terms=("mel", "gen", "slm", "slmadv"), slm=slm, joint_epoch=1)
    disc = Discriminators(model, slm, slm_every=1)
    batch = random_batch([96], [5], seed=5)
    decoder, duration = lora_b(model.decoder), lora_b(model.predictor.duration_proj)
    assert decoder and duration

    def grad_norm(term: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
        grads = torch.autograd.grad(term.sum(), params, retain_graph=True, allow_unused=True)
        return sum(float(g.abs().sum()) for g in grads if g is not None)

    mpd_before = flat(model.mpd)
    before = objective(batch, seeds=[7], epoch=0, discriminators=disc)
    assert set(before.discriminator) == {"d_loss"}  # mpd and msd trained; wd not before joint_epoch
    assert (flat(model.mpd) - mpd_before).abs().max() > 0
    assert before.terms["slmadv"].item() == 0 and not before.terms["slmadv"].requires_grad
    torch.testing.assert_close(before.total, sum(objective.weights[t] * before.terms[t] for t in ("mel", "gen", "slm")))
    for name in ("gen", "slm"):
        assert before.terms[name].item() > 0
        assert grad_norm(before.terms[name], decoder) > 0, name  # the adversarial terms reach the decoder LoRA
        assert grad_norm(before.terms[name], duration) == 0, name  # reconstruction uses the true durations

    after = objective(batch, seeds=[7], epoch=1, discriminators=disc)
    assert set(after.discriminator) == {"d_loss", "d_slm"}
    assert after.terms["slmadv"].item() > 0
    assert grad_norm(after.terms["slmadv"], duration) > 0  # predicted, differentiable durations
    assert grad_norm(after.terms["slmadv"], decoder) == 0  # as the original: the SLM step leaves the decoder
    after.total.sum().backward()
    for key in DISCRIMINATORS:  # the generator's backward pass leaves the discriminators alone
        assert all(p.grad is None for p in model[key].parameters()), key
