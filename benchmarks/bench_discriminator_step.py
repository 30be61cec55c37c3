"""Step time of the official fine-tuning objective on the tiny StyleTTS 2 (CPU): what the discriminator
step and the adversarial / WavLM terms add to a LoRA step on the likelihood terms alone.

Run: .venv/bin/python benchmarks/bench_discriminator_step.py [--rounds N]
Tiny build (configs/tiny.yml, random weights), LoRA r=16 on the paper preset, a tiny random WavLM, one batch
of two synthetic VCTK utterances (make_vctk), decoder segments of 84 mel frames. A step = objective forward (with the
discriminator step inside, where on), backward, AdamW. Variants:

- likelihood: mel, f0, norm, dur, ce, diff, sty, mono, s2s (no discriminator);
- +gen: the mpd/msd adversarial and feature-matching term, mpd and msd trained every step;
- official: + WavLM feature loss and SLM adversarial (joint phase), wd trained every step (the official
  trains it every 10th step, so this is the worst case).

The variants alternate step by step so that machine load affects them alike; medians are shown, with the
time spent in `Discriminators.step`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tts_bpeft.speech_data.phonemes import Phonemizer
from tts_bpeft.speech_data.synthetic import make_vctk
from tts_bpeft.speech_data.vctk import read_vctk
from tts_bpeft.styletts2.adversarial import Discriminators
from tts_bpeft.styletts2.build import GENERATOR_MODULES, TINY_CONFIG, build_tiny_styletts2, load_config
from tts_bpeft.styletts2.data.dataset import TTSDataset, collate
from tts_bpeft.styletts2.losses import DEFAULT_TERMS, GeneratorObjective
from tts_bpeft.styletts2.presets import add_preset_lora
from tts_bpeft.styletts2.slm import load_slm

VARIANTS = {"likelihood": DEFAULT_TERMS, "+gen": DEFAULT_TERMS + ("gen",),
            "official": DEFAULT_TERMS + ("gen", "slm", "slmadv")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-frames", type=int, default=84, help="decoder segment, mel frames (the tests' 84)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default (a loaded 2-core machine slows 2 OpenMP threads a lot)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(TINY_CONFIG)
    model = build_tiny_styletts2(seed=0)
    for module in model.values():
        module.requires_grad_(False)
    add_preset_lora(model, "paper", r=16, alpha=32)
    for key in GENERATOR_MODULES:
        model[key].train()
    params = [p for key in GENERATOR_MODULES for p in model[key].parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.0, 0.99), eps=1e-9, weight_decay=1e-4)
    slm = load_slm(config["model_params"]["slm"], tiny=True)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "VCTK-Corpus-0.92"
        make_vctk(root, speakers=["p248"], utterances_per_speaker=2)
        utterances = read_vctk(root, speakers=["p248"]).utterances
        dataset = TTSDataset(utterances, Phonemizer(str(root / ".phonemes.json")), trim_db=30)
        items = [dataset[i] for i in range(2)]
        g = torch.Generator().manual_seed(0)
        batch = collate(items, [dataset.reference(it, g) for it in items], dataset.ref_frames)
    frames = batch.mel_lengths.tolist()

    disc_seconds: list[float] = []

    class TimedDiscriminators(Discriminators):
        def step(self, *a, **k):
            t0 = time.perf_counter()
            out = super().step(*a, **k)
            disc_seconds.append(time.perf_counter() - t0)
            return out

    disc = TimedDiscriminators(model, slm, slm_every=1)  # one set of discriminators and optimizers for all
    runs = {name: (GeneratorObjective(model, config, terms=terms, slm=slm, max_frames=args.max_frames),
                   disc if {"gen", "slmadv"} & set(terms) else None) for name, terms in VARIANTS.items()}

    times = {name: [] for name in VARIANTS}
    disc_times = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (objective, disc) in runs.items():
            disc_seconds.clear()
            t0 = time.perf_counter()
            out = objective(batch, seeds=[1, 2], epoch=0, discriminators=disc)
            optimizer.zero_grad(set_to_none=True)
            out.total.mean().backward()
            optimizer.step()
            if round_:
                times[name].append(time.perf_counter() - t0)
                disc_times[name].append(sum(disc_seconds))
    base = statistics.median(times["likelihood"])
    print(f"tiny StyleTTS 2, batch of 2 utterances ({frames} mel frames, segments <= {args.max_frames}), "
          f"{args.threads} thread(s), "
          f"median of {args.rounds} steps")
    print(f"{'variant':<12}{'step s':>9}{'ratio':>8}{'disc. step s':>14}")
    for name in VARIANTS:
        step = statistics.median(times[name])
        print(f"{name:<12}{step:>9.2f}{step / base:>8.2f}{statistics.median(disc_times[name]):>14.2f}")


if __name__ == "__main__":
    main()
