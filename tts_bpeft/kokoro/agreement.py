"""How closely the dequantized torch model follows the int8 onnxruntime model it came from.

Both models get the same tokens and style row. The ONNX graph is asked for four intermediate values besides
its audio, and the torch model's matching modules are hooked:

=================  ========================================  ===========================================
feature            ONNX value                                torch module output
=================  ========================================  ===========================================
``bert``           ``/encoder/bert_encoder/Add_output_0``    ``bert_encoder`` ``[1, T, 512]``
``duration``       ``/encoder/predictor/ReduceSum_output_0`` ``sigmoid(duration_proj).sum(-1)`` ``[1, T]``
``f0``             ``/encoder/F0_proj/Conv_output_0``        ``predictor.F0_proj`` ``[1, 1, 2F]`` (Hz)
``energy``         ``/encoder/N_proj/Conv_output_0``         ``predictor.N_proj`` ``[1, 1, 2F]``
=================  ========================================  ===========================================

plus the rounded durations (frames of 25 ms per token) and the waveforms. F0 and energy are compared over
their common length (they differ in length when a rounded duration differs). Waveforms do not align sample
by sample (the harmonic source's random phase), and the ONNX export's own iSTFT makes its output about
sqrt(2) louder; the torch model is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ONNX_FEATURES = {
    "bert": "/encoder/bert_encoder/Add_output_0",
    "duration": "/encoder/predictor/ReduceSum_output_0",
    "f0": "/encoder/F0_proj/Conv_output_0",
    "energy": "/encoder/N_proj/Conv_output_0",
}


@dataclass
class Features:
    """One utterance's intermediate features (float arrays), rounded durations (frames) and wave (24 kHz)."""

    values: dict[str, np.ndarray]
    durations: np.ndarray
    wave: np.ndarray


class OnnxKokoro:
    """The int8 ONNX model in onnxruntime (CPU), returning :class:`Features`."""

    def __init__(self, onnx_file: bytes, threads: int = 0):
        import onnx
        import onnxruntime

        model = onnx.load_from_string(onnx_file)
        for name in ONNX_FEATURES.values():
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, ids: list[int], style: torch.Tensor, speed: float = 1.0) -> Features:
        feeds = {"tokens": np.array([ids], dtype=np.int64), "style": style.reshape(1, -1).numpy(),
                 "speed": np.array([speed], dtype=np.float32)}
        result = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        values = {k: np.asarray(result[v], dtype=np.float32).reshape(-1) for k, v in ONNX_FEATURES.items()}
        durations = np.maximum(np.round(values["duration"]), 1).astype(np.int64)
        return Features(values, durations, np.asarray(result["audio"], dtype=np.float32).reshape(-1))


def torch_features(model: torch.nn.Module, ids: list[int], style: torch.Tensor, speed: float = 1.0,
                   seed: int = 0) -> Features:
    """The same features from a ``KModel`` (hooks on its modules during ``forward_with_tokens``)."""
    captured: dict[str, torch.Tensor] = {}
    modules = {"bert": model.bert_encoder, "duration": model.predictor.duration_proj,
               "f0": model.predictor.F0_proj, "energy": model.predictor.N_proj}
    handles = [module.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out))
               for key, module in modules.items()]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            audio, durations = model.forward_with_tokens(torch.tensor([ids]), style.reshape(1, -1), speed)
    finally:
        for handle in handles:
            handle.remove()
    captured["duration"] = torch.sigmoid(captured["duration"]).sum(-1) / speed
    values = {k: v.detach().reshape(-1).float().numpy() for k, v in captured.items()}
    return Features(values, durations.reshape(-1).numpy(), audio.reshape(-1).numpy())


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the common length of two 1-D arrays."""
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def compare(ours: Features, reference: Features) -> dict[str, float]:
    """``max_duration_diff`` (frames), ``corr_<feature>`` for every feature, ``rms_ratio`` (ours / reference)."""
    out = {"max_duration_diff": float(np.abs(ours.durations - reference.durations).max())}
    for key in ONNX_FEATURES:
        out[f"corr_{key}"] = correlation(ours.values[key], reference.values[key])
    out["rms_ratio"] = float(np.sqrt(np.mean(ours.wave**2)) / np.sqrt(np.mean(reference.wave**2)))
    return out
