"""A new Kokoro voice on a small Kokoro-shaped model: the target-alignment forward, the objective against a
hand computation, self-replay examples against Kokoro's own synthesis, the replay mix, fine-tuning (loss
down, only LoRA and the style move, replay voices fixed), the outputs (the merged checkpoint speaks like the
adapted model in Kokoro's own KModel), exact resume, and the nearest initial voice."""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import short_durations
from kokoro_models import _one_thread, _quiet  # noqa: F401 (autouse fixtures)

from tts_bpeft.curvature import utterance_seed
from tts_bpeft.kokoro.architecture import REPO_ID, build_kmodel, kokoro_modules
from tts_bpeft.kokoro.examples import mean_objective, nearest_voice, recording_examples, replay_examples
from tts_bpeft.kokoro.finetune import Replay, VoiceBatches, VoiceStepLoss, VoiceTraining, finetune_voice
from tts_bpeft.kokoro.predict import collate, crop_frames_of, predict, seeded_source
from tts_bpeft.kokoro.presets import add_preset_lora
from tts_bpeft.kokoro.targets import FRAME, kokoro_render
from tts_bpeft.kokoro.voice import VoiceShift
from tts_bpeft.kokoro.voice_loss import VoiceObjective
from tts_bpeft.kokoro.voices import load_voicepack, style_row
from tts_bpeft.lora import load_adapter
from tts_bpeft.speech_data.records import Utterance

SENTENCES = ["hˈɛloʊ ðˈɛɹ.", "kwˈɪk bɹˈaʊn fˈɑks.", "ðə lˈeɪzi dˈɑɡ slˈiːps.", "wˈʌn tˈuː θɹˈiː fˈɔːɹ.",
             "ɡʊd mˈɔːɹnɪŋ.", "sˈiː jˈuː sˈuːn."]
CROP = 4
OBJECTIVE = VoiceObjective(crop_frames=CROP)


@pytest.fixture(scope="module")
def packs():
    g = torch.Generator().manual_seed(11)
    return {"a": 0.3 * torch.randn(510, 1, 256, generator=g), "b": 0.3 * torch.randn(510, 1, 256, generator=g)}


def fresh(model, config):
    """An independent copy of a KModel of `config` (same weights; deepcopy fails on weight-normed layers)."""
    copied = build_kmodel(copy.deepcopy(config))
    copied.load_state_dict(model.state_dict())
    return copied


@pytest.fixture(scope="module")
def teacher(varied_kmodel, small_config):
    """The "new speaker": the small model with its predictor's F0/N heads and decoder perturbed."""
    model = fresh(varied_kmodel, small_config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("decoder.generator.conv_post", "predictor.F0_proj", "predictor.N_proj")):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return short_durations(model, seed=4)


@pytest.fixture(scope="module")
def target_examples(teacher, packs):
    """Three utterances the teacher speaks with voice "b", as new-voice examples whose styles start at "a"."""
    records = [Utterance("", "b", f"s{i}", phonemes=SENTENCES[i]) for i in range(3)]
    spoken = replay_examples(teacher, {"b": packs["b"]}, records, progress=False)
    return [replace(e, new_voice=True, style=style_row(packs["a"], len(e.tokens) - 2).reshape(-1)) for e in spoken]


@pytest.fixture(scope="module")
def replay_set(varied_kmodel, packs):
    records = [Utterance("", "b", f"r{i}", phonemes=SENTENCES[3 + i]) for i in range(2)]
    return replay_examples(varied_kmodel, {"b": packs["b"]}, records, seed=1, progress=False)


def test_replay_example_is_kokoros_own_synthesis(varied_kmodel, packs):
    [example] = replay_examples(varied_kmodel, packs, [Utterance("", "a", "t", phonemes=SENTENCES[1])], seed=5,
                                progress=False)
    tokens = example.tokens
    style = style_row(packs["a"], len(SENTENCES[1]))
    torch.manual_seed(utterance_seed(utterance_seed(5, "a|t"), "source"))
    with torch.no_grad():
        audio, durations = varied_kmodel.forward_with_tokens(tokens[None], style, 1.0)
    assert torch.equal(example.targets.durations, durations.reshape(-1).long())
    assert example.targets.f0.shape == example.targets.energy.shape == (2 * int(durations.sum()),)
    peak = float(audio.abs().max())  # float32 rounding of packed vs unpacked LSTMs: ~1e-5 of the peak
    torch.testing.assert_close(example.audio, audio.reshape(-1), rtol=0, atol=1e-4 * peak)
    assert not example.new_voice and torch.equal(example.style, style.reshape(-1))


