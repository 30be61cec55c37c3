"""LoRA target presets for StyleTTS 2, each a list of (layer types, module-path regex) rules.

- ``paper``: every ``nn.Linear`` in bert, bert_encoder, predictor, predictor_encoder, style_encoder,
  decoder and diffusion: the reference implementation's choice (Chen & Garner).
- ``design``: the text encoder (Conv1d + LSTM), the decoder (Conv1d incl. dilated ones, ConvTranspose1d,
  the AdaIN Linear layers) and the style diffusion (all Linear): the design card's choice, possible only
  with this package's LoRA layers.
- ``all``: every adaptable layer of the generator modules.

Two Linear layers never receive a gradient in StyleTTS 2, so no preset adapts them (they would learn
nothing and have no curvature): PL-BERT's pooler (StyleTTS 2 reads the token states) and the decoder's
harmonic-source merge ``decoder.generator.m_source.l_linear`` (the original runs it under ``no_grad``).

Grouped convolutions (the decoder's and predictor's depthwise ``pool`` upsamplers) and Conv2d layers
(style encoders) cannot be adapted; the dry run lists them as skipped. User patterns are added with
`extra` (more name patterns, any supported type) and removed with `exclude`.

``python -m tts_bpeft.styletts2.presets --preset design`` prints the plan for the tiny build (or
``--config path/to/config.yml`` for a real one).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, MutableMapping, Sequence

from torch import nn

from ..lora import LoraPlan
from ..lora.presets import PresetTable, Rule

_GENERATOR = r"(bert|bert_encoder|predictor|predictor_encoder|style_encoder|decoder|diffusion|text_encoder)(\..*)?"

PRESETS: dict[str, list[Rule]] = {
    "paper": [(("Linear",), r"(bert|bert_encoder|predictor|predictor_encoder|style_encoder|decoder|diffusion)(\..*)?")],
    "design": [
        (("Conv1d", "LSTM"), r"text_encoder\..*"),
        (("Conv1d", "ConvTranspose1d", "Linear"), r"decoder\..*"),
        (("Linear",), r"diffusion\..*"),
    ],
    "all": [(("Linear", "Conv1d", "ConvTranspose1d", "LSTM"), _GENERATOR)],
}

PRESET_DESCRIPTIONS = {
    "paper": "every Linear of bert, bert_encoder, predictor, style encoders, decoder, diffusion (Chen & Garner)",
    "design": "text encoder Conv1d + LSTM, decoder Conv1d / ConvTranspose1d / AdaIN Linear, diffusion Linear",
    "all": "every Linear, Conv1d, ConvTranspose1d and LSTM of the generator modules",
}

UNUSED = {
    "bert.pooler": "PL-BERT's pooler: StyleTTS 2 reads the token states, the pooled output gets no gradient",
    "decoder.generator.m_source.l_linear": "the harmonic-source merge runs under no_grad",
}
TABLE = PresetTable(PRESETS, UNUSED)


def preset_plan(model: MutableMapping[str, nn.Module], preset: str, extra: Iterable[str] = (),
                exclude: Iterable[str] = (), r: int = 16) -> LoraPlan:
    """The layers a preset (plus `extra` patterns, minus `exclude`) selects on this model."""
    return TABLE.plan(model, preset, extra, exclude, r)


def add_preset_lora(model: MutableMapping[str, nn.Module], preset: str, r: int = 16, alpha: float = 32,
                    dropout: float = 0.0, extra: Iterable[str] = (), exclude: Iterable[str] = (),
                    adapter_name: str = "default") -> list[str]:
    """Add LoRA to the layers of a preset (the model dict is changed in place); returns their names."""
    return TABLE.add(model, preset, r, alpha, dropout, extra, exclude, adapter_name)


def main(argv: Sequence[str] | None = None) -> None:
    """Dry run: print what a preset would adapt (names, types, parameter counts)."""
    parser = argparse.ArgumentParser(description="List the layers a StyleTTS 2 LoRA preset adapts.")
    parser.add_argument("--preset", default="design", choices=sorted(PRESETS))
    parser.add_argument("--config", help="official config.yml (default: the tiny test build)")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)
    from .build import build_styletts2, build_tiny_styletts2

    model = build_styletts2(args.config) if args.config else build_tiny_styletts2()
    print(preset_plan(model, args.preset, r=args.rank).format())


if __name__ == "__main__":
    main()
