"""Compact curvature storage: file size and penalty error of half-precision and eigen-truncated KFAC factors.

    python benchmarks/curvature_storage.py /path/to/kfac.safetensors [--energies 1.0 0.9999 0.999 0.99]

Input: a float32 KFAC file (e.g. `curvature_size.py memory --save`). Variants: the dense float32 file (the
reference); its eigenbasis with every eigenpair (``compress(energy=1.0)``) and truncated to a trace share
(``compress(energy=e)``), each stored in float32 and bfloat16. Dense factors cannot be stored in bf16 (the
rounding breaks positive semi-definiteness: `Curvature.save`). Each variant is written, its size measured,
read back through `Curvature.load` (every check), and its penalty compared with the reference's on two kinds of
rank-16 LoRA shifts ``dW = B A`` per layer (package scaling, no damping):

- random: B, A with i.i.d. normal entries (isotropic; the dropped directions count as much as the kept);
- gradient-like: ``B = G^(1/2) Z_B``, ``A = Z_A A^(1/2)`` (Z normal): shifts whose directions are distributed
  as the per-sample gradients (their covariance is the Fisher), i.e. as fine-tuning steps are.

Relative error of the total ``sum_l q_l`` and the largest per-layer relative error, over 4 draws each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from tts_bpeft.curvature import Curvature
from tts_bpeft.prior import curvature_form

RANK, DRAWS = 16, 4


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(matrix.double())
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def shifts(reference: Curvature, kind: str, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (B (out, r), A (r, in)) of one draw."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in reference.layers.items():
        n_out, n_in = layer.shape
        B, A = torch.randn(n_out, RANK, generator=g), torch.randn(RANK, n_in, generator=g)
        if kind == "gradient-like":
            A_f, G_f = reference.kronecker_factors(name)
            B, A = (_sqrt_psd(G_f) @ B.double()).float(), (A.double() @ _sqrt_psd(A_f)).float()
        out[name] = (B, A)
    return out


def penalties(curvature: Curvature, draws: list[dict]) -> list[dict[str, float]]:
    forms = {name: curvature_form(curvature, name) for name in curvature.names}
    return [{name: float(forms[name](B, A, 1.0)) for name, (B, A) in draw.items()} for draw in draws]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--energies", nargs="+", type=float, default=[1.0, 0.9999, 0.999, 0.99])
    args = parser.parse_args()
    reference = Curvature.load(args.path)
    draws = {kind: [shifts(reference, kind, seed) for seed in range(DRAWS)] for kind in ("random", "gradient-like")}
    exact = {kind: penalties(reference, d) for kind, d in draws.items()}
    full = reference.compress(energy=1.0)
    variants = {"dense float32": (reference, None)}
    for energy in args.energies:
        compressed = full.compress(energy=energy) if energy < 1 else full
        for dtype in (torch.float32, torch.bfloat16):
            variants[f"eigen {energy:g} {str(dtype)[6:]}"] = (compressed, dtype)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, (curvature, dtype) in variants.items():
            path = curvature.save(Path(folder) / "c.safetensors", dtype=dtype)
            size = path.stat().st_size
            loaded = Curvature.load(path)
            row = {"variant": label, "file_mb": round(size / 1e6, 1)}
            for kind, d in draws.items():
                got = penalties(loaded, d)
                total = [abs(sum(g.values()) / sum(e.values()) - 1) for g, e in zip(got, exact[kind])]
                layer = [abs(g[n] / e[n] - 1) for g, e in zip(got, exact[kind]) for n in e if e[n] > 0]
                row[f"{kind} total"], row[f"{kind} worst layer"] = max(total), max(layer)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.path}: {len(reference.names)} layers; rank-{RANK} shifts, {DRAWS} draws; relative errors of q")
    print(f"{'variant':<22} {'MB':>8} {'random total':>13} {'worst layer':>12} {'grad-like total':>16} "
          f"{'worst layer':>12}")
    for r in rows:
        print(f"{r['variant']:<22} {r['file_mb']:>8} {r['random total']:>13.2e} {r['random worst layer']:>12.2e} "
              f"{r['gradient-like total']:>16.2e} {r['gradient-like worst layer']:>12.2e}")


if __name__ == "__main__":
    main()
