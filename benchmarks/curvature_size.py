"""Curvature file size per preset and method, and the peak memory of estimation and of the penalty, on the
full-size StyleTTS 2 (official LibriTTS config) and Kokoro-82M (`fullscale_models.py`).

    python benchmarks/curvature_size.py sizes                      # every preset of both models, no estimation
    python benchmarks/curvature_size.py memory --model styletts2 --preset paper --methods kfac ewc
    python benchmarks/curvature_size.py memory --model styletts2 --preset design --methods kfac --module decoder

Sizes are exact tensor bytes from the factor shapes (KFAC ``4 (in^2 + out^2)`` per weight matrix, EWC
``4 out in``, EKFAC both; fp32, half that in bf16), plus the safetensors/JSON header (< 0.1 %, not counted).
In the file a ConvTranspose1d's block-diagonal ``A`` (and its eigenbasis) is stored by blocks
(`tts_bpeft.curvature.blocks.BlockColumns`): ``in x width`` values plus int64 indices, ``width`` its widest
block (`input_blocks`); the "dense" columns are the factors as held in memory.

Memory: each measurement runs in its own subprocess. Phases are measured by the process's peak resident set
(VmHWM, reset between phases through ``/proc/self/clear_refs``), so each phase's peak is its own: ``setup``
(build, LoRA, data), ``plain`` (one forward + backward of the same loss into the LoRA parameters),
``estimate`` (estimation on the utterance, the result held), ``penalty`` (a prior on factors of the
estimate's shapes, forward + backward of the penalty twice). ``--module`` estimates only the preset's layers
of one top-level module (one layer group at a time, to stay within a memory limit); the float32 running sums
of the others are then absent: the script prints their exact size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fullscale_models import MODELS, PRESETS, build  # noqa: E402

from tts_bpeft import LaplacePrior, estimate_curvature  # noqa: E402
from tts_bpeft.curvature import Curvature  # noqa: E402
from tts_bpeft.curvature.blocks import block_encoding_pays, support_blocks  # noqa: E402
from tts_bpeft.curvature.storage import LayerCurvature  # noqa: E402
from tts_bpeft.layers import conv_transpose1d_phase_taps  # noqa: E402
from tts_bpeft.lora.targets import LoraTarget, lora_targets  # noqa: E402

METHODS = ("kfac", "ewc", "ekfac")


def factor_bytes(shape: tuple[int, int], method: str, itemsize: int = 4) -> int:
    """Bytes of one weight matrix's stored factors: KFAC A (in x in) and G (out x out), EWC the diagonal
    (out x in), EKFAC the two bases and the scales (out x in)."""
    n_out, n_in = shape
    kfac, diag = n_in * n_in + n_out * n_out, n_out * n_in
    return itemsize * {"kfac": kfac, "ewc": diag, "ekfac": kfac + diag}[method]


def input_blocks(target: LoraTarget) -> tuple[int, int]:
    """(count, width) of the diagonal blocks of a target's KFAC input factor ``A`` (up to a permutation): a
    ConvTranspose1d's taps that share an output phase (`conv_transpose1d_phase_taps`), each set times the input
    channels; any other layer one block of ``in_flat``."""
    n_in = target.weight().shape[1]
    if target.kind != "conv_transpose1d":
        return 1, n_in
    conv = target.base_layer
    phases = conv_transpose1d_phase_taps(conv)
    taps = torch.zeros(conv.kernel_size[0], len(phases))  # tap x phase incidence: its row sets are the blocks
    for p, members in enumerate(phases.values()):
        taps[members, p] = 1.0
    parts, _ = support_blocks(taps)
    channels = n_in // conv.kernel_size[0]
    return len(parts), channels * max(p.numel() for p in parts)


def square_file_bytes(n: int, blocks: tuple[int, int], itemsize: int) -> int:
    """Bytes of an n x n factor or eigenbasis with diagonal `blocks` (count, width) in a curvature file: dense, or
    by blocks where that is smaller (`block_encoding_pays`; values n x width, int64 index count x width and
    block n)."""
    count, width = blocks
    if block_encoding_pays(n, n, count, width):
        return itemsize * n * width + 8 * (count * width + n)
    return itemsize * n * n


def file_bytes(target: LoraTarget, method: str, itemsize: int = 4) -> int:
    """Bytes of one target's factors in a curvature file (`factor_bytes`, with ``A`` and EKFAC's ``A_basis`` by
    blocks: `square_file_bytes`); KFAC in `itemsize` < 4 is the eigenbasis with every eigenpair (vectors of
    the same pattern, and the eigenvalues)."""
    n_out, n_in = target.weight().shape
    square = square_file_bytes(n_in, input_blocks(target), itemsize) + square_file_bytes(n_out, (1, n_out), itemsize)
    diag = itemsize * n_out * n_in
    eigenvalues = itemsize * (n_in + n_out) if method == "kfac" and itemsize < 4 else 0
    return {"kfac": square + eigenvalues, "ewc": diag, "ekfac": square + diag}[method]


def _peak_mib() -> float:
    """Peak resident set of this process since the last `_reset_peak` (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    """Reset the peak to the current resident set; returns that (MiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_mib()


def sizes(models: list[str]) -> list[dict]:
    """File sizes of every preset of `models` (fp32 and bf16, MB = 1e6 bytes), from the adapted weights' shapes."""
    rows = []
    for name in models:
        for preset in PRESETS:
            setup = build(name, preset, utterances=1)
            targets = list(lora_targets(setup.model.net).values())
            row = {"model": name, "preset": preset, "matrices": len(targets)}
            for method in METHODS:
                dense = sum(factor_bytes(tuple(t.weight().shape), method) for t in targets)
                row[f"{method}_dense_mb"] = round(dense / 1e6, 1)
                for dtype, itemsize in (("", 4), ("_bf16", 2)):
                    row[f"{method}{dtype}_mb"] = round(sum(file_bytes(t, method, itemsize) for t in targets) / 1e6, 1)
            largest = max(targets, key=lambda t: file_bytes(t, "kfac"))
            row["largest_kfac_matrix"] = (f"{' x '.join(map(str, largest.weight().shape))}: "
                                          f"{file_bytes(largest, 'kfac') / 1e6:.0f} MB")
            rows.append(row)
            print(json.dumps(row), flush=True)
            del setup
    return rows


def placeholder_curvature(shapes: dict[str, tuple[int, int]], method: str) -> Curvature:
    """A curvature with factors of the given shapes (identity factors, unit diagonals): the penalty's time
    and memory depend on the shapes only."""
    layers = {}
    for name, (n_out, n_in) in shapes.items():
        if method == "kfac":
            term = {"A": torch.eye(n_in), "G": torch.eye(n_out)}
        elif method == "ewc":
            term = {"diag": torch.ones(n_out, n_in)}
        else:
            term = {"A_basis": torch.eye(n_in), "G_basis": torch.eye(n_out), "scales": torch.ones(n_out, n_in)}
        layers[name] = LayerCurvature("linear", (n_out, n_in), [term], [1])
    return Curvature(method, "empirical", None if method == "ewc" else "expand", layers, 1)


def memory(model_name: str, preset: str, method: str, module: str | None, max_frames: int,
           save: Path | None = None) -> dict:
    """Peak memory (MiB) of each phase for one model, preset and method (this process); `save`: write the
    estimate there (float32) for `curvature_storage.py`."""
    setup = build(model_name, preset, utterances=1, max_frames=max_frames)
    net = setup.model.net
    targets = lora_targets(net)
    if module:
        targets = {n: t for n, t in targets.items() if n.split(".")[0] == module}
    shapes = {n: tuple(t.weight().shape) for n, t in targets.items()}
    others = {n: tuple(t.weight().shape) for n, t in lora_targets(net).items() if n not in shapes}
    out = {"model": model_name, "preset": preset, "method": method, "module": module or "all",
           "matrices": len(shapes), "setup_peak_mib": _peak_mib()}
    lora = [p for n, p in (net.named_parameters() if hasattr(net, "named_parameters") else
                           ((f"{k}.{n}", p) for k, m in net.items() for n, p in m.named_parameters()))
            if ".lora_" in f".{n}"]
    out["resident_before_plain_mib"] = _reset_peak()
    batch = setup.curvature_batches[0]
    losses = setup.loss_fn(net, batch)
    loss = losses if isinstance(losses, torch.Tensor) else sum(t.nll() for t in losses)
    torch.autograd.grad(loss.sum(), lora, allow_unused=True)
    out["plain_peak_mib"] = _peak_mib()
    del losses, loss
    out["resident_before_estimate_mib"] = _reset_peak()
    start = time.perf_counter()
    curvature = estimate_curvature(net, setup.curvature_batches, setup.loss_fn, method=method, fisher=setup.fisher,
                                   targets=targets, progress=False)
    out["estimate_seconds"] = round(time.perf_counter() - start, 1)
    out["estimate_peak_mib"] = _peak_mib()
    out["dense_mb"] = round(sum(v.numel() * v.element_size() for layer in curvature.layers.values()
                                for term in layer.terms for v in term.values()) / 1e6, 1)
    out["sums_of_other_layers_mib"] = round(sum(factor_bytes(s, method) for s in others.values()) / 2**20, 1)
    if save is not None:
        out["file_mb"] = round(curvature.save(save).stat().st_size / 1e6, 1)
    del curvature
    placeholder = placeholder_curvature({n: tuple(t.weight().shape) for n, t in lora_targets(net).items()}, method)
    prior = LaplacePrior(placeholder, lam=1.0, scaling="package")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.01)
    before = _reset_peak()
    for _ in range(2):
        prior.penalty(net).backward()
    out["penalty_curvature_mb"] = round(sum(factor_bytes(ly.shape, method) for ly in placeholder.layers.values())
                                        / 1e6, 1)
    out["penalty_peak_mib"] = _peak_mib()
    out["penalty_extra_mib"] = round(out["penalty_peak_mib"] - before, 1)
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("sizes", "memory"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--preset", choices=PRESETS)
    parser.add_argument("--methods", nargs="+", default=["kfac", "ewc"], choices=METHODS)
    parser.add_argument("--module", help="estimate only the preset's layers of this top-level module")
    parser.add_argument("--max-frames", type=int, default=160, help="mel frames (12.5 ms) of the utterance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the (first method's) estimate here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a subprocess's single measurement
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "sizes":
        rows = sizes(args.models)
        print(f"\n{'model':<10} {'preset':<7} {'matrices':>8} {'KFAC MB':>8} {'(dense)':>8} {'EWC MB':>7} "
              f"{'EKFAC MB':>9} {'(dense)':>8} {'KFAC bf16':>9}  largest KFAC matrix (file)")
        for r in rows:
            print(f"{r['model']:<10} {r['preset']:<7} {r['matrices']:>8} {r['kfac_mb']:>8} {r['kfac_dense_mb']:>8} "
                  f"{r['ewc_mb']:>7} {r['ekfac_mb']:>9} {r['ekfac_dense_mb']:>8} {r['kfac_bf16_mb']:>9}  "
                  f"{r['largest_kfac_matrix']}")
        return
    if args.one:
        print(json.dumps(memory(args.model, args.preset, args.methods[0], args.module, args.max_frames, args.save)))
        return
    for method in args.methods:  # one subprocess per method: each peak is its own
        command = [sys.executable, __file__, "memory", "--one", "--model", args.model, "--preset", args.preset,
                   "--methods", method, "--max-frames", str(args.max_frames), "--threads", str(args.threads)]
        if args.module:
            command += ["--module", args.module]
        if args.save:
            command += ["--save", str(args.save.with_name(f"{args.save.stem}_{method}{args.save.suffix}"))]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            continue
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
