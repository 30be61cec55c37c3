"""The run folder module: write / read / load / export round trips through a small registered model family,
and a moved folder that still loads because its paths are relative."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tts_bpeft.family import FAMILIES, FamilyEntry, TTSModel
from tts_bpeft.io import save_safetensors
from tts_bpeft.lora import add_lora, merged_state_dict
from tts_bpeft.runs import (
    IncompleteRunError,
    export_run,
    find_run_dirs,
    load_run,
    read_run,
    resolve_paths,
    save_result,
    write_run,
)

FAMILY = "linear_test"


class LinearFamily:
    """A two-layer "model family" for these tests: model settings ``{checkpoint: safetensors | None}``."""

    name = FAMILY
    sample_rate = 16000
    clones_voices = False

    def build(self, settings, device="cpu", seed=0) -> TTSModel:
        torch.manual_seed(seed)
        net = {"encoder": nn.Linear(4, 3), "head": nn.Linear(3, 2)}
        if settings.get("checkpoint"):
            state = load_file(settings["checkpoint"])
            for key, module in net.items():
                module.load_state_dict({k[len(key) + 1:]: v for k, v in state.items() if k.startswith(key + ".")})
        return TTSModel(self.name, net, dict(settings), {}, seed)

    def export(self, model: TTSModel, path) -> Path:
        return save_safetensors(merged_state_dict(model.net), path)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(FAMILIES, FAMILY, FamilyEntry("test_runs:LinearFamily", ("checkpoint",)))


def forward(model: TTSModel, x: torch.Tensor) -> torch.Tensor:
    return model.net["head"](model.net["encoder"](x))


def lora_run(folder: Path, model_settings: dict, seed: int = 0) -> tuple[Path, TTSModel]:
    """A finished LoRA run: the adapter's B factors made non-zero, as training would."""
    run = write_run(folder, {"system": "lora", "model": model_settings, "seed": seed, "prior": {"kind": "none"}},
                    FAMILY)
    model = LinearFamily().build(run.model_settings(), seed=seed)
    add_lora(model.net, ["Linear"], r=2, alpha=4)
    torch.manual_seed(9)
    for module in model.modules():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.data.normal_()
    save_result(run, model, {})
    return folder, model


def test_write_read_and_load_a_lora_run(tmp_path) -> None:
    folder, trained = lora_run(tmp_path / "run", {"checkpoint": None}, seed=3)
    run = read_run(folder)
    assert (run.family, run.system, run.seed, run.finished) == (FAMILY, "lora", 3, True)
    assert json.loads((folder / "run.json").read_text())["family"] == FAMILY
    loaded, run = load_run(folder)
    x = torch.randn(5, 4)
    assert not any(m.training for m in loaded.modules())
    torch.testing.assert_close(forward(loaded, x), forward(trained, x))
    base = LinearFamily().build({"checkpoint": None}, seed=3)
    assert (forward(loaded, x) - forward(base, x)).abs().max() > 1e-3  # the adapter is in it


def test_a_baseline_run_stores_its_trained_parameters(tmp_path) -> None:
    run = write_run(tmp_path / "full", {"system": "full", "model": {"checkpoint": None}, "seed": 0}, FAMILY)
    with pytest.raises(IncompleteRunError, match="has not finished"):
        load_run(run.folder)
    model = LinearFamily().build({}, seed=0)
    trainable = {"head.weight": model.net["head"].weight}
    with torch.no_grad():
        model.net["head"].weight.add_(1.0)
    assert save_result(run, model, trainable) == tmp_path / "full" / "trainable.safetensors"
    loaded, _ = load_run(run.folder)
    torch.testing.assert_close(loaded.net["head"].weight, model.net["head"].weight)
    torch.testing.assert_close(loaded.net["encoder"].weight, model.net["encoder"].weight)  # same seeded base
    save_safetensors({"head.nope": torch.zeros(1)}, run.result)
    with pytest.raises(ValueError, match=r"trainable.safetensors: parameter 'head.nope' is not in"):
        load_run(run.folder)


def test_export_writes_the_merged_model(tmp_path) -> None:
    folder, trained = lora_run(tmp_path / "run", {"checkpoint": None})
    path = export_run(folder, tmp_path / "merged.safetensors")
    plain = LinearFamily().build({"checkpoint": str(path)}, seed=123)  # other seed: every weight from the file
    x = torch.randn(5, 4)
    torch.testing.assert_close(forward(plain, x), forward(trained, x))


def test_a_moved_folder_loads_when_its_paths_are_relative(tmp_path) -> None:
    experiment = tmp_path / "experiment"
    base = LinearFamily().build({}, seed=42)
    save_safetensors({f"{k}.{n}": v for k, m in base.net.items() for n, v in m.state_dict().items()},
                     experiment / "base.safetensors")
    folder, trained = lora_run(experiment / "runs" / "r1", {"checkpoint": "../../base.safetensors"})
    moved = tmp_path / "elsewhere" / "experiment"
    shutil.move(experiment, moved)
    loaded, run = load_run(moved / "runs" / "r1")
    assert run.model_settings()["checkpoint"] == str(moved / "base.safetensors")
    x = torch.randn(5, 4)
    torch.testing.assert_close(forward(loaded, x), forward(trained, x))


def test_resolve_paths_touches_only_relative_paths_that_exist(tmp_path) -> None:
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    settings = {"config": "tiny", "checkpoint": "a.pth", "aux": {"asr": "sub", "pitch": None, "plbert": "gone.t7"},
                "other": "a.pth", "absolute": "/x/y.pth"}
    out = resolve_paths(settings, ["config", "checkpoint", "aux.asr", "aux.pitch", "aux.plbert", "absolute",
                                   "missing.key"], tmp_path)
    assert out == {**settings, "checkpoint": str(tmp_path / "a.pth"),
                   "aux": {"asr": str(tmp_path / "sub"), "pitch": None, "plbert": "gone.t7"}}
    assert settings["checkpoint"] == "a.pth"  # the input is left as it was
    for name in ("tiny", "libritts"):  # model names stay names where a folder of that name exists
        (tmp_path / name).mkdir()
        assert resolve_paths({"config": name}, ["config"], tmp_path) == {"config": name}


def test_run_folders_are_found_and_bad_ones_named(tmp_path) -> None:
    a, _ = lora_run(tmp_path / "sweep" / "a", {})
    b, _ = lora_run(tmp_path / "sweep" / "b", {})
    assert find_run_dirs(tmp_path) == [a, b] and find_run_dirs(a) == [a]
    with pytest.raises(FileNotFoundError, match="no fine-tuning run folder"):
        find_run_dirs(tmp_path / "sweep" / "a" / "adapter")
    with pytest.raises(FileNotFoundError, match=r"empty/run.json: missing"):
        read_run(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/run.json: not valid JSON"):
        read_run(tmp_path / "broken")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps({"system": "lora", "model": {"config": "tiny"}}))
    assert read_run(tmp_path / "old").family == "styletts2"  # written before families existed
