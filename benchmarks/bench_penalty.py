"""r x r KFAC penalty (forward + backward) vs the dense form tr(dW^T G dW A), fp32, CPU.

Run: .venv/bin/python benchmarks/bench_penalty.py [--repeats N]
Prints per size the median time of both forms, their ratio and the relative difference of the values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tts_bpeft.prior import Kronecker


def spd(n: int, g: torch.Generator) -> torch.Tensor:
    X = torch.randn(n, n // 4 + 1, generator=g)
    return X @ X.T / X.shape[1] + 1e-3 * torch.eye(n)


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times, value = [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a loaded 2-core machine 2 OpenMP threads make small "
                             "ops ~200x slower (spin/wait at every barrier), which would measure the machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    r, s = args.rank, 2.0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, r={r}, fp32, forward+backward")
    print(f"{'out x in':>12} {'low-rank ms':>12} {'dense ms':>10} {'speed-up':>9} {'rel diff':>9}")
    for n_out, n_in in [(512, 512), (2048, 2048), (2048, 8192)]:
        G, A_F = spd(n_out, g), spd(n_in, g)
        B = (0.1 * torch.randn(n_out, r, generator=g)).requires_grad_()
        A = (0.1 * torch.randn(r, n_in, generator=g)).requires_grad_()
        form = Kronecker([{"A": A_F, "G": G}])

        def low_rank(B=B, A=A, form=form):
            q = form(B, A, s)
            q.backward()
            B.grad = A.grad = None
            return q.item()

        def dense(B=B, A=A, G=G, A_F=A_F):
            dW = s * (B @ A)
            q = (dW * (G @ dW @ A_F)).sum()
            q.backward()
            B.grad = A.grad = None
            return q.item()

        t_low, v_low = timed(low_rank, args.repeats)
        t_dense, v_dense = timed(dense, args.repeats)
        print(f"{n_out:>5} x {n_in:<5} {1e3 * t_low:>12.2f} {1e3 * t_dense:>10.2f} {t_dense / t_low:>8.1f}x "
              f"{abs(v_low - v_dense) / abs(v_dense):>9.1e}")


if __name__ == "__main__":
    main()
