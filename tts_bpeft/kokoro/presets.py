"""LoRA target presets for Kokoro-82M (``KModel``), each a list of (layer types, module-path regex) rules.

Kokoro's modules: ``bert`` (PL-BERT, an ALBERT whose one layer runs 12 times), ``bert_encoder`` (Linear),
``predictor`` (duration encoder LSTMs with AdaLayerNorm Linear, duration LSTM and projection, the shared
F0/N LSTM, AdaIN blocks of Conv1d + Linear, F0/N projections), ``text_encoder`` (Conv1d + biLSTM) and
``decoder`` (iSTFTNet: AdaIN blocks, dilated Conv1d resblocks, ConvTranspose1d upsamplers, noise convs).

- ``paper``: every ``nn.Linear`` in bert, bert_encoder, predictor and decoder: the reference
  implementation's choice for StyleTTS 2 (Linear only), on the modules Kokoro kept.
- ``design``: every adaptable layer of the text encoder (Conv1d + LSTM), the prosody predictor (LSTM,
  Linear, Conv1d) and the decoder (Conv1d incl. dilated ones, ConvTranspose1d, Linear); PL-BERT and its
  projection stay frozen (the linguistic knowledge every voice shares). Kokoro has no style diffusion, so
  the predictor carries what StyleTTS 2's design preset adapted there: a voice's prosody.
- ``all``: every adaptable layer.

Two Linear layers never receive a gradient in Kokoro, so no preset adapts them: PL-BERT's pooler (Kokoro
reads the token states) and the decoder's harmonic-source merge ``decoder.generator.m_source.l_linear``
(run under ``no_grad``). The depthwise ``pool`` upsamplers (grouped ConvTranspose1d) cannot be adapted; the
dry run lists all of them as skipped with the reason. User patterns are added with `extra` and removed
with `exclude`.

``python -m tts_bpeft.kokoro.presets --preset design`` prints the plan on Kokoro-82M's architecture.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from torch import nn

from ..lora import LoraPlan, PresetTable
from ..lora.presets import Rule

ADAPTABLE = ("Linear", "Conv1d", "ConvTranspose1d", "LSTM")

PRESETS: dict[str, list[Rule]] = {
    "paper": [(("Linear",), r"(bert|bert_encoder|predictor|decoder)(\..*)?")],
    "design": [
        (("Conv1d", "LSTM"), r"text_encoder\..*"),
        (("LSTM", "Linear", "Conv1d"), r"predictor\..*"),
        (("Conv1d", "ConvTranspose1d", "Linear"), r"decoder\..*"),
    ],
    "all": [(ADAPTABLE, r"(bert|bert_encoder|predictor|text_encoder|decoder)(\..*)?")],
}

DESCRIPTIONS = {
    "paper": "every Linear of PL-BERT, bert_encoder, the prosody predictor and the decoder (Linear only)",
    "design": "text encoder (Conv1d, LSTM), prosody predictor (LSTM, Linear, Conv1d), decoder (Conv1d, "
              "ConvTranspose1d, Linear); PL-BERT frozen",
    "all": "every adaptable layer (Linear, Conv1d, ConvTranspose1d, LSTM) of all five modules",
}

UNUSED = {
    "bert.pooler": "PL-BERT's pooler: Kokoro reads the token states, the pooled output gets no gradient",
    "decoder.generator.m_source.l_linear": "the harmonic-source merge runs under no_grad",
}
TABLE = PresetTable(PRESETS, UNUSED)


def preset_plan(model: nn.Module, preset: str, extra: Iterable[str] = (), exclude: Iterable[str] = (),
                r: int = 16) -> LoraPlan:
    """The layers a preset (plus `extra` patterns, minus `exclude`) selects on a ``KModel``."""
    return TABLE.plan(model, preset, extra, exclude, r)


def add_preset_lora(model: nn.Module, preset: str, r: int = 16, alpha: float = 32, dropout: float = 0.0,
                    extra: Iterable[str] = (), exclude: Iterable[str] = (), adapter_name: str = "default"
                    ) -> list[str]:
    """Add LoRA to the layers of a preset (the ``KModel`` is changed in place); returns their names."""
    return TABLE.add(model, preset, r, alpha, dropout, extra, exclude, adapter_name)


def main(argv: Sequence[str] | None = None) -> None:
    """Dry run: print what a preset would adapt on Kokoro-82M's architecture (names, types, counts)."""
    parser = argparse.ArgumentParser(description="List the layers a Kokoro LoRA preset adapts.")
    parser.add_argument("--preset", default="design", choices=sorted(PRESETS))
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)
    from .architecture import build_kmodel
    from .offline import offline_config

    print(preset_plan(build_kmodel(offline_config()), args.preset, r=args.rank).format())


if __name__ == "__main__":
    main()
