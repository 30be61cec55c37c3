"""The full Kokoro forgetting comparison: a new voice (piper en_US-joe-medium) learned six ways (plain LoRA, L2-SP,
EWC, KFAC, damped KFAC, self-replay), forgetting measured on real speech, fronts over each system's strength,
two or more seeds; with ``--fisher data-free empirical`` the curvature priors once with each Fisher (the
data-free Fisher of Kokoro's own outputs vs the empirical Fisher of the fine-tuning objective on proxy
recordings of flite voices), and a table of the two side by side.

Every run is cached under ``--out`` (`tts_bpeft.kokoro.comparison`: run folders named by a hash of everything
they depend on; plain LoRA, L2-SP and replay runs are shared between the two Fishers): an interrupted benchmark
resumes where it stopped. Full settings (the defaults): 100 training and 20 held-out target recordings, 20
held-out sentences for each scored built-in voice (jf_alpha, jm_kumo; --builtin adds the others), 30 steps,
prior strengths 1, 10 and 100 (0.1 hardly moved any prior at the demo's sizes; at 10 KFAC's front still kept
98 % of plain LoRA's gain at full size) and replay fractions 0.25, 0.5, seeds 0 and 1, the empirical Fisher:
30 runs. Measured on the 2-core machine: seed 0 at strengths 1 and 10 (11 runs) 50 min 43 s idle (~9 min
data, ~4 min per run); 17 more runs (two of seed 1 were cached) 71 min 48 s with other work running (the
table in docs/kokoro.md); a second Fisher adds 12 runs (~50 min).
The demo's sizes with three seeds and both Fishers ran in 52 minutes (docs/kokoro.md, "Measured"):

    python benchmarks/forgetting_kokoro.py --train 16 --heldout 3 --builtin-sentences 2 --replay-sentences 2 \\
        --curvature-sentences 1 --proxy-sentences 2 --steps 12 --crop-frames 16 --strengths 0.1 1 10 \\
        --seeds 0 1 2 --fisher data-free empirical

    python benchmarks/forgetting_kokoro.py                                   # full, empirical Fisher
    python benchmarks/forgetting_kokoro.py --train 16 --heldout 3 --builtin-sentences 2 --replay-sentences 2 \\
        --curvature-sentences 1 --proxy-sentences 2 --steps 12 --crop-frames 16 --strengths 0.1 1 10 \\
        --seeds 0 1 2 --systems lora kfac kfac-bf16    # the compact (bf16 eigenbasis) file against the dense one
    python benchmarks/forgetting_kokoro.py --fisher data-free empirical      # both Fishers
    python benchmarks/forgetting_kokoro.py --train 8 --heldout 2 --builtin-sentences 2 --steps 4 \\
        --strengths 1 --replay-fractions 0.5 --seeds 0 --out /tmp/fk       # reduced, end to end
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tts_bpeft.io import write_text
from tts_bpeft.kokoro.comparison import (
    DEFAULT_SYSTEMS,
    FISHERS,
    PRIORS,
    SYSTEMS,
    TARGET_QUALITY,
    ComparisonSettings,
    compare_systems,
)
from tts_bpeft.quiet import silence_known_warnings

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "forgetting_kokoro")
    p.add_argument("--fisher", nargs="+", choices=FISHERS, default=["empirical"])
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(DEFAULT_SYSTEMS))
    p.add_argument("--train", type=int, default=100)
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--builtin", nargs="+", default=["jf_alpha", "jm_kumo"])
    p.add_argument("--builtin-sentences", type=int, default=20)
    p.add_argument("--replay-sentences", type=int, default=8)
    p.add_argument("--curvature-sentences", type=int, default=4)
    p.add_argument("--proxy-sentences", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--crop-frames", type=int, default=24)
    p.add_argument("--strengths", nargs="+", type=float, default=[1.0, 10.0, 100.0])
    p.add_argument("--replay-fractions", nargs="+", type=float, default=[0.25, 0.5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--tolerance", type=float, default=0.1)
    return p.parse_args()


def fisher_table(results: dict[str, dict]) -> str:
    """The curvature priors' built-in SIM at equal target quality (each measure of it), one column per Fisher."""
    fishers = list(results)
    measures = list(TARGET_QUALITY)
    lines = ["| prior | " + " | ".join(f"built-in SIM at equal {m}, {f} Fisher" for m in measures for f in fishers)
             + " |", "|---|" + "---|" * (len(measures) * len(fishers))]
    ran = {row["system"] for result in results.values() for row in result["analysis"]}
    for system in [s for s, spec in PRIORS.items() if spec.curvature and s in ran]:
        cells = []
        for measure in measures:
            for fisher in fishers:
                row = next((r for r in results[fisher]["analysis"] if r["system"] == system), None)
                stats = row["builtin_SIM_at_budget"][measure] if row else None
                cells.append("-" if not stats or not stats["n"] else f"{stats['mean']:.3f} ± {stats['sd']:.3f}")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    silence_known_warnings()
    results = {}
    for fisher in args.fisher:
        settings = ComparisonSettings(
            train=args.train, heldout=args.heldout, builtin=tuple(args.builtin),
            builtin_sentences=args.builtin_sentences, replay_sentences=args.replay_sentences,
            curvature_sentences=args.curvature_sentences, proxy_sentences=args.proxy_sentences,
            steps=args.steps, crop_frames=args.crop_frames, systems=tuple(args.systems),
            strengths=tuple(args.strengths), replay_fractions=tuple(args.replay_fractions), seeds=tuple(args.seeds),
            tolerance=args.tolerance, fisher=fisher)
        results[fisher] = compare_systems(settings, args.out, report_dir=args.out / fisher)
    if len(results) > 1:
        table = fisher_table(results)
        write_text(args.out / "fishers.md", table)
        print(table)


if __name__ == "__main__":
    main()
