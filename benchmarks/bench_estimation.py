"""KFAC estimation time and peak memory: tts_bpeft vs plain forward+backward vs curvlinops (same factors).

Run: .venv/bin/python benchmarks/bench_estimation.py [--width 2048]
Model: 4 Linear layers (width 512, or --width: 2048 is OPT-1.3B's hidden size) on token sequences (batch 8 x 64
tokens, 6 batches), cross-entropy over 256 classes; KFAC expand, empirical Fisher, all four weights. Each variant
runs in its own subprocess so that its peak resident memory (resource.getrusage(RUSAGE_SELF).ru_maxrss, which
includes the interpreter, torch and the model) is its own; "extra" subtracts the peak of a process that only builds
the model and data.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from curvlinops import KFACLinearOperator
from curvlinops.kfac import FisherType
from torch import nn

from tts_bpeft import estimate_curvature  # imported up front: every variant's process holds the same libraries

DEPTH, CLASSES, BATCH, TOKENS, BATCHES = 4, 256, 8, 64, 6


class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(DEPTH - 1)])
        self.out = nn.Linear(width, CLASSES)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.out(x)


class ClassesSecond(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).transpose(1, 2)


def setup(width: int):
    torch.manual_seed(0)
    model = Net(width)
    data = [(torch.randn(BATCH, TOKENS, width), torch.randint(0, CLASSES, (BATCH, TOKENS))) for _ in range(BATCHES)]
    return model, data


def per_sample(m, batch):
    return F.cross_entropy(m(batch[0]).transpose(1, 2), batch[1], reduction="none").sum(1)


def run(mode: str, width: int) -> dict:
    model, data = setup(width)
    t0 = time.perf_counter()
    if mode == "plain":
        params = list(model.parameters())
        for batch in data:
            torch.autograd.grad(per_sample(model, batch).sum(), params)
    elif mode == "tts_bpeft":
        estimate_curvature(model, data, per_sample, targets=["Linear"], progress=False)
    elif mode == "curvlinops":
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        op = KFACLinearOperator(ClassesSecond(model), nn.CrossEntropyLoss(reduction="sum"), weights, data,
                                fisher_type=FisherType.EMPIRICAL, check_deterministic=False,
                                num_data=BATCH * BATCHES, num_per_example_loss_terms=TOKENS)
        op.compute_kronecker_factors()
    elif mode != "idle":
        raise ValueError(mode)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see bench_penalty.py)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--width", type=int, default=512, help="width of the Linear layers")
    args = parser.parse_args()
    if args.width < 1:
        parser.error(f"--width {args.width}: the Linear layers' width must be >= 1")
    torch.set_num_threads(args.threads)
    if args.mode:
        print(json.dumps(run(args.mode, args.width)))
        return
    results = {}
    for mode in ("idle", "plain", "tts_bpeft", "curvlinops"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--threads", str(args.threads),
                                  "--width", str(args.width)],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        results[mode] = {"seconds": min(r["seconds"] for r in runs), "maxrss_mib": min(r["maxrss_mib"] for r in runs)}
    base = results["idle"]["maxrss_mib"]
    print(f"torch {torch.__version__}, threads {args.threads}; {DEPTH} Linear {args.width}-wide, {BATCHES} batches of "
          f"{BATCH} x {TOKENS} tokens; best of {args.repeats}; memory = peak RSS (getrusage ru_maxrss)")
    print(f"{'variant':<12} {'seconds':>8} {'vs plain':>9} {'peak MiB':>9} {'extra MiB':>10}")
    for mode in ("plain", "tts_bpeft", "curvlinops"):
        r = results[mode]
        print(f"{mode:<12} {r['seconds']:>8.3f} {r['seconds'] / results['plain']['seconds']:>8.2f}x "
              f"{r['maxrss_mib']:>9.0f} {r['maxrss_mib'] - base:>10.0f}")
    print(f"tts_bpeft / curvlinops time: {results['tts_bpeft']['seconds'] / results['curvlinops']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