def test_target_alignment_drives_the_heads_and_the_decoder(varied_kmodel, target_examples):
    model = varied_kmodel
    batch = collate(target_examples, seed=3)
    with torch.no_grad():
        out = predict(model, batch, CROP, alignment="target")
    for b, example in enumerate(target_examples):  # by hand: the crop of the target alignment at the start
        owner = torch.repeat_interleave(torch.arange(len(example.tokens)), example.targets.durations)
        start = int(out.starts[b])
        assert 0 <= start <= len(owner) - CROP
        alignment = torch.zeros(1, len(example.tokens), CROP)
        alignment[0, owner[start:start + CROP], torch.arange(CROP)] = 1.0
        one = collate([example], seed=3)
        assert one.seeds == batch.seeds[b:b + 1]
        with torch.no_grad():
            single = predict(model, one, CROP, alignment="target")
            style = example.style[None]
            n = len(example.tokens)
            mask = torch.zeros(1, n, dtype=torch.bool)
            lengths = torch.tensor([n])
            d_en = model.bert_encoder(model.bert(example.tokens[None], attention_mask=torch.ones(1, n))).transpose(1, 2)
            d = model.predictor.text_encoder(d_en, style[:, 128:], lengths, mask)
            f0, energy = model.predictor.F0Ntrain(d.transpose(1, 2) @ alignment, style[:, 128:])
            asr = model.text_encoder(example.tokens[None], lengths, mask) @ alignment
            wanted_f0 = example.targets.f0[2 * start:2 * (start + CROP)][None]
            wanted_n = example.targets.energy[2 * start:2 * (start + CROP)][None]
            with seeded_source(model, one.seeds):
                audio = model.decoder(asr, wanted_f0, wanted_n, style[:, :128]).squeeze(1)
        torch.testing.assert_close(single.f0, f0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(single.energy, energy, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(single.audio, audio, rtol=1e-4, atol=1e-6)  # target F0/N went in
        torch.testing.assert_close(out.audio[b:b + 1], audio, rtol=1e-4, atol=1e-5)  # batch-independent
        torch.testing.assert_close(crop_frames_of(example.audio[None], out.starts[b:b + 1], CROP, FRAME),
                                   example.audio[None, FRAME * start:FRAME * (start + CROP)])


def test_objective_terms_match_a_hand_computation(varied_kmodel, target_examples):
    losses = pytest.importorskip("styletts2.losses")
    model = varied_kmodel
    batch = collate(target_examples, seed=2)
    with torch.no_grad():
        terms = OBJECTIVE.terms_of(model, batch)
        out = predict(model, batch, CROP, alignment="target")
    resolutions = losses.MultiResolutionSTFTLoss().stft_losses  # StyleTTS 2's own mel transforms
    for b, example in enumerate(target_examples):
        n, target = len(example.tokens), example.targets
        assert terms["duration"][b] == pytest.approx(
            float((out.durations[b, 1:n - 1] - target.durations[1:n - 1]).abs().mean()), rel=1e-5)
        logits = out.duration_logits[b, :n]
        steps = torch.zeros_like(logits)
        for t in range(n):  # StyleTTS 2's s2s target: the first d steps on
            steps[t, :target.durations[t]] = 1
        assert terms["duration_bce"][b] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, steps)),
                                                         rel=1e-5)
        start = int(out.starts[b])
        f0 = target.f0[2 * start:2 * (start + CROP)]
        assert terms["f0"][b] == pytest.approx(float((out.f0[b] - f0).abs().mean()), rel=1e-5)
        wave = example.audio[FRAME * start:FRAME * (start + CROP)][None]
        mels = [(((torch.log(1e-5 + r.to_mel(out.audio[b:b + 1])) + 4) / 4
                  - (torch.log(1e-5 + r.to_mel(wave)) + 4) / 4).abs().mean()) for r in resolutions]
        assert terms["mel"][b] == pytest.approx(float(torch.stack(mels).mean()), rel=1e-4)
    total = OBJECTIVE.total(terms)
    expected = terms["duration"] + 20 * terms["duration_bce"] + 0.1 * terms["f0"] + terms["energy"] + 5 * terms["mel"]
    torch.testing.assert_close(total, expected)
    with torch.no_grad():  # a sample's loss does not depend on its batch
        alone = torch.cat([OBJECTIVE.per_sample(model, collate([e], seed=2)) for e in target_examples])
    torch.testing.assert_close(alone, total, rtol=1e-4, atol=1e-5)


