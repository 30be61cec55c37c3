"""Selecting layers, injecting adapters into StyleTTS 2-shaped dicts and transformers models, save/load."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import warnings
from pathlib import Path

import munch
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn.utils import weight_norm

from tts_bpeft.lora import (
    LoraConv1d,
    LoraConvTranspose1d,
    LoraLSTM,
    add_lora,
    deepcopy_model,
    load_adapter,
    lora_targets,
    merged_state_dict,
    plan_lora,
    save_adapter,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # old-style weight_norm is deprecated
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        yield


class Predictor(nn.Module):
    """A StyleTTS 2-like module: LSTM, convs, a grouped conv and linears."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 4, batch_first=True, bidirectional=True)
        self.conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1))
        self.depthwise = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.up = weight_norm(nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1))
        self.out = nn.Linear(4, 2)

    def forward(self, x):  # x: (B, T, 6)
        h = self.lstm(x)[0].transpose(1, 2)
        h = self.depthwise(torch.tanh(self.conv(h)))
        return self.out(self.up(h).transpose(1, 2))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.gru = nn.GRU(6, 6)
        self.emb = nn.Embedding(10, 6)


def styletts_like(kind=dict, seed: int = 0):
    torch.manual_seed(seed)
    return kind(bert_encoder=nn.Linear(5, 6), predictor=Predictor(), text_encoder=Encoder())


def run(nets, x):
    return nets["predictor"](nets["bert_encoder"](x))


def copy_weights(dst, src) -> None:
    for key in src:
        dst[key].load_state_dict(src[key].state_dict())


def randomize_lora_B(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def lora_param_count(module: nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if ".lora_" in n)


X = torch.randn(2, 7, 5)


def adapted_styletts_like():
    """`styletts_like` with an adapter on every layer type (Linear, weight-normed Conv1d and ConvTranspose1d,
    LSTM) with per-layer r and alpha and random B: (modules, their base state dicts, adapted outputs on X)."""
    nets = styletts_like()
    base = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in nets.items()}
    add_lora(nets, ["bert_encoder", "lstm", "predictor.conv", "up", "out"], r=2, alpha=6,
             rank_pattern={"up": 3}, alpha_pattern={"out": 1.5})
    randomize_lora_B(nn.ModuleDict(dict(nets)))
    with torch.no_grad():
        expected = run(nets, X)
    return nets, base, expected


@pytest.mark.parametrize("kind", [dict, munch.Munch])
def test_styletts_dict_adapted_in_place(kind):
    nets = styletts_like(kind)
    base_out = run(nets, X).detach()
    with pytest.warns(UserWarning, match="skipped 1 layer"):
        returned = add_lora(nets, ["Linear", "Conv1d", "ConvTranspose1d", "LSTM"], r=2, exclude="text_encoder")
    assert returned is nets
    assert isinstance(nets["bert_encoder"], LoraLayer)  # the top-level Linear was replaced in the dict
    if kind is munch.Munch:
        assert nets.bert_encoder is nets["bert_encoder"]
    p = nets["predictor"]
    assert isinstance(p.lstm, LoraLSTM) and isinstance(p.conv, LoraConv1d)
    assert isinstance(p.up, LoraConvTranspose1d) and isinstance(p.out, LoraLayer)
    assert type(p.depthwise) is nn.Conv1d and type(nets["text_encoder"].proj) is nn.Linear
    assert set(lora_targets(nets)) == {
        "bert_encoder", "predictor.lstm.weight_ih_l0", "predictor.lstm.weight_hh_l0",
        "predictor.lstm.weight_ih_l0_reverse", "predictor.lstm.weight_hh_l0_reverse",
        "predictor.conv", "predictor.up", "predictor.out"}
    torch.testing.assert_close(run(nets, X), base_out)  # B = 0: the adapter starts as the identity
    randomize_lora_B(nn.ModuleDict(dict(nets)))
    assert (run(nets, X) - base_out).abs().max() > 1e-2


