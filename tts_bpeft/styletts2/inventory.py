"""The layer inventory of a StyleTTS 2 build: which layer types each module holds, for choosing LoRA targets.

Layer types of the generator modules, measured on the official ``Configs/config_libritts.yml`` by
``python -m tts_bpeft.styletts2.inventory --list-layers`` (:func:`layer_table`: ``wn`` weight norm, ``sn``
spectral norm, ``k`` kernel, ``s`` stride, ``d`` dilation, ``g`` groups).
Only ``g=1`` layers can take a plain LoRA; LSTMs and ConvTranspose1d need custom LoRA layers;
dilated Conv1d need a dilation-aware one::

    module             layer            detail                      count     params
    bert               Embedding        -                               3      88576
    bert               Linear           -                               8    6200576
    bert_encoder       Linear           -                               1     393728
    predictor          LSTM             -                               5    9195520
    predictor          Linear           -                              16    1610802
    predictor          Conv1d           k=3 s=1 d=1 g=1 wn             12    5120000
    predictor          Conv1d           k=1 s=1 d=1 g=1 wn              2     262656
    predictor          ConvTranspose1d  k=3 s=2 g=512 wn                2       5120
    predictor          Conv1d           k=1 s=1 d=1 g=1                 2        514
    predictor_encoder  Conv2d           k=3x3 g=1 sn                    9    7044032
    predictor_encoder  Conv2d           k=3x3 g=64 sn                   1        640
    predictor_encoder  Conv2d           k=1x1 g=1 sn                    3     172032
    predictor_encoder  Conv2d           k=3x3 g=128 sn                  1       1280
    predictor_encoder  Conv2d           k=3x3 g=256 sn                  1       2560
    predictor_encoder  Conv2d           k=3x3 g=512 sn                  1       5120
    predictor_encoder  Conv2d           k=5x5 g=1 sn                    1    6554112
    predictor_encoder  Linear           -                               1      65664
    style_encoder      (same rows as predictor_encoder)
    decoder            Conv1d           k=3 s=1 d=1 g=1 wn             26   27734784
    decoder            Linear           -                             107    5418526
    decoder            Conv1d           k=1 s=1 d=1 g=1 wn              6    4470400
    decoder            ConvTranspose1d  k=3 s=2 g=1090 wn               1       5450
    decoder            Conv1d           k=3 s=2 d=1 g=1 wn              2         10
    decoder            Conv1d           k=60 s=30 d=1 g=1               1      15616
    decoder            Conv1d           k=12 s=6 d=1 g=1                1       1664
    decoder            Conv1d           k=4 s=2 d=1 g=1                 1        320
    decoder            Conv1d           k=1 s=1 d=1 g=1                 1         64
    decoder            ConvTranspose1d  k=20 s=10 g=1 wn                1    2622208
    decoder            ConvTranspose1d  k=10 s=5 g=1 wn                 1     328064
    decoder            ConvTranspose1d  k=6 s=3 g=1 wn                  1      49344
    decoder            ConvTranspose1d  k=4 s=2 g=1 wn                  1       8288
    decoder            Conv1d           k=7 s=1 d=1 g=1 wn             29    4853218
    decoder            Conv1d           k=7 s=1 d=3 g=1 wn              7    1213248
    decoder            Conv1d           k=7 s=1 d=5 g=1 wn              7    1213248
    decoder            Conv1d           k=11 s=1 d=1 g=1 wn            20    3878912
    decoder            Conv1d           k=11 s=1 d=3 g=1 wn             5     969728
    decoder            Conv1d           k=11 s=1 d=5 g=1 wn             5     969728
    decoder            Conv1d           k=3 s=1 d=3 g=1 wn              4     262080
    decoder            Conv1d           k=3 s=1 d=5 g=1 wn              4     262080
    text_encoder       Embedding        -                               1      91136
    text_encoder       Conv1d           k=5 s=1 d=1 g=1 wn              3    3935232
    text_encoder       LSTM             -                               1    1576960
    diffusion          Linear           -                              25   24671232
    diffusion          Conv1d           k=1 s=1 d=1 g=1                 1     262400
    diffusion          Embedding        -                               1     393216

Parameters (M): bert 6.29, bert_encoder 0.39, predictor 16.19, decoder 54.29, text_encoder 5.61,
predictor_encoder 13.85, style_encoder 13.85, diffusion 25.33, text_aligner 7.87, pitch_extractor 5.25,
mpd 41.11, msd 0.28, wd 1.17.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from munch import Munch
from torch import nn

from .build import GENERATOR_MODULES, MODULE_NAMES, OFFICIAL_CONFIGS, build_styletts2, count_parameters


def generator_module_names() -> tuple[str, ...]:
    """Names of the generator modules (trained by the generator loss; no discriminators, no aux models).

    See the module docstring for their layer types in the LibriTTS config.
    """
    return GENERATOR_MODULES


@dataclass(frozen=True)
class LayerCount:
    """Number and parameter count of one kind of layer inside one top-level module."""

    module: str
    layer: str
    detail: str
    count: int
    params: int


def _norm_tag(layer: nn.Module) -> str:
    if hasattr(layer, "weight_g"):
        return " wn"
    if hasattr(layer, "weight_orig"):
        return " sn"
    return ""


def describe_layer(layer: nn.Module) -> tuple[str, str] | None:
    """(type name, detail) of a weight-carrying layer, or None for anything else.

    Detail lists kernel ``k``, stride ``s``, dilation ``d``, groups ``g`` and the weight/spectral norm tag.
    """
    if isinstance(layer, nn.Linear):
        return "Linear", "-"
    if isinstance(layer, nn.Conv1d):
        return "Conv1d", (
            f"k={layer.kernel_size[0]} s={layer.stride[0]} d={layer.dilation[0]} "
            f"g={layer.groups}{_norm_tag(layer)}"
        )
    if isinstance(layer, nn.ConvTranspose1d):
        return (
            "ConvTranspose1d",
            f"k={layer.kernel_size[0]} s={layer.stride[0]} g={layer.groups}{_norm_tag(layer)}",
        )
    if isinstance(layer, nn.Conv2d):
        k = "x".join(str(v) for v in layer.kernel_size)
        return "Conv2d", f"k={k} g={layer.groups}{_norm_tag(layer)}"
    if isinstance(layer, (nn.LSTM, nn.LSTMCell)):
        return type(layer).__name__, "-"
    if isinstance(layer, nn.Embedding):
        return "Embedding", "-"
    return None


def layer_table(model: Munch, modules: Iterable[str] | None = None) -> list[LayerCount]:
    """Counts of each (layer type, detail) in each of `modules` (default: the generator modules), in the
    order they are first met when iterating the model. Parameters are counted once per layer (its own)."""
    rows: dict[tuple[str, str, str], list[int]] = {}
    for name in modules or GENERATOR_MODULES:
        seen = set()
        for layer in model[name].modules():
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            kind = describe_layer(layer)
            if kind is None:
                continue
            entry = rows.setdefault((name, *kind), [0, 0])
            entry[0] += 1
            entry[1] += sum(p.numel() for p in layer.parameters(recurse=False))
    return [LayerCount(m, layer, detail, c, p) for (m, layer, detail), (c, p) in rows.items()]


def format_layer_table(rows: Iterable[LayerCount]) -> str:
    """The rows of :func:`layer_table` as a fixed-width text table."""
    lines = [f"{'module':<18} {'layer':<16} {'detail':<26} {'count':>6} {'params':>10}"]
    lines += [f"{r.module:<18} {r.layer:<16} {r.detail:<26} {r.count:>6} {r.params:>10}" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tts_bpeft.styletts2.inventory --list-layers [--config PATH] [--all]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list-layers", action="store_true", help="print the layer-type table")
    parser.add_argument(
        "--config",
        default=str(OFFICIAL_CONFIGS["libritts"]),
        help="config YAML (default: the official LibriTTS config)",
    )
    parser.add_argument("--all", action="store_true", help="all 13 modules, not only the generator")
    args = parser.parse_args(argv)
    if not args.list_layers:
        parser.error("nothing to do: pass --list-layers")
    model = build_styletts2(args.config)
    print(format_layer_table(layer_table(model, MODULE_NAMES if args.all else GENERATOR_MODULES)))
    print("\nparameters per module:", count_parameters(model))


if __name__ == "__main__":
    main()
