"""Adapters saved by tts_bpeft read by plain peft: ``PeftModel.from_pretrained`` and ``inject_adapter_in_model``
+ ``set_peft_model_state_dict``, with the custom layer types registered; weights and outputs equal."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from test_lora_inject_io import X, _opt, adapted_styletts_like, run, styletts_like
from torch import nn

from tts_bpeft.lora import CUSTOM_LORA_LAYERS, add_lora, load_adapter, save_adapter

BASE = "Models/LibriTTS/epochs_2nd_00020.pth"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # old-style weight_norm is deprecated
        yield


@pytest.fixture
def saved(tmp_path):
    """The adapter of `adapted_styletts_like` saved, its LoRA tensors, the adapted outputs on X and the base
    weights."""
    nets, base, expected = adapted_styletts_like()
    lora = {n: p.detach().clone() for n, p in nn.ModuleDict(dict(nets)).named_parameters() if ".lora_" in n}
    return save_adapter(nets, tmp_path / "adapter", base_model_name_or_path=BASE), lora, expected, base


def base_model(base: dict) -> nn.ModuleDict:
    """The base model rebuilt as a user would: other random weights, then the pre-trained ones."""
    model = nn.ModuleDict(styletts_like(seed=7))
    for key, state in base.items():
        model[key].load_state_dict(state)
    return model


def peft_config(folder) -> LoraConfig:
    config = LoraConfig.from_pretrained(str(folder))
    config._register_custom_module(CUSTOM_LORA_LAYERS)
    return config


def assert_same_lora(model: nn.Module, lora: dict, prefix: str = "") -> None:
    found = {n[len(prefix):]: p for n, p in model.named_parameters() if ".lora_" in n}
    assert set(found) == set(lora)
    for name, value in lora.items():
        assert torch.equal(found[name], value), name


def test_peft_model_from_pretrained_reads_a_saved_adapter(saved):
    folder, lora, expected, base = saved
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE
    assert all(k.startswith("base_model.model.") for k in load_file(str(folder / "adapter_model.safetensors")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base_model(base), folder, config=peft_config(folder))
    assert not [w for w in caught if "adapter keys" in str(w.message)], [str(w.message) for w in caught]
    assert model.peft_config["default"].base_model_name_or_path == BASE
    assert_same_lora(model, lora, prefix="base_model.model.")
    with torch.no_grad():
        assert torch.equal(run(model.base_model.model, X), expected)


def test_inject_and_set_state_dict_read_a_saved_adapter(saved):
    folder, lora, expected, base = saved
    model = base_model(base)
    inject_adapter_in_model(peft_config(folder), model)
    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    assert not result.unexpected_keys and not [k for k in result.missing_keys if ".lora_" in k]
    assert_same_lora(model, lora)
    with torch.no_grad():
        assert torch.equal(run(model, X), expected)


def test_load_adapter_reads_folders_written_without_the_peft_prefix(saved):
    folder, lora, expected, base = saved
    path = folder / "adapter_model.safetensors"
    save_file({k.removeprefix("base_model.model."): v for k, v in load_file(str(path)).items()}, str(path))
    model = load_adapter(dict(base_model(base)), folder)
    assert_same_lora(nn.ModuleDict(model), lora)
    with torch.no_grad():
        assert torch.equal(run(model, X), expected)


def test_save_adapter_names_a_transformers_base_model(tmp_path):
    opt = _opt()
    opt.config._name_or_path = "facebook/opt-350m"
    model = add_lora(opt, ["q_proj"], r=2)
    save_adapter(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "facebook/opt-350m")
    nets = add_lora(styletts_like(), ["bert_encoder"], r=2)
    save_adapter(nets, tmp_path / "dict")
    assert json.loads((tmp_path / "dict" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
