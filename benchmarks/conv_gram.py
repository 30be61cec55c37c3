"""A stride-1 Conv1d's KFAC input Gram matrix: dense (patches, one product) vs by lags (k products), CPU.

Run: .venv/bin/python benchmarks/conv_gram.py [--repeats N] [--threads T]
Prints per shape (channels, kernel, dilation, positions) the median seconds of both forms, added into an existing
sum as the capture does, alternating; their ratio; the relative difference; and which form the capture takes
(`tts_bpeft.curvature.calls.lagged_gram_fits`). Shapes: the StyleTTS 2 / Kokoro decoders' convolutions at
the frame rate (80-160 positions) and the generator's resblocks at the waveform rates (1600, 9601).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tts_bpeft.curvature import calls
from tts_bpeft.layers import conv1d_padded_input

SHAPES = [(1024, 3, 1, 80), (512, 3, 1, 160), (512, 5, 1, 64), (1024, 3, 1, 256), (256, 7, 1, 400),
          (256, 11, 1, 1600), (128, 3, 1, 9601), (128, 7, 3, 9601), (128, 11, 5, 9601)]


def compare(n_in: int, k: int, dilation: int, positions: int, repeats: int) -> tuple[float, float, float, str]:
    """(dense ms, lags ms, relative difference of the sums, the form the capture takes) for one 'same'-padded
    Conv1d call, the two forms alternating."""
    conv = nn.Conv1d(n_in, n_in, k, padding="same", dilation=dilation)
    x = torch.randn(1, n_in, positions)
    call, mask = calls.Conv1dCall(conv, x, positions), torch.ones(1, positions, dtype=torch.bool)
    totals = {"dense": torch.zeros(n_in * k, n_in * k), "lags": torch.zeros(n_in * k, n_in * k)}

    def dense() -> None:
        patches = call.patches(mask)
        calls.add_gram(totals["dense"], patches.reshape(-1, patches.shape[-1]))

    def lags() -> None:
        calls._add_lagged_gram(totals["lags"], conv1d_padded_input(conv, x), k, dilation)

    times = {"dense": [], "lags": []}
    dense(), lags()  # warm-up
    for _ in range(repeats):
        for name, run in (("dense", dense), ("lags", lags)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    diff = ((totals["dense"] - totals["lags"]).norm() / totals["dense"].norm()).item()
    form = "lags" if calls.lagged_gram_fits(conv, positions, x.device) else "dense"
    return statistics.median(times["dense"]) * 1e3, statistics.median(times["lags"]) * 1e3, diff, form


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'in':>5} {'k':>3} {'dil':>4} {'positions':>9} {'dense ms':>9} {'lags ms':>8} {'dense/lags':>10} "
          f"{'rel diff':>9}  capture")
    for n_in, k, dilation, positions in SHAPES:
        d, g, diff, form = compare(n_in, k, dilation, positions, args.repeats)
        print(f"{n_in:>5} {k:>3} {dilation:>4} {positions:>9} {d:>9.2f} {g:>8.2f} {d / g:>10.2f} {diff:>9.1e}  {form}")


if __name__ == "__main__":
    main()
