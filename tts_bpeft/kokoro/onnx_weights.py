"""fp32 torch weights from a dynamically quantized ONNX export of a torch model.

``onnxruntime.quantization.quantize_dynamic`` stores weights as int8/uint8 with a scale and a zero point and
lets the operators that consume them undo it:

======================  ==============================  ===========================================
consuming operator      stored weight (q)               dequantized torch tensor
======================  ==============================  ===========================================
MatMulInteger           ``[in, out]``                   Linear ``weight = ((q - z) * s).T``
ConvInteger             ``[out, in, k]``                Conv ``weight = (q - z) * s``
DynamicQuantizeLSTM     W ``[dirs, in, 4H]``,           ``weight_ih_l0[_reverse] = ((W[d] - z[d]) * s[d]).T``
                        R ``[dirs, H, 4H]``, B fp32     gates reordered, B split into ``bias_ih`` / ``bias_hh``
Gather + DequantizeL.   ``[vocab, dim]``                Embedding ``weight = (q - z) * s``
MatMul / Conv /         fp32                            as stored (MatMul transposed)
ConvTranspose (fp32)
======================  ==============================  ===========================================

``s`` and ``z`` are scalars or one value per output channel (broadcast along the output axis; for an LSTM
one value per direction or per direction and gate row). The scale of
a quantized tensor ``<base>_quantized`` is the initializer ``<base>_scale``; **zero points are
de-duplicated by the quantizer and shared between unrelated tensors, so each is read from the consuming
node's own inputs**, never guessed from a name. The rounding error of a recovered weight is at most ``s / 2``
per entry.

ONNX orders LSTM gates (i, o, f, c), torch (i, f, g, o): torch's gate block ``j`` is ONNX's block
``[0, 2, 3, 1][j]``. ONNX's ``B`` is ``[dirs, 8H]``: the first 4H are the input biases, the last 4H the
recurrent ones.

Which torch module a weight belongs to: the legacy TorchScript exporter names every node after the module
scopes it was called in (``/decoder/decoder/generator/resblocks.4/convs1.0/Conv_quant``), while many
weights are anonymous (``onnx::MatMul_6547``) or fused constants (weight norm's ``g * v / ||v||`` folded into
``/…/Mul_output_0``). So a weight's module is found from its **consuming node's scope**: the longest
trailing run of scope names that is the end of exactly one of the torch model's module names (a wrapper's
own prefixes, such as ``/encoder/`` around Kokoro's predictor, fall away). A layer called several times
(ALBERT's one shared layer, scopes ``query``, ``query_1``, ...) is resolved from the first call whose scope
names a real module. Named fp32 initializers (biases, norms) map the same way by their dotted names.

Weight-normed modules (``weight_g`` / ``weight_v``, norm over all dims but 0) get ``v = W`` and
``g = ||W||`` per slice; a slice that quantized to all zeros (``v / ||v||`` undefined) gets ``g = 0`` and
a constant unit-norm ``v``, which reproduces ``W = 0`` exactly and keeps gradients finite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

ONNX_TO_TORCH_GATES = [0, 2, 3, 1]


@dataclass
class Conversion:
    """The recovered tensors and an account of what was mapped.

    state: torch state-dict entries recovered from the graph (fp32).
    scales: for each recovered quantized tensor, the largest quantization step ``s`` that applies to it; the
        recovered entries are within ``s / 2`` of the weights before quantization.
    unmapped: graph weights that fit no module of the torch model (name of the weight, consuming node).
    """

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    unmapped: list[tuple[str, str]] = field(default_factory=list)


def dequantize_onnx(graph, model: torch.nn.Module) -> Conversion:
    """fp32 tensors for `model`'s parameters from the ONNX `graph` (an ``onnx.GraphProto``) of a dynamically
    quantized export of the same architecture. Parameters the graph lacks are simply absent from the result.
    """
    from onnx import numpy_helper

    tensors = {init.name: init for init in graph.initializer}
    cache: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = numpy_helper.to_array(tensors[name])
        return cache[name]

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    modules = dict(model.named_modules())
    params = dict(model.state_dict())
    conversion = Conversion()
    done: set[str] = set()

    for node in graph.node:
        weight_name = _weight_input(node, tensors)
        if weight_name is None or weight_name in done:
            continue
        recovered = _recover(node, weight_name, array, consumers)
        fitting = {name: module for name, module in modules.items()
                   if isinstance(module, _module_kinds(node.op_type)) and _fits(module, recovered)}
        path = _resolve(_scope(node.name), fitting)
        if path is None:
            continue  # a repeated call (``query_1``) or a non-module op; another consumer resolves it
        done.add(weight_name)
        for suffix, (value, step) in recovered.items():
            _assign(conversion, modules[path], path, suffix, value, step)

    for name in tensors:
        if name in done or "/" in name or name.startswith("onnx::") or name.endswith(_QUANT_SUFFIXES):
            continue
        key = _resolve(name.split("."), [k for k in params if tuple(params[k].shape) == tuple(tensors[name].dims)])
        if key is not None and key not in conversion.state:
            conversion.state[key] = torch.from_numpy(array(name).astype(np.float32).copy())

    for node in graph.node:
        weight_name = _weight_input(node, tensors)
        if weight_name is not None and weight_name not in done:
            conversion.unmapped.append((weight_name, node.name))
            done.add(weight_name)
    return conversion


_QUANT_SUFFIXES = ("_quantized", "_scale", "_zero_point")


def _module_kinds(op_type: str) -> tuple[type, ...]:
    nn = torch.nn
    return {
        "MatMulInteger": (nn.Linear,), "MatMul": (nn.Linear,), "DynamicQuantizeLSTM": (nn.LSTM,),
        "ConvInteger": (nn.Conv1d, nn.Conv2d), "Conv": (nn.Conv1d, nn.Conv2d),
        "ConvTranspose": (nn.ConvTranspose1d, nn.ConvTranspose2d), "Gather": (nn.Embedding,),
    }.get(op_type, ())


def _weight_input(node, tensors: dict) -> str | None:
    """The name of the weight initializer `node` consumes, or None for nodes that carry no module weight."""
    position = {"MatMulInteger": 1, "MatMul": 1, "ConvInteger": 1, "Conv": 1, "ConvTranspose": 1,
                "DynamicQuantizeLSTM": 1, "Gather": 0}.get(node.op_type)
    if position is None or len(node.input) <= position or node.input[position] not in tensors:
        return None
    dims = tensors[node.input[position]].dims
    return node.input[position] if len(dims) >= 2 else None


def _scope(node_name: str) -> list[str]:
    """Module scope names of a TorchScript-exported node: ``/a/b.0/c/Conv_quant`` -> ``["a", "b.0", "c"]``."""
    return [part for part in node_name.split("/")[:-1] if part]


def _resolve(parts: list[str], names: Iterable[str]) -> str | None:
    """The one name in `names` that ends with the longest run of `parts` (dot-joined); runs that end at the
    last part are tried first, then runs that drop trailing parts (operator scopes such as ``MatMul`` that an
    optimizer added). None when no run matches or the first matching run is ambiguous."""
    names = list(names)
    for end in range(len(parts), 0, -1):
        for start in range(end):
            suffix = ".".join(parts[start:end])
            matches = [n for n in names if n == suffix or n.endswith("." + suffix)]
            if matches:
                return matches[0] if len(matches) == 1 else None
    return None


def _fits(module: torch.nn.Module, recovered: dict[str, tuple[np.ndarray, float]]) -> bool:
    """Whether every recovered tensor has the shape of the module's parameter of that name."""
    for suffix, (value, _) in recovered.items():
        target = getattr(module, "weight_v" if suffix == "weight" and hasattr(module, "weight_g") else suffix, None)
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != value.shape:
            return False
    return True


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """``(q - zero) * scale`` with per-channel `scale` / `zero` broadcast along `axis`."""

    def along_axis(x: np.ndarray) -> np.ndarray:
        shape = [1] * q.ndim
        if x.size > 1:
            shape[axis] = x.size
        return x.astype(np.float32).reshape(shape)

    return (q.astype(np.float32) - along_axis(zero)) * along_axis(scale)


