"""Kokoro's own-output curvature: file size per preset and method, and the estimation time per utterance
against a plain forward + backward of the same sampled loss without hooks (their ratio, measured side by
side in one run on the same utterances).

    python benchmarks/kokoro_curvature.py --presets paper design all --methods kfac ewc --crop 20

Weights: Kokoro-82M from the offline packages (converted and cached on first use) when installed, else the
real architecture with random weights (``--random``). Voices: the offline voicepacks (else random ones).
Texts: a few English sentences through the Kokoro front end (espeak-ng), else random token sequences.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from tts_bpeft.kokoro.architecture import build_kmodel
from tts_bpeft.kokoro.curvature import (
    OwnOutputLikelihood,
    estimate_kokoro_curvature,
    own_output_batches,
    own_output_loss_fn,
    own_output_utterances,
)
from tts_bpeft.kokoro.offline import offline_config
from tts_bpeft.kokoro.predict import KokoroUtterance
from tts_bpeft.kokoro.presets import add_preset_lora, preset_plan
from tts_bpeft.speech_data.records import Utterance

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every summer morning.",
    "A journey of a thousand miles begins with a single step forward.",
    "Please call Stella and ask her to bring these things with her from the store.",
]


def load_model(random: bool) -> tuple[torch.nn.Module, str]:
    if not random:
        try:
            from tts_bpeft.kokoro.offline import load_offline_kokoro

            return load_offline_kokoro(), "Kokoro-82M (offline int8 packages, dequantized)"
        except (FileNotFoundError, ImportError, ValueError) as err:
            print(f"offline weights unavailable ({err}); random weights")
    torch.manual_seed(0)
    return build_kmodel(offline_config()), "Kokoro-82M architecture, random weights"


def utterances(model: torch.nn.Module, n: int) -> tuple[list[KokoroUtterance], str]:
    try:
        from tts_bpeft.kokoro.offline import offline_voices

        packs = offline_voices()
    except (FileNotFoundError, ImportError):
        packs = {"random": torch.randn(510, 1, 256) * 0.2}
    voices = sorted(packs)
    records = [Utterance("", voices[i % len(voices)], SENTENCES[i % len(SENTENCES)]) for i in range(n)]
    try:
        return own_output_utterances(model.vocab, packs, records), "English sentences, offline voices"
    except Exception as err:  # no espeak-ng: random tokens of a sentence's length
        print(f"text front end unavailable ({err}); random tokens")
        g = torch.Generator().manual_seed(0)
        out = []
        for i, r in enumerate(records):
            tokens = torch.randint(1, 170, (60,), generator=g)
            tokens[0] = tokens[-1] = 0
            out.append(KokoroUtterance(f"{r.speaker}|{i}", tokens, packs[r.speaker][57].reshape(-1)))
        return out, "random tokens"


def plain_seconds(model: torch.nn.Module, utts: list[KokoroUtterance], likelihood: OwnOutputLikelihood) -> float:
    """Seconds per utterance of the same sampled loss, forward + backward into the LoRA parameters only."""
    loss_fn = own_output_loss_fn(likelihood)
    model.eval()
    start = time.perf_counter()
    for batch in own_output_batches(utts):
        loss = sum(t.sampled_nll() for t in loss_fn(model, batch)).sum()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(utts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["paper", "design", "all"])
    parser.add_argument("--methods", nargs="+", default=["kfac", "ewc", "ekfac"])
    parser.add_argument("--utterances", type=int, default=2)
    parser.add_argument("--crop", type=int, default=20, help="decoder crop in aligned frames (25 ms)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--random", action="store_true", help="random weights even if the offline packages exist")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    likelihood = OwnOutputLikelihood(crop_frames=args.crop)
    rows = []
    for preset in args.presets:
        model, source = load_model(args.random)
        utts, texts = utterances(model, args.utterances)
        plan = preset_plan(model, preset, r=args.rank)
        add_preset_lora(model, preset, r=args.rank)
        base = plain_seconds(model, utts, likelihood)
        for method in args.methods:
            start = time.perf_counter()
            curvature = estimate_kokoro_curvature(model, utts, method, likelihood, progress=False)
            seconds = (time.perf_counter() - start) / len(utts)
            with tempfile.TemporaryDirectory() as folder:
                size = curvature.save(Path(folder) / "curvature.safetensors").stat().st_size
            row = dict(preset=preset, method=method, layers=len(plan.names), lora_params=sum(
                p.lora_params for p in plan.selected), file_mb=round(size / 1e6, 1),
                seconds_per_utterance=round(seconds, 2), plain_seconds_per_utterance=round(base, 2),
                ratio=round(seconds / base, 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{source}; {texts}; {args.utterances} utterances, decoder crops of {args.crop} frames, "
          f"r={args.rank}, {torch.get_num_threads()} threads")
    print(f"{'preset':<8} {'method':<6} {'layers':>6} {'file MB':>8} {'s/utt':>7} {'plain s/utt':>11} {'ratio':>6}")
    for r in rows:
        print(f"{r['preset']:<8} {r['method']:<6} {r['layers']:>6} {r['file_mb']:>8} {r['seconds_per_utterance']:>7} "
              f"{r['plain_seconds_per_utterance']:>11} {r['ratio']:>6}")
    if args.out:
        from tts_bpeft.io import save_json

        save_json({"source": source, "texts": texts, "crop_frames": args.crop, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
