"""The hub release (hexgrad/Kokoro-82M) through huggingface_hub, from a local cache in the hub's own layout
with the hub offline; and Kokoro's checkpoint format."""

from __future__ import annotations

import json

import pytest
import torch

from tts_bpeft.kokoro.checkpoint import read_kokoro_checkpoint, save_kokoro_checkpoint

REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_official_checkpoint(model: torch.nn.Module, path) -> None:
    """``kokoro-v1_0.pth`` as released: top-level modules, inner keys with DataParallel's ``module.``."""
    parts = {name: {f"module.{k}": v.clone() for k, v in getattr(model, name).state_dict().items()}
             for name in ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")}
    torch.save(parts, path)


@pytest.fixture
def hub_cache(tmp_path, small_kmodel, small_config, monkeypatch):
    """A hub cache holding hexgrad/Kokoro-82M at REVISION (refs/main -> snapshot), hub offline."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    repo = tmp_path / "hub" / "models--hexgrad--Kokoro-82M"
    snapshot = repo / "snapshots" / REVISION
    (snapshot / "voices").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    (snapshot / "config.json").write_text(json.dumps(small_config))
    write_official_checkpoint(small_kmodel, snapshot / "kokoro-v1_0.pth")
    torch.manual_seed(3)
    torch.save(torch.randn(510, 1, 256), snapshot / "voices" / "af_test.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return snapshot


def test_the_hub_release_loads_from_the_offline_cache(hub_cache, small_kmodel):
    from tts_bpeft.kokoro.hub import hub_voicepack, load_hub_kokoro

    model = load_hub_kokoro()
    theirs = small_kmodel.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert torch.equal(hub_voicepack("af_test"), torch.load(hub_cache / "voices" / "af_test.pt"))
    with pytest.raises(Exception, match="af_missing|offline|cache"):
        hub_voicepack("af_missing")


def test_kokoro_checkpoints_round_trip_and_refuse_foreign_files(tmp_path, small_kmodel):
    path = save_kokoro_checkpoint(small_kmodel.state_dict(), tmp_path / "merged.pth")
    flat = read_kokoro_checkpoint(path)
    assert flat.keys() == small_kmodel.state_dict().keys()
    assert all(torch.equal(flat[k], v) for k, v in small_kmodel.state_dict().items())
    with pytest.raises(ValueError, match="net.weight: a Kokoro state dict key starts with one of bert"):
        save_kokoro_checkpoint({"net.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    torch.save({"net": {}}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="foreign.pth.*found \\['net'\\]"):
        read_kokoro_checkpoint(tmp_path / "foreign.pth")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, small_kmodel, small_config):
    from tts_bpeft.kokoro.architecture import build_kmodel, load_kokoro_state_dict

    state = dict(small_kmodel.state_dict())
    state["bert_encoder.weight"] = state["bert_encoder.weight"][:, :5]
    del state["predictor.duration_proj.linear_layer.bias"]
    model = build_kmodel(small_config)
    with pytest.raises(ValueError, match="demo.pth.*missing.*duration_proj.*shape mismatch: bert_encoder.weight"):
        load_kokoro_state_dict(model, state, "demo.pth")