def _recover(node, weight_name: str, array, consumers: dict) -> dict[str, tuple[np.ndarray, float]]:
    """{parameter suffix: (fp32 array in torch layout, quantization step or 0.0)} for one consuming node."""
    op = node.op_type
    if op == "MatMulInteger":
        scale = array(weight_name.removesuffix("_quantized") + "_scale")
        w = _dequantize(array(weight_name), scale, array(node.input[3]), axis=1)
        return {"weight": (w.T, float(scale.max()))}
    if op == "ConvInteger":
        scale = array(weight_name.removesuffix("_quantized") + "_scale")
        return {"weight": (_dequantize(array(weight_name), scale, array(node.input[3]), axis=0), float(scale.max()))}
    if op == "DynamicQuantizeLSTM":
        return _recover_lstm(node, array)
    if op == "Gather":
        q = array(weight_name)
        if q.dtype == np.float32:
            return {"weight": (q, 0.0)}
        dequant = _downstream_dequantize(node.output[0], consumers)
        scale = array(dequant.input[1])
        zero = array(dequant.input[2]) if len(dequant.input) > 2 and dequant.input[2] else np.zeros(1, np.int8)
        return {"weight": (_dequantize(q, scale, zero, axis=0), float(scale.max()))}
    w = array(weight_name).astype(np.float32)  # fp32 MatMul / Conv / ConvTranspose
    recovered = {"weight": (w.T if op == "MatMul" else w, 0.0)}
    if op in ("Conv", "ConvTranspose") and len(node.input) > 2 and node.input[2]:
        recovered["bias"] = (array(node.input[2]).astype(np.float32), 0.0)
    return recovered


_LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _downstream_dequantize(name: str, consumers: dict):
    """The DequantizeLinear that undoes a quantized Gather's output `name`; the quantizer may have moved
    layout-only operators (a Transpose) in between."""
    frontier = [name]
    while frontier:
        nodes = [n for value in frontier for n in consumers.get(value, [])]
        for n in nodes:
            if n.op_type == "DequantizeLinear":
                return n
        frontier = [out for n in nodes if n.op_type in _LAYOUT_OPS for out in n.output]
    raise ValueError(f"no DequantizeLinear follows the quantized lookup {name}: not a dynamic-quantization export")


def _recover_lstm(node, array) -> dict[str, tuple[np.ndarray, float]]:
    """A (bi)directional single-layer LSTM from DynamicQuantizeLSTM's W, R (quantized) and B (fp32)."""
    w_q, r_q, bias = array(node.input[1]), array(node.input[2]), array(node.input[3])
    w_scale, w_zero, r_scale, r_zero = (array(node.input[i]) for i in (8, 9, 10, 11))
    hidden = r_q.shape[1]
    order = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in ONNX_TO_TORCH_GATES])
    recovered = {}
    for d in range(w_q.shape[0]):
        tail = "_l0" + ("_reverse" if d == 1 else "")
        w = _dequantize(w_q[d], w_scale.reshape(w_q.shape[0], -1)[d], w_zero.reshape(w_q.shape[0], -1)[d], axis=1)
        r = _dequantize(r_q[d], r_scale.reshape(r_q.shape[0], -1)[d], r_zero.reshape(r_q.shape[0], -1)[d], axis=1)
        recovered["weight_ih" + tail] = (w.T[order], float(w_scale.reshape(w_q.shape[0], -1)[d].max()))
        recovered["weight_hh" + tail] = (r.T[order], float(r_scale.reshape(r_q.shape[0], -1)[d].max()))
        recovered["bias_ih" + tail] = (bias[d, : 4 * hidden][order].astype(np.float32), 0.0)
        recovered["bias_hh" + tail] = (bias[d, 4 * hidden:][order].astype(np.float32), 0.0)
    return recovered


def _assign(conversion: Conversion, module: torch.nn.Module, path: str, suffix: str, value: np.ndarray,
            step: float) -> None:
    """Store `value` as ``path.suffix``, split into ``weight_g`` / ``weight_v`` for a weight-normed module."""
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if suffix == "weight" and hasattr(module, "weight_g"):
        g, v = weight_norm_split(tensor)
        conversion.state[f"{path}.weight_g"], conversion.state[f"{path}.weight_v"] = g, v
        conversion.scales[f"{path}.weight_v"] = step
    else:
        conversion.state[f"{path}.{suffix}"] = tensor
        if step:
            conversion.scales[f"{path}.{suffix}"] = step


def weight_norm_split(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, v)`` with ``g * v / ||v|| == weight`` (norm over all dims but 0, torch's ``weight_norm(dim=0)``).

    Slices of `weight` that are all zero get ``g = 0`` and ``v`` = a constant unit-norm slice.
    """
    norms = weight.flatten(1).norm(dim=1)
    zero = norms == 0
    v = weight.clone()
    if zero.any():
        v[zero] = 1.0 / weight[0].numel() ** 0.5
    g = norms.reshape(-1, *([1] * (weight.dim() - 1)))
    return g, v
