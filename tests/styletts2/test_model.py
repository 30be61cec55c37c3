"""Tests of tts_bpeft.styletts2.build, .checkpoints, .device_safe and .inventory: CPU-safe wrappers, small
modules, checkpoints, the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import small_modules as small
import torch
from munch import Munch
from styletts2.models import StyleEncoder
from styletts2.Modules.discriminators import MultiResSpecDiscriminator, WavLMDiscriminator
from styletts2.Utils.ASR.models import ASRCNN
from tiny_model import AUX_SEED, aux_modules, tiny_model, write_aux_checkpoints
from torch import nn

from tts_bpeft.styletts2 import build, inventory
from tts_bpeft.styletts2 import checkpoints as ckpt
from tts_bpeft.styletts2 import device_safe as ds
from tts_bpeft.styletts2.losses import eval_mode


def test_smooth_randomly_is_a_moving_average_with_a_torch_drawn_width():
    curve = torch.randn(2, 40, dtype=torch.float64)
    widths = (3, 7)
    for seed in range(4):
        torch.manual_seed(seed)
        width = widths[int(torch.randint(len(widths), ()))]
        torch.manual_seed(seed)
        out = ds.smooth_randomly(curve, widths)
        expected = np.stack([np.convolve(c, np.ones(width), mode="same") / width for c in curve.numpy()])
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
    assert ds.smooth_randomly(curve, (0,)) is curve


def test_style_encoder_warm_up_and_short_input_error():
    torch.manual_seed(0)
    raw = StyleEncoder(dim_in=8, style_dim=16, max_conv_dim=32).eval()
    mel = torch.randn(1, 1, 80, 96)
    assert raw(mel).abs().max() > 1e6  # the trap: random spectral norm in eval mode
    encoder = small.small_style_encoder().eval()
    out = encoder(mel)
    assert out.shape == (1, 16) and out.abs().max() < 10
    with pytest.raises(ValueError, match="T >= 80"):
        encoder(torch.randn(1, 1, 80, 79))


def test_spec_discriminator_runs_on_cpu_after_make_device_safe():
    y, y_hat = torch.randn(1, 1, 4800), torch.randn(1, 1, 4800)
    torch.manual_seed(0)
    reference = MultiResSpecDiscriminator()
    with pytest.raises(RuntimeError, match="Device index"):
        reference(y, y_hat)
    torch.manual_seed(0)
    msd = MultiResSpecDiscriminator()
    ds.make_device_safe(Munch(msd=msd))
    real, fake, fmap_real, _ = msd(y, y_hat)
    assert len(real) == 3 and all(torch.isfinite(r).all() for r in real)
    # Same value as the original computation with the window handed over by hand.
    spec = reference.discriminators[0]
    window = spec.window
    spec.window = type("W", (), {"to": lambda self, _: window})()
    ref_out, _ = spec(y)
    torch.testing.assert_close(real[0], ref_out)


def test_aligner_backward_in_eval_mode_after_make_device_safe():
    torch.manual_seed(0)
    aligner = ASRCNN(input_dim=80, hidden_dim=32, n_token=178, n_layers=1, token_embedding_dim=32).eval()
    mel, tokens = torch.randn(1, 80, 40), torch.randint(1, 178, (1, 6))
    mask = torch.zeros(1, 20, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="inplace operation"):
        aligner(mel, mask, tokens)[0].sum().backward()
    ds.make_device_safe(Munch(text_aligner=aligner))
    torch.manual_seed(1)
    ctc, s2s, attn = aligner(mel, mask, tokens)
    (ctc.sum() + s2s.sum()).backward()
    assert all(p.grad is not None for p in aligner.cnns.parameters())


def test_text_encoder_ignores_padding():
    enc = small.small_text_encoder(channels=32).eval()
    tokens = torch.tensor([[5, 9, 14, 3, 0, 0], [7, 2, 8, 11, 4, 6]])
    lengths = torch.tensor([4, 6])
    mask = torch.arange(6)[None] >= lengths[:, None]
    out = enc(tokens, lengths, mask)
    alone = enc(tokens[:1, :4], lengths[:1], mask[:1, :4])
    torch.testing.assert_close(out[:1, :, :4], alone, atol=1e-6, rtol=1e-5)
    assert out[0, :, 4:].abs().max() == 0


def test_small_prosody_predictor_and_albert_shapes():
    predictor = small.small_prosody_predictor(style_dim=16, d_hid=32).eval()
    bert = small.small_albert(hidden_size=32).eval()
    tokens = torch.randint(1, 178, (1, 7))
    features = bert(tokens, attention_mask=torch.ones(1, 7, dtype=torch.int64))
    assert features.shape == (1, 7, 32)
    alignment = torch.zeros(1, 7, 20)
    alignment[0, torch.arange(7), torch.arange(7) * 2] = 1
    duration, en = predictor(
        features.transpose(1, 2),
        torch.randn(1, 16),
        torch.tensor([7]),
        alignment,
        torch.zeros(1, 7, dtype=torch.bool),
    )
    assert duration.shape == (1, 7, 50) and en.shape == (1, 48, 20)
    f0, n = predictor.F0Ntrain(en, torch.randn(1, 16))
    assert f0.shape == (1, 40) and n.shape == (1, 40)


def test_small_diffusion_denoises_to_identity_at_tiny_sigma():
    diffusion = small.small_diffusion(style_dim=16, embedding_features=32).eval()
    x = torch.randn(2, 1, 32) * 0.2
    embedding, features = torch.randn(2, 5, 32), torch.randn(2, 32)
    denoised = diffusion.diffusion.denoise_fn(x, sigma=1e-4, embedding=embedding, features=features)
    torch.testing.assert_close(denoised, x, atol=1e-3, rtol=0)
    loss = diffusion(x, embedding=embedding, features=features)
    assert loss.dim() == 0 and torch.isfinite(loss)


def small_munch(seed: int) -> Munch:
    torch.manual_seed(seed)
    return Munch(
        text_encoder=small.small_text_encoder(channels=16, depth=1, seed=seed),
        bert_encoder=nn.Linear(8, 4),
        wd=WavLMDiscriminator(8, 2, 4),
    )


def assert_same_weights(a: Munch, b: Munch, names=None):
    for name in names or a:
        for (k, v), (k2, v2) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert k == k2
            torch.testing.assert_close(v, v2, rtol=0, atol=0)


@pytest.mark.parametrize("prefix", [True, False])
def test_checkpoint_round_trip(tmp_path, prefix):
    source, target = small_munch(1), small_munch(2)
    path = ckpt.save_checkpoint(source, tmp_path / "epoch_2nd_00001.pth", prefix=prefix, epoch=3, iters=7)
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == ["epoch", "iters", "net", "optimizer", "val_loss"]
    assert all(k.startswith("module.") == prefix for k in raw["net"]["text_encoder"])
    assert not any(k.startswith("module.") for k in raw["net"]["wd"])
    assert not list(tmp_path.glob("*.tmp"))
    meta = ckpt.load_checkpoint(target, path)
    assert meta["epoch"] == 3 and meta["iters"] == 7
    assert_same_weights(source, target)


def test_checkpoint_subset_and_strict_errors(tmp_path):
    source = small_munch(1)
    net = {
        name: {("" if name == "wd" else "module.") + k: v for k, v in source[name].state_dict().items()}
        for name in source
    }
    del net["text_encoder"]["module.lstm.weight_hh_l0"]
    net["bert_encoder"]["module.extra.weight"] = torch.zeros(1)
    first_wd_key = next(iter(net["wd"]))
    net["wd"][first_wd_key] = torch.zeros(3)
    torch.save({"net": net, "optimizer": {}, "iters": 0, "val_loss": 0.0, "epoch": 0}, tmp_path / "bad.pth")
    target = small_munch(2)
    before = small_munch(2)
    with pytest.raises(ckpt.CheckpointMismatchError) as err:
        ckpt.load_checkpoint(target, tmp_path / "bad.pth")
    message = str(err.value)
    assert "bad.pth" in message
    assert "module 'text_encoder': missing keys (1) [lstm.weight_hh_l0]" in message
    assert "module 'bert_encoder': unexpected keys (1) [extra.weight]" in message
    assert f"module 'wd': shape of {first_wd_key}: checkpoint (3,)" in message
    assert_same_weights(before, target)  # nothing loaded
    # A subset without the broken modules loads.
    good = {"net": {"text_encoder": {f"module.{k}": v for k, v in source.text_encoder.state_dict().items()}}}
    torch.save(good, tmp_path / "part.pth")
    with pytest.raises(ckpt.CheckpointMismatchError, match="module 'wd' is not in the checkpoint"):
        ckpt.load_checkpoint(target, tmp_path / "part.pth")
    ckpt.load_checkpoint(target, tmp_path / "part.pth", modules=["text_encoder"])
    assert_same_weights(source, target, ["text_encoder"])
    assert_same_weights(before, target, ["bert_encoder", "wd"])
    with pytest.raises(FileNotFoundError):
        ckpt.load_checkpoint(target, tmp_path / "none.pth")


def test_aux_checkpoints_load_from_official_layouts(tmp_path):
    files = aux_modules(seed=7)
    paths = write_aux_checkpoints(tmp_path, files)
    fresh = aux_modules(seed=8)
    ckpt.load_asr_checkpoint(fresh["asr"], paths["asr"])
    ckpt.load_pitch_checkpoint(fresh["pitch"], paths["pitch"])
    ckpt.load_plbert_checkpoint(fresh["plbert"], paths["plbert"])
    for kind in files:
        assert_same_weights(Munch(m=files[kind]), Munch(m=fresh[kind]))
    with pytest.raises(ckpt.CheckpointMismatchError, match="no 'model' entry"):
        ckpt.load_asr_checkpoint(fresh["asr"], paths["pitch"])
    torch.save(
        {"net": {"module.encoder.embeddings.word_embeddings.weight": torch.zeros(2, 2)}}, tmp_path / "b.t7"
    )
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"b.t7 \(PL-BERT\).*missing keys"):
        ckpt.load_plbert_checkpoint(fresh["plbert"], tmp_path / "b.t7")


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        build.load_config(tmp_path / "missing.yml")
    (tmp_path / "x.yml").write_text("a: 1\n")
    with pytest.raises(ValueError, match="model_params"):
        build.load_config(tmp_path / "x.yml")
    with pytest.raises(ValueError, match="unknown aux checkpoint kinds"):
        build.build_styletts2(build.TINY_CONFIG, aux_checkpoints={"bert": "x"})


def test_tiny_build_smoke():
    model = tiny_model()
    assert set(build.MODULE_NAMES) == set(model)
    for name in ("text_encoder", "decoder", "diffusion", "predictor"):
        assert name in model
    total = sum(build.count_parameters(model).values())
    assert 95e6 < total < 110e6
    assert isinstance(model.decoder, ds.IstftnetDecoder)
    assert isinstance(model.style_encoder, ds.CheckedStyleEncoder)
    # Aux models came from the files the helper wrote (weights drawn with AUX_SEED), not from the build's own draw.
    from tiny_model import AUX_FILES

    expected = aux_modules(AUX_SEED)
    ckpt.load_asr_checkpoint(expected["asr"], AUX_FILES["asr"])
    ckpt.load_pitch_checkpoint(expected["pitch"], AUX_FILES["pitch"])
    ckpt.load_plbert_checkpoint(expected["plbert"], AUX_FILES["plbert"])
    assert_same_weights(
        Munch(a=expected["asr"], p=expected["pitch"], b=expected["plbert"]),
        Munch(a=model.text_aligner, p=model.pitch_extractor, b=model.bert),
    )
    fresh = build.build_styletts2(build.TINY_CONFIG)  # the build's own draw differs from the files
    assert not torch.equal(fresh.text_aligner.state_dict()["init_cnn.conv.weight"],
                           model.text_aligner.state_dict()["init_cnn.conv.weight"])
    with torch.no_grad(), eval_mode(model.style_encoder):
        assert model.style_encoder(torch.randn(1, 1, 80, 80)).abs().max() < 10
    assert model.style_encoder.training


def test_layer_table_on_tiny_build():
    model = tiny_model()
    assert set(inventory.generator_module_names()) <= set(model)
    rows = inventory.layer_table(model)
    assert {r.module for r in rows} == set(inventory.generator_module_names())
    by_key = {(r.module, r.layer, r.detail): r for r in rows}
    assert by_key[("text_encoder", "LSTM", "-")].count == 1
    assert by_key[("bert_encoder", "Linear", "-")].params == 64 * 512 + 512
    assert by_key[("decoder", "ConvTranspose1d", "k=3 s=2 g=1090 wn")].count == 1
    assert by_key[("decoder", "Conv1d", "k=3 s=1 d=3 g=1 wn")].count == 2
    n_linear = sum(isinstance(m, nn.Linear) for m in model.diffusion.modules())
    assert by_key[("diffusion", "Linear", "-")].count == n_linear
    assert "decoder" in inventory.format_layer_table(rows)


@pytest.mark.slow
def test_decoder_train_mode_on_cpu():
    decoder = tiny_model().decoder
    asr, f0, n, s = torch.randn(1, 512, 40), torch.rand(1, 80) * 200, torch.randn(1, 80), torch.randn(1, 16)
    with torch.no_grad():
        out = decoder(asr, f0, n, s)
    assert out.shape == (1, 1, 80 * 300) and torch.isfinite(out).all()
    assert decoder.training
    decoder.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        a = decoder(asr, f0, n, s)
        torch.manual_seed(0)
        torch.testing.assert_close(decoder(asr, f0, n, s), a)
    decoder.train()


@pytest.mark.slow
def test_list_layers_cli(capsys):
    inventory.main(["--list-layers", "--config", str(build.TINY_CONFIG)])
    out = capsys.readouterr().out
    assert "decoder" in out and "ConvTranspose1d" in out and "parameters per module" in out