def test_replay_mix_keeps_the_fraction_and_the_step_budget(target_examples, replay_set):
    examples = target_examples + [replace(target_examples[0], key="extra")]
    replay = Replay(replay_set * 3, fraction=0.6)  # 6 replay examples, 4 targets -> 6 replay per epoch
    batches = VoiceBatches(examples, batch_size=3, seed=0, replay=replay, crop_frames=CROP)
    assert batches.replay_count() == 6
    for epoch in range(3):
        chosen = batches.epoch_examples(epoch)
        assert sum(e.new_voice for e in chosen) == 4 and len(chosen) == 10
        assert [e.key for e in chosen] == [e.key for e in batches.epoch_examples(epoch)]  # deterministic
        assert len(batches(epoch)) == 4 and [len(b.keys) for b in batches(epoch)] == [3, 3, 3, 1]
    assert [e.key for e in batches.epoch_examples(0)] != [e.key for e in batches.epoch_examples(1)]
    first, second = batches(0)[0], batches(1)[0]
    assert first.seeds != second.seeds or first.keys != second.keys  # crops are redrawn per epoch
    plain = VoiceBatches(examples, batch_size=3, seed=0)
    assert plain.replay_count() == 0 and len(plain.epoch_examples(0)) == 4
    with pytest.raises(ValueError, match="fewer aligned frames than a crop of 1000"):
        VoiceBatches(examples, 3, crop_frames=1000)
    with pytest.raises(ValueError, match="must speak the new voice"):
        VoiceBatches(replay_set, 3)


def adapted(model, config, seed=0):
    model = fresh(model, config)
    torch.manual_seed(seed)
    add_preset_lora(model, "design", r=2)
    return model


TRAINING = VoiceTraining(steps=6, batch_size=2, lr=2e-3, style_lr=2e-2, checkpoint_every=2, progress=False)


@pytest.fixture(scope="module")
def trained(varied_kmodel, target_examples, replay_set, packs, small_config, tmp_path_factory):
    model = adapted(varied_kmodel, small_config)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    before = mean_objective(model, target_examples, OBJECTIVE, seed=9)
    out = tmp_path_factory.mktemp("voice")
    result = finetune_voice(model, target_examples, packs["a"], out, TRAINING, OBJECTIVE,
                            replay=Replay(replay_set, 0.4), config=small_config)
    return model, result, before, base, out


def test_fine_tuning_lowers_the_target_loss_and_moves_only_lora_and_the_style(trained, target_examples, packs):
    model, result, before, base, out = trained
    after = mean_objective(model, target_examples, OBJECTIVE, seed=9, shifted=result.voice)
    assert after < 0.9 * before, (before, after)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())  # the base weights are untouched
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # every adapted layer learned
    assert result.voice.delta.abs().sum() > 0 and result.summary["steps"] == 6
    assert result.summary["replay_examples_per_epoch"] == 2  # round(3 * 0.4 / 0.6)
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and any(r["replay"] for r in rows) and any(r["target"] for r in rows)


def test_replay_examples_keep_their_fixed_voice(trained, replay_set, packs):
    model, result, *_ = trained
    voice = VoiceShift(packs["a"])
    with torch.no_grad():
        voice.delta.fill_(0.5)
    batch = collate(replay_set, seed=0)
    styles = voice.shifted(batch.styles, batch.new_voice)
    assert torch.equal(styles, batch.styles)  # built-in voices' rows are never shifted
    loss, values = VoiceStepLoss(model, voice, OBJECTIVE)(batch)
    loss.backward()
    assert voice.delta.grad is None or torch.count_nonzero(voice.delta.grad) == 0
    assert "replay" in values and "target" not in values
    model.zero_grad(set_to_none=True)


