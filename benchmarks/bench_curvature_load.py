"""The time the curvature-file checks add to loading a ~200 MB file: `Curvature.load` (header checksum, tensor
checksums, dtype, finiteness, non-negativity, symmetry, PSD) vs reading the same tensors as float32 without
any check, side by side in one run, for a KFAC and an EWC file.

Run: .venv/bin/python benchmarks/bench_curvature_load.py [--megabytes 200] [--size 1024] [--repeats 3]
     [--threads 1]
Prints per file the median time of both reads and their ratio (the file is read from the page cache after the
first read, so both measure the CPU work, not the disk).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from tts_bpeft.curvature.storage import Curvature, LayerCurvature


def gram(n: int, g: torch.Generator) -> torch.Tensor:
    X = torch.randn(n, 2 * n, generator=g)
    return X @ X.T / X.shape[1]


def synthetic(method: str, megabytes: int, size: int) -> Curvature:
    """A curvature of square `size` x `size` layers adding up to about `megabytes` of float32."""
    g = torch.Generator().manual_seed(0)
    per_layer = (2 if method == "kfac" else 1) * size * size * 4
    layers = {}
    for i in range(max(1, megabytes * 2**20 // per_layer)):
        term = ({"A": gram(size, g), "G": gram(size, g)} if method == "kfac"
                else {"diag": torch.rand(size, size, generator=g)})
        layers[f"block{i}.linear"] = LayerCurvature("linear", (size, size), [term], [1000], f"{i:016x}")
    return Curvature(method, "empirical", "expand" if method == "kfac" else None, layers, samples=100,
                     fingerprint="0123456789abcdef", description="benchmark")


def unchecked(path: Path) -> dict[str, torch.Tensor]:
    """The tensors as float32, each summed once so that its bytes are really read (safetensors maps lazily)."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    for value in tensors.values():
        value.sum()
    return tensors


def median_time(read, path: Path, repeats: int) -> float:
    read(path)  # warm-up (page cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024, help="rows of each (square) layer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a loaded 2-core machine 2 OpenMP threads make small "
                             "ops many times slower (spin/wait at every barrier), which would measure the machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'file':>26} {'MB':>6} {'unchecked s':>12} {'load s':>8} {'ratio':>6} {'added s':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for method in ("kfac", "ewc"):
            path = synthetic(method, args.megabytes, args.size).save(Path(folder) / f"{method}.safetensors")
            plain = median_time(unchecked, path, args.repeats)
            checked = median_time(Curvature.load, path, args.repeats)
            megabytes = path.stat().st_size / 2**20
            print(f"{method + f' ({args.size} x {args.size})':>26} {megabytes:6.0f} {plain:12.3f} {checked:8.3f} "
                  f"{checked / plain:6.1f} {checked - plain:8.3f}")


if __name__ == "__main__":
    main()