def test_plan_skips_grouped_conv_and_format_counts():
    nets = styletts_like()
    plan = plan_lora(nets, ["Conv1d", "Linear", "LSTM", "ConvTranspose1d"], r=3, exclude=["text_encoder"])
    assert plan.names == ["bert_encoder", "predictor.lstm", "predictor.conv", "predictor.up", "predictor.out"]
    assert plan.skipped == [("predictor.depthwise", "grouped convolution (groups=8) is not supported")]
    by_name = {p.name: p for p in plan.selected}
    # r * (out + in_flat) per weight matrix; the LSTM has 4 matrices (ih: 16x6, hh: 16x4, both directions)
    assert by_name["bert_encoder"].lora_params == 3 * (6 + 5)
    assert by_name["predictor.lstm"].lora_params == 2 * 3 * ((16 + 6) + (16 + 4))
    assert by_name["predictor.conv"].lora_params == 3 * (8 + 8 * 3)
    assert by_name["predictor.up"].lora_params == 3 * (4 + 8 * 4)
    assert by_name["predictor.conv"].base_params == 8 + 8 * 8 * 3 + 8  # weight_g, weight_v, bias
    assert by_name["predictor.lstm"].weight_shapes[:2] == ((16, 6), (16, 4))
    text = plan.format()
    lines = text.splitlines()
    for p in plan.selected:
        line = next(ln for ln in lines if ln.startswith(p.name + " "))
        assert p.layer_type in line and f"{p.lora_params:,}" in line and f"{p.base_params:,}" in line
    total = sum(p.lora_params for p in plan.selected)
    assert f"5 layers, {sum(p.base_params for p in plan.selected):,} base weights, {total:,} LoRA" in text
    assert "skipped predictor.depthwise: grouped convolution" in text

    with pytest.warns(UserWarning, match="predictor.depthwise"):
        add_lora(nets, ["Conv1d", "Linear", "LSTM", "ConvTranspose1d"], r=3, exclude=["text_encoder"])
    assert lora_param_count(nn.ModuleDict(dict(nets))) == total