def test_outputs_and_the_merged_checkpoint_speaks_like_the_adapted_model(trained, packs, small_config):
    model, result, _, _, out = trained
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["adapter", "checkpoint.pt", "config.json", "kokoro-v1_0.pth", "log.csv", "summary.json", "voice.pt"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    pack = load_voicepack(out / "voice.pt")
    torch.testing.assert_close(pack, packs["a"] + result.voice.delta.detach())
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    kokoro = kokoro_modules().KModel(repo_id=REPO_ID, config=str(out / "config.json"),
                                     model=str(out / "kokoro-v1_0.pth")).eval()
    tokens = torch.tensor([[0, *(small_config["vocab"][p] for p in SENTENCES[4]), 0]])
    style = style_row(pack, len(SENTENCES[4]))
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        theirs, theirs_durations = kokoro.forward_with_tokens(tokens, style, 1.0)
        torch.manual_seed(1)
        ours, our_durations = model.forward_with_tokens(tokens, style, 1.0)
    assert torch.equal(theirs_durations, our_durations)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_resume_is_bit_exact(varied_kmodel, small_config, target_examples, replay_set, packs, tmp_path, monkeypatch):
    settings = replace(TRAINING, steps=4, checkpoint_every=1)
    run = dict(objective=OBJECTIVE, replay=Replay(replay_set, 0.4), export=False)
    whole = finetune_voice(adapted(varied_kmodel, small_config), target_examples, packs["a"], tmp_path / "whole",
                           settings, **run)

    step = VoiceStepLoss.__call__
    calls = []

    def killed_at_the_third_step(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies in the middle of an epoch
        return step(self, batch)

    monkeypatch.setattr(VoiceStepLoss, "__call__", killed_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        finetune_voice(adapted(varied_kmodel, small_config), target_examples, packs["a"], tmp_path / "cut",
                       settings, **run)
    monkeypatch.setattr(VoiceStepLoss, "__call__", step)
    torch.manual_seed(123)  # whatever the new process's random state, the checkpoint's is restored
    resumed_model = adapted(varied_kmodel, small_config)  # a new process: fresh model, state from checkpoint.pt
    resumed = finetune_voice(resumed_model, target_examples, packs["a"], tmp_path / "cut", settings, **run)
    assert resumed.summary["steps"] == 4
    assert torch.equal(resumed.voice.delta, whole.voice.delta)
    again = fresh(varied_kmodel, small_config)
    load_adapter(again, tmp_path / "whole" / "adapter")
    lora = {k: v for k, v in resumed_model.state_dict().items() if "lora_" in k}
    assert lora and all(torch.equal(v, again.state_dict()[k]) for k, v in lora.items())


def test_nearest_voice_is_the_one_that_spoke(varied_kmodel, packs, tmp_path):
    render = kokoro_render(varied_kmodel, packs["b"], seed=0)  # the seed recording_examples renders with
    records = []
    for i, phonemes in enumerate(SENTENCES[:2]):
        tokens = torch.tensor([0, *(varied_kmodel.vocab[p] for p in phonemes), 0])
        _, wave = render(tokens)
        sf.write(tmp_path / f"u{i}.wav", wave, 24000, subtype="FLOAT")
        (tmp_path / f"u{i}.txt").write_text(phonemes)
        records.append(Utterance(str(tmp_path / f"u{i}.wav"), "new", phonemes, phonemes=phonemes))
    name, scores = nearest_voice(varied_kmodel, packs, records, tmp_path / "cache", OBJECTIVE, count=2,
                                 progress=False)
    assert name == "b" and scores["b"] < scores["a"], scores
    examples = recording_examples(varied_kmodel, records, packs["b"], "b", tmp_path / "cache", progress=False)
    assert all(e.new_voice and e.key.startswith("new|u") for e in examples)
    assert sorted(p.name for p in (tmp_path / "cache" / "b").iterdir()) == ["u0.safetensors", "u1.safetensors"]
    for e in examples:  # the model's own rendering aligns to itself: its durations come back exactly
        np.testing.assert_array_equal(e.targets.durations.numpy(), render(e.tokens)[0])
        assert len(e.audio) == FRAME * e.targets.frames


def test_recording_errors_name_the_file(varied_kmodel, packs, tmp_path):
    sf.write(tmp_path / "short.wav", np.zeros(600 * 3, np.float32) + 0.1, 24000)
    record = Utterance(str(tmp_path / "short.wav"), "new", "long text", phonemes=SENTENCES[2])
    with pytest.raises(ValueError, match=r"short.wav: .*too short for its transcript"):
        recording_examples(varied_kmodel, [record], packs["a"], "a", tmp_path / "cache", progress=False)
