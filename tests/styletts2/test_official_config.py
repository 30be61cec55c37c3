"""An official config.yml names its aux models (ASR_config / ASR_path, F0_path, PLBERT_dir); they are found as
the official code finds them and a checkpoint trained with non-stock aux models loads. Files are written in the
release layout: Utils/ASR/{config.yml, epoch_00080.pth}, Utils/JDC/bst.t7, Utils/PLBERT/{config.yml,
step_1000000.t7}, Models/LibriTTS/{config.yml, epochs_2nd_00020.pth}."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from release_layout import ASR, PLBERT, write_release
from styletts2.Utils.PLBERT.util import CustomAlbert
from transformers import AlbertConfig

from tts_bpeft.family import family
from tts_bpeft.styletts2.aux_files import candidates, official_aux_files, resolve
from tts_bpeft.styletts2.checkpoints import CheckpointMismatchError


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """A StyleTTS 2 repository folder with the aux models and a trained checkpoint in the release layout."""
    written = write_release(tmp_path_factory.mktemp("StyleTTS2"))
    torch.save({"net": {}}, written["root"] / "Utils/PLBERT/step_500.t7")  # an earlier step: the highest is used
    return written


def _same(module: torch.nn.Module, other: torch.nn.Module) -> bool:
    theirs = other.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in module.state_dict().items())


def test_relative_paths_are_found_from_the_working_directory_then_beside_the_config(release, tmp_path,
                                                                                   monkeypatch) -> None:
    config = release["config"]
    monkeypatch.chdir(tmp_path)  # not the repository root: the release layout two folders up is found
    assert resolve("Utils/JDC/bst.t7", config, "F0_path") == release["root"] / "Utils/JDC/bst.t7"
    (tmp_path / "Utils/JDC").mkdir(parents=True)
    (tmp_path / "Utils/JDC/bst.t7").write_bytes(b"")  # the official scripts run from the repository root
    assert resolve("Utils/JDC/bst.t7", config, "F0_path") == tmp_path / "Utils/JDC/bst.t7"
    assert candidates(tmp_path / "a.t7", config) == [tmp_path / "a.t7"]
    files = official_aux_files(config, yaml.safe_load(config.read_text()))
    assert files.checkpoints["plbert"] == release["root"] / "Utils/PLBERT/step_1000000.t7"  # the highest step
    assert files.configs["asr"] == release["root"] / "Utils/ASR/config.yml"


def test_official_keys_build_non_stock_aux_models_and_the_checkpoint_loads(release, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    styletts2 = family("styletts2")
    with pytest.raises(ValueError, match="no model.checkpoint given.*model.random=true"):
        styletts2.build({"config": str(release["config"])})  # no silent random weights
    aux_only = styletts2.build({"config": str(release["config"]), "random": True}, seed=0).net
    assert aux_only.bert.config.hidden_size == PLBERT["hidden_size"]
    assert aux_only.bert_encoder.in_features == PLBERT["hidden_size"]
    for name, kind in (("text_aligner", "asr"), ("pitch_extractor", "pitch"), ("bert", "plbert")):
        assert _same(aux_only[name], release["aux"][kind]), name  # the files the keys name, loaded
    full = styletts2.build({"config": str(release["config"]), "checkpoint": str(release["checkpoint"])}).net
    for name in ("text_aligner", "bert", "bert_encoder", "decoder"):
        assert _same(full[name], release["trained"][name]), name


def _variant(release: dict, tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load(release["config"].read_text())
    for key in ("ASR_config", "ASR_path", "F0_path", "PLBERT_dir"):  # the copy lives elsewhere
        config[key] = str(release["root"] / config[key])
    config.update(changes)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_missing_aux_file_names_the_key_and_the_places_looked_in(release, tmp_path) -> None:
    path = _variant(release, tmp_path, F0_path="Utils/JDC/nope.t7")
    with pytest.raises(FileNotFoundError, match=r"(?s)config.yml: F0_path: 'Utils/JDC/nope.t7'.*looked in"):
        family("styletts2").build({"config": str(path), "random": True})
    path = _variant(release, tmp_path, PLBERT_dir=None)
    with pytest.raises(ValueError, match="not \\['PLBERT_dir'\\]"):
        family("styletts2").build({"config": str(path), "random": True})


def test_a_mismatch_names_the_file_and_the_key_to_fix(release, tmp_path) -> None:
    stock = tmp_path / "stock_asr.yml"
    stock.write_text(yaml.safe_dump({"model_params": {**ASR, "hidden_dim": 64}}))
    path = _variant(release, tmp_path, ASR_config=str(stock))
    with pytest.raises(CheckpointMismatchError) as error:
        family("styletts2").build({"config": str(path), "random": True})
    message = str(error.value)
    assert "epoch_00080.pth (ASR aligner)" in message and "shape of" in message
    assert f"{stock} (key ASR_config in {path})" in message and "ASR_path" in message
    # the aux files fit, the checkpoint's PL-BERT does not: the key to fix is named with the checkpoint file
    (tmp_path / "Utils/PLBERT").mkdir(parents=True)
    (tmp_path / "Utils/PLBERT/config.yml").write_text(yaml.safe_dump({"model_params": {**PLBERT, "hidden_size": 64}}))
    bert = CustomAlbert(AlbertConfig(**{**PLBERT, "hidden_size": 64}))
    torch.save({"net": {f"module.encoder.{k}": v for k, v in bert.state_dict().items()}},
               tmp_path / "Utils/PLBERT/step_1.t7")
    path = _variant(release, tmp_path, PLBERT_dir=str(tmp_path / "Utils/PLBERT"))
    with pytest.raises(CheckpointMismatchError) as error:
        family("styletts2").build({"config": str(path), "checkpoint": str(release["checkpoint"])})
    message = str(error.value)
    assert "epochs_2nd_00020.pth" in message and "module 'bert'" in message
    assert "(key PLBERT_dir in" in message
