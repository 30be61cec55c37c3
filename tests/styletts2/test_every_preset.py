"""Every StyleTTS 2 LoRA preset runs, not just plans: on the tiny build, forward + backward reaches every
adapted layer, a small curvature estimate covers every adapted weight, one optimizer step moves only the
adapters, and the exported (merged) checkpoint gives the adapted model's losses."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from tts_bpeft.curvature import estimate_curvature
from tts_bpeft.family import DataOptions, family
from tts_bpeft.lora.targets import lora_targets
from tts_bpeft.speech_data.libritts import read_libritts
from tts_bpeft.styletts2.presets import PRESETS

OPTIONS = DataOptions(max_frames=84)
TERMS = ["mel", "f0", "norm", "dur", "ce", "diff"]  # every generator module is on the path of one of these


@pytest.fixture(scope="module")
def utterances(libritts_root):
    return read_libritts(libritts_root).utterances[:2]


def _lora_params(model) -> dict[str, torch.nn.Parameter]:
    return {f"{key}.{n}": p for key, module in model.net.items() for n, p in module.named_parameters()
            if ".lora_" in f".{n}"}


@pytest.mark.slow  # ~1-2 min per preset on 2 idle cores (decoder passes in training, curvature and export)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_estimates_steps_and_exports(preset, utterances, tmp_path) -> None:
    styletts2 = family("styletts2")
    model = styletts2.build({"config": "tiny"}, seed=0)
    names = styletts2.add_preset(model, preset, r=2, alpha=4)
    lora = _lora_params(model)
    torch.manual_seed(1)
    for name, param in lora.items():  # non-zero B, as after some training: the adapters change the output
        param.requires_grad_(True)
        if ".lora_B." in name:
            param.data.normal_(0, 0.05)
    assert names and lora

    # forward + backward: every adapted layer gets a gradient from the objective's terms
    batches = styletts2.training_batches(model, utterances, batch_size=1, seed=0, options=OPTIONS)
    step_loss = styletts2.training_loss(model, terms=TERMS, seed=0, options=OPTIONS)
    item = next(iter(batches(0)))
    loss, logged = step_loss(item)
    assert torch.isfinite(loss) and set(logged) == {"loss", *TERMS}
    loss.backward()
    no_grad = sorted({n.split(".lora_")[0] for n, p in lora.items()
                      if p.grad is None or not p.grad.abs().sum() > 0})
    assert not no_grad, f"{preset}: adapted layers without gradient: {no_grad}"
    base_grads = [n for key, m in model.net.items() for n, p in m.named_parameters()
                  if p.grad is not None and ".lora_" not in f".{n}"]
    assert not base_grads

    # one fine-tuning step moves the adapters and nothing else
    before = {n: p.detach().clone() for n, p in lora.items()}
    frozen = {k: v.clone() for k, v in model.net["decoder"].state_dict().items() if "lora_" not in k}
    torch.optim.AdamW(lora.values(), lr=1e-3).step()
    assert all(not torch.equal(before[n], p) for n, p in lora.items())
    assert all(torch.equal(v, model.net["decoder"].state_dict()[k]) for k, v in frozen.items())
    for p in lora.values():
        p.grad = None

    # curvature: a tiny KFAC estimate (one utterance) with finite, positive factors for every adapted weight
    loss_fn = styletts2.per_sample_loss(model, terms=TERMS, options=OPTIONS)
    curvature = estimate_curvature(model.net, styletts2.curvature_batches(model, utterances[:1], 1, 0, OPTIONS),
                                   loss_fn, method="kfac", progress=False)
    assert set(curvature.names) == set(lora_targets(model.net)) and curvature.samples == 1
    for name in curvature.names:
        for term in curvature.terms(name):
            assert all(torch.isfinite(f).all() for f in term.values()), name
            assert float(torch.diagonal(term["A"]).sum()) > 0 and float(torch.diagonal(term["G"]).sum()) > 0, name

    # export: the merged official checkpoint, loaded into a fresh build, gives the adapted model's losses
    path = styletts2.export(model, tmp_path / f"{preset}.pth")
    merged = styletts2.build({"config": "tiny", "checkpoint": str(path)}, seed=0)
    batch = next(iter(styletts2.curvature_batches(model, utterances[:1], 1, 0, OPTIONS)))
    eval_loss = styletts2.per_sample_loss(model, terms=TERMS, options=OPTIONS)
    merged_loss = styletts2.per_sample_loss(merged, terms=TERMS, options=OPTIONS)
    for m in (model, merged):
        m.eval()
    with torch.no_grad():
        adapted_value, merged_value = eval_loss(model.net, batch), merged_loss(merged.net, batch)
        # every LoRA layer inside the modules (model.modules() yields only the 13 top-level modules)
        layers = [layer for module in model.modules() for layer in module.modules() if isinstance(layer, LoraLayer)]
        assert len(layers) == len(names)
        for layer in layers:
            layer.enable_adapters(False)
        base_value = eval_loss(model.net, batch)
        for layer in layers:
            layer.enable_adapters(True)
    torch.testing.assert_close(merged_value, adapted_value, rtol=1e-4, atol=1e-4)
    # the adapters matter: removing them moves the loss far more than merging them does
    change, merge_error = (base_value - adapted_value).abs(), (merged_value - adapted_value).abs()
    assert (change > 1e-3).all() and (change > 5 * merge_error).all(), (change, merge_error)
