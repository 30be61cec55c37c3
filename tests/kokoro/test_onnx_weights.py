"""The dequantization of a dynamically quantized ONNX export recovers the torch weights to int8 precision.

Reference: the weights of the torch model that was exported (an independent source: the converter only sees
the quantized graph). Each recovered entry must lie within half a quantization step (``s / 2``, the rounding
bound) of the original; weight-normed layers are compared through their effective weight ``g v / ||v||``.
"""

from __future__ import annotations

import pytest
import torch

onnx = pytest.importorskip("onnx")
quantization = pytest.importorskip("onnxruntime.quantization")

from tts_bpeft.kokoro.onnx_weights import dequantize_onnx, weight_norm_split  # noqa: E402

CONSTANTS = ("bert.embeddings.position_embeddings.", "bert.embeddings.token_type_embeddings.", "bert.pooler.",
             "generator.stft.")
"""Tensors of TinyKokoro that the export folds into other constants (fixed position / token-type lookups),
never uses (the pooler), or that are fixed STFT bases, not learned weights."""


@pytest.fixture(scope="module")
def quantized(tiny_kokoro, tmp_path_factory):
    """TinyKokoro exported (TorchScript exporter, opset 20), constant-folded and dynamically quantized to int8
    (per-channel) as kokoro-onnx did for Kokoro-82M; the graph and the conversion."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    ids = torch.tensor([[0, 50, 83, 54, 156, 57, 0]])
    style = torch.randn(1, 32)
    alignment = torch.zeros(1, 7, 12)
    alignment[0, torch.arange(7).repeat_interleave(torch.tensor([2, 1, 2, 2, 1, 2, 2])), torch.arange(12)] = 1
    torch.onnx.export(tiny_kokoro, (ids, style, alignment), folder / "fp32.onnx", dynamo=False, opset_version=20)
    quantization.shape_inference.quant_pre_process(folder / "fp32.onnx", folder / "folded.onnx",
                                                   skip_symbolic_shape=True)
    quantization.quantize_dynamic(folder / "folded.onnx", folder / "int8.onnx",
                                  weight_type=quantization.QuantType.QInt8, per_channel=True)
    graph = onnx.load(folder / "int8.onnx").graph
    return graph, dequantize_onnx(graph, tiny_kokoro)


def effective_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> value, with weight-normed pairs replaced by ``<module>.weight = g v / ||v||``."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            module = key.removesuffix(".weight_v")
            g = state[module + ".weight_g"]
            value = g * value / value.flatten(1).norm(dim=1).reshape(g.shape)
            key = module + ".weight"
        out[key] = value
    return out


def test_every_learned_weight_is_recovered_within_half_a_quantization_step(tiny_kokoro, quantized):
    graph, conversion = quantized
    original = effective_weights(tiny_kokoro, dict(tiny_kokoro.state_dict()))
    recovered = effective_weights(tiny_kokoro, conversion.state)
    learned = {k for k in original if not k.startswith(CONSTANTS)}
    assert learned - set(recovered) == set()
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in graph.node)
    quantized_keys = 0
    for key in sorted(learned):
        step = conversion.scales.get(key, conversion.scales.get(key.removesuffix("weight") + "weight_v", 0.0))
        error = (recovered[key] - original[key]).abs().max().item()
        bound = step / 2 * (1 + 1e-4) + 1e-6 * original[key].abs().max().item()
        assert error <= bound, f"{key}: error {error:.3g} > {bound:.3g} (step {step:.3g})"
        quantized_keys += step > 0
    # the int8 path really was exercised: Linear, conv, LSTM and embedding weights all came from integers
    assert quantized_keys >= 100
    for key in ("predictor.lstm.weight_ih_l0_reverse", "text_encoder.embedding.weight",
                "bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
                "generator.resblocks.0.convs1.0.weight_v", "predictor.F0.0.conv1.weight_v"):
        assert conversion.scales[key] > 0, key
    assert sorted(name for name, _ in conversion.unmapped) == sorted(
        n for n in (i.name for i in graph.initializer) if "stft" in n and (n.endswith("_quantized") or "backward" in n))


def test_dequantized_weights_reproduce_the_model_up_to_quantization(tiny_kokoro, quantized):
    """The converted torch model predicts the durations the original does, to int8 precision."""
    _, conversion = quantized
    torch.manual_seed(1)
    copy = type(tiny_kokoro)().eval()
    state = {**tiny_kokoro.state_dict(), **conversion.state}
    copy.load_state_dict(state)
    ids = torch.tensor([[0, 44, 51, 61, 62, 0]])
    style = torch.randn(1, 32)
    alignment = torch.eye(6)[None]
    with torch.no_grad():
        _, ours, f0_ours, _ = copy(ids, style, alignment)
        _, reference, f0_ref, _ = tiny_kokoro(ids, style, alignment)
    assert torch.allclose(ours, reference, atol=0.05 * reference.abs().max().item())
    assert torch.corrcoef(torch.stack([f0_ours.flatten(), f0_ref.flatten()]))[0, 1] > 0.99


def test_weight_norm_split_handles_rows_that_quantized_to_zero():
    weight = torch.randn(4, 3, 5)
    weight[1] = 0
    g, v = weight_norm_split(weight)
    assert g.shape == (4, 1, 1) and g[1].item() == 0
    assert torch.isfinite(v).all() and v[1].norm() == pytest.approx(1.0)
    rebuilt = g * v / v.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    assert torch.allclose(rebuilt, weight, atol=1e-6)
    conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(3, 4, 5))
    with torch.no_grad():
        conv.weight_g.copy_(g)
        conv.weight_v.copy_(v)
    conv(torch.randn(2, 3, 9)).square().sum().backward()
    assert torch.isfinite(conv.weight_g.grad).all() and torch.isfinite(conv.weight_v.grad).all()