def test_rank_and_alpha_patterns():
    nets = styletts_like()
    rank_pattern, alpha_pattern = {r"predictor\.(conv|up)": 2, "lstm": 5}, {"bert_encoder": 3.0, "out": 12}
    plan = plan_lora(nets, ["bert_encoder", "predictor.lstm", "conv", "up", "out"], r=4, rank_pattern=rank_pattern)
    add_lora(nets, ["bert_encoder", "predictor.lstm", "conv", "up", "out"], r=4, alpha=8,
             rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    p = nets["predictor"]
    expected = {  # layer: (r, alpha)
        nets["bert_encoder"]: (4, 3.0), p.conv: (2, 8), p.up: (2, 8), p.lstm: (5, 8), p.out: (4, 12)}
    for layer, (r, alpha) in expected.items():
        assert layer.r["default"] == r and layer.lora_alpha["default"] == alpha
        assert layer.scaling["default"] == pytest.approx(alpha / r)
    targets = lora_targets(nets)
    B, A, scale = targets["predictor.lstm.weight_hh_l0"].lora_factors()
    assert B.shape == (16, 5) and A.shape == (5, 4) and scale == pytest.approx(8 / 5)
    assert lora_param_count(nn.ModuleDict(dict(nets))) == sum(x.lora_params for x in plan.selected)


def test_rslora_scaling():
    nets = styletts_like()
    add_lora(nets, ["bert_encoder", "lstm", "predictor.conv"], r=4, alpha=6, use_rslora=True)
    for layer in (nets["bert_encoder"], nets["predictor"].lstm, nets["predictor"].conv):
        assert layer.scaling["default"] == pytest.approx(6 / 2)


def test_bad_inputs_raise_clear_errors():
    nets = styletts_like()
    with pytest.raises(ValueError, match=r"\['no_such_layer'\] match no module"):
        plan_lora(nets, ["bert_encoder", "no_such_layer"])
    with pytest.raises(ValueError, match=r"text_encoder\.gru \(GRU\): layer type GRU is not supported"):
        add_lora(nets, ["text_encoder.gru"])
    with pytest.raises(ValueError, match=r"emb \(Embedding\)") as info:
        add_lora(nets, ["emb", "gru", "proj"])
    assert "text_encoder.gru (GRU)" in str(info.value)  # every refused layer is listed
    with pytest.raises(ValueError, match=r"predictor\.depthwise \(Conv1d\): grouped convolution \(groups=8\)"):
        add_lora(nets, ["depthwise"])
    with pytest.raises(ValueError, match="no adaptable layer selected"):
        plan_lora(nets, ["ConvTranspose1d", "text_encoder"])  # the pattern matches, the type filter empties it
    assert not any(isinstance(m, LoraLayer) for m in nn.ModuleDict(dict(nets)).modules())  # nothing changed


def test_same_adapter_twice_refused_second_adapter_works():
    nets = styletts_like()
    x = torch.randn(2, 7, 5)
    base_out = run(nets, x).detach()
    names = ["bert_encoder", "lstm", "predictor.conv", "up"]
    add_lora(nets, names, r=2)
    with pytest.raises(ValueError, match="adapter 'default' already exists"):
        add_lora(nets, names, r=2)
    with pytest.raises(ValueError, match="already exists"):
        add_lora(nets, ["Linear"], r=2)
    # a type filter sees adapted layers as their base layer, never their insides (base_layer, lora_A, ...)
    assert plan_lora(nets, ["Linear", "Conv1d"], exclude="text_encoder").names == [
        "bert_encoder", "predictor.conv", "predictor.out"]
    add_lora(nets, names, r=3, adapter_name="second")
    model = nn.ModuleDict(dict(nets))
    randomize_lora_B(model)
    first, second = lora_targets(nets), lora_targets(nets, "second")
    assert list(first) == list(second) and len(first) == 7
    assert all(t.lora_factors()[0].shape[1] == 3 for t in second.values())
    # both adapters active: every layer computes with W + dW_default + dW_second
    layers = list({id(t.layer): t.layer for t in first.values()}.values())
    with torch.no_grad():
        only_default = run(nets, x)
        for layer in layers:
            layer.set_adapter(["default", "second"])
        both = run(nets, x)
        for layer in layers:
            layer.merge(adapter_names=["default", "second"])
            assert layer.merged_adapters == ["default", "second"]
        merged_both = run(nets, x)
    torch.testing.assert_close(merged_both, both, atol=1e-5, rtol=0)
    assert (both - only_default).abs().max() > 1e-2 and (only_default - base_out).abs().max() > 1e-2


def test_save_and_load_adapter(tmp_path):
    nets, base_state, expected = adapted_styletts_like()
    folder = save_adapter(nets, tmp_path / "adapter")
    assert sorted(f.name for f in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(["bert_encoder", "predictor.lstm", "predictor.conv", "predictor.up",
                                               "predictor.out"])
    assert config["rank_pattern"] == {"predictor.up": 3} and config["alpha_pattern"] == {"predictor.out": 1.5}

    fresh = styletts_like(munch.Munch, seed=7)  # other random weights, then the original base weights
    for key, state in base_state.items():
        fresh[key].load_state_dict(state)
    with torch.no_grad():
        assert (run(fresh, X) - expected).abs().max() > 1e-2
    returned = load_adapter(fresh, folder)
    assert returned is fresh and isinstance(fresh.bert_encoder, LoraLayer)
    assert fresh.predictor.up.r["default"] == 3 and fresh.predictor.out.scaling["default"] == 1.5 / 2
    with torch.no_grad():
        assert torch.equal(run(fresh, X), expected)

    # the merged plain weights reproduce the adapted model without any LoRA code
    merged = merged_state_dict(fresh)
    plain = styletts_like(seed=11)
    for key, module in plain.items():
        module.load_state_dict({k[len(key) + 1:]: v for k, v in merged.items() if k.startswith(key + ".")})
    with torch.no_grad():
        torch.testing.assert_close(run(plain, X), expected, atol=1e-5, rtol=0)


def test_load_adapter_does_not_overreach_to_suffix_names(tmp_path):
    """An adapted top-level `proj` must not pull in `text_encoder.proj` on loading."""
    def build():
        torch.manual_seed(0)
        return {"proj": nn.Linear(6, 6), "text_encoder": Encoder()}
    model = build()
    add_lora(model, ["^proj$"], r=2)
    assert type(model["text_encoder"].proj) is nn.Linear
    randomize_lora_B(nn.ModuleDict(model))
    save_adapter(model, tmp_path)
    fresh = load_adapter(build(), tmp_path)
    assert isinstance(fresh["proj"], LoraLayer) and type(fresh["text_encoder"].proj) is nn.Linear
    x = torch.randn(3, 6)
    assert torch.equal(fresh["proj"](x), model["proj"](x))


def test_load_adapter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(styletts_like(), tmp_path)
    nets = styletts_like()
    add_lora(nets, ["bert_encoder"], r=2)
    save_adapter(nets, tmp_path)
    with pytest.raises(ValueError, match="no LoRA adapter named 'other'"):
        save_adapter(nets, tmp_path / "x", adapter_name="other")
    other = styletts_like()
    other["bert_encoder"] = nn.Linear(5, 9)
    with pytest.raises(ValueError, match=r"lora_B\.weight has shape \(6, 2\), the model expects \(9, 2\)"):
        load_adapter(other, tmp_path)


def _opt(seed: int = 0):
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, ffn_dim=32, num_hidden_layers=2,
                       max_position_embeddings=64, word_embed_proj_dim=16)
    return OPTForCausalLM(config).eval()


def test_opt_peft_model_round_trip(tmp_path):
    model = _opt()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 50, (2, 9))
    base_logits = model(ids).logits.detach()
    plan = plan_lora(model, ["q_proj", "v_proj"], r=4)
    peft_model = add_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    assert isinstance(peft_model, PeftModel)
    targets = lora_targets(peft_model)
    expected = [f"model.decoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert sorted(targets) == expected
    assert not any(k.startswith("base_model") for k in targets)
    assert all(t.kind == "linear" and t.lora_factors()[0].shape == (16, 4) for t in targets.values())
    assert lora_param_count(peft_model) == sum(p.lora_params for p in plan.selected) == 4 * 4 * (16 + 16)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    randomize_lora_B(peft_model)
    with torch.no_grad():
        logits = peft_model(ids).logits
    assert (logits - base_logits).abs().max() > 1e-3

    peft_model.save_pretrained(tmp_path)
    fresh = _opt(seed=5)
    fresh.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)
    merged = merged_state_dict(peft_model)
    plain = _opt(seed=9)
    plain.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, logits, atol=1e-5, rtol=0)


def _printed_comments(block: str) -> str:
    """The comment lines that follow each print(...) line of a code block: the output the doc promises."""
    out, after_print = [], False
    for line in block.splitlines():
        if line.startswith("print("):
            after_print = True
        elif after_print and line.startswith("# "):
            out.append(line[2:])
        else:
            after_print = False
    return "".join(out)


def test_docs_examples_run():
    """The code blocks of docs/lora.md run as written, check their own asserts, and print what they show."""
    text = (Path(__file__).parents[2] / "docs" / "lora.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(block, "docs/lora.md", "exec"), {})
        expected = _printed_comments(block)
        assert expected
        assert re.sub(r"\s", "", stdout.getvalue()) == re.sub(r"\s", "", expected)


def test_a_model_with_weight_norm_is_copied_after_a_forward_with_gradients():
    model = Predictor()
    x = torch.randn(2, 5, 6)
    model(x).sum().backward()  # leaves a non-leaf ``weight`` on each weight-normed layer
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    twin = deepcopy_model(model)
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    with torch.no_grad():
        twin.conv.weight_g.mul_(2.0)
    assert not torch.equal(twin(x), model(x))  # the copy has its own parameters
