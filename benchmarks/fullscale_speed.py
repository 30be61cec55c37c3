"""Speed at full scale: curvature estimation vs a plain forward + backward of the same loss, and the
fine-tuning step with each prior form vs plain LoRA, measured side by side in one run (`fullscale_models.py`).

    python benchmarks/fullscale_speed.py --model styletts2 --preset design --steps 3
    python benchmarks/fullscale_speed.py --model kokoro --preset design --device cuda --amp --steps 50

Estimation: seconds per utterance of `estimate_curvature` (each method) against one forward + backward of the
same per-utterance loss into the LoRA parameters (eval mode, the same utterances), and their ratio; and against
its arithmetic floor: that plain pass plus the products no estimator can skip, timed on random tensors of each
layer's real shapes (P = the layer's positions per utterance, counted by the KFAC estimate): KFAC ``a^T a``
(P x in_flat) and ``g^T g`` (P x out), EWC the per-sample gradient ``g^T a``; for a ConvTranspose1d ``a`` is
taken per output phase (P/stride x in*taps: its patches are zero at the other taps), and a stride-1 Conv1d's
on the CPU as k blocks of the input's width (KFAC sums its Gram matrix by lags there). Medians of
``--estimation-rounds`` rounds, the plain pass and each method in turn, after one untimed plain pass (a single
cold measurement flattered the estimation: the plain pass then carried the first-call allocations). The floor's
products are timed in each round right after that round's passes, and the ratio to the floor is the median of
the rounds' ratios (timed after all rounds, the floor's products varied by 70 % between two runs on the shared
machine while the passes varied by 2 %).

Fine-tuning step: forward and backward of the fine-tuning loss on one batch, the prior's penalty forward and
backward, an AdamW step over the LoRA parameters. The variants (plain LoRA, L2-SP, EWC, KFAC, EKFAC) run in
turn, round after round (after one untimed round), so that machine load affects all alike; medians per variant
and their ratio to plain LoRA. The penalty's forward and backward are also timed alone inside each step:
``(plain + penalty) / plain`` is the step ratio from that median, steadier on a loaded machine, where whole
steps of the same variant varied by up to 20 % from round to round. KFAC and EWC use the estimates just made; EKFAC
uses its estimate when ``ekfac`` is among ``--methods``, else factors of its shapes (identity bases, unit
scales: the penalty's cost depends on the shapes only). ``kfac-k``: the KFAC estimate eigen-truncated to
``--compress-energy`` of each factor's trace (`Curvature.compress`; the penalty's products are then k-wide),
with its penalty's relative error against the dense factors at the LoRA weights the steps reached. ``--amp``:
the step's forward under bf16 autocast (the penalty stays float32). On a GPU the clock is read after
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curvature_size import placeholder_curvature  # noqa: E402
from fullscale_models import MODELS, PRESETS, build  # noqa: E402

from tts_bpeft import Curvature, LaplacePrior, estimate_curvature  # noqa: E402
from tts_bpeft.curvature.calls import lagged_gram_fits  # noqa: E402
from tts_bpeft.layers import conv_transpose1d_phase_taps  # noqa: E402
from tts_bpeft.lora.targets import lora_targets  # noqa: E402

VARIANTS = ("none", "l2sp", "ewc", "kfac", "kfac-k", "ekfac")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lora_parameters(net) -> list[torch.nn.Parameter]:
    modules = net.values() if isinstance(net, dict) else [net]
    return [p for m in modules for n, p in m.named_parameters() if ".lora_" in f".{n}"]


def _input_widths(target, rows: int, device: torch.device) -> list[tuple[int, int]]:
    """(rows, width) of the input blocks a layer's products must touch for `rows` positions: the full patches;
    for a ConvTranspose1d one block per output phase (its patches are zero at the taps a phase does not see,
    `conv_transpose1d_phase_taps`); for a Conv1d whose Gram matrix is taken by lags (`lagged_gram_fits`) one
    block of the input's width per tap."""
    conv = target.base_layer
    if target.kind == "conv1d" and lagged_gram_fits(conv, rows, device):
        return [(rows, conv.in_channels)] * conv.kernel_size[0]
    if target.kind != "conv_transpose1d":
        return [(rows, target.weight().shape[1])]
    return [(max(1, round(rows / conv.stride[0])), conv.in_channels * len(taps))
            for taps in conv_transpose1d_phase_taps(conv).values()]


def floor_seconds(kfac: Curvature, targets: dict, method: str, utterances: int, device: torch.device) -> float:
    """Seconds per utterance of the products `method`'s estimation cannot skip, on random float32 tensors of
    each layer's shapes with ``P = tokens / utterances`` rows (`kfac`'s token counts): KFAC ``a^T a`` and
    ``g^T g``, EWC ``g^T a`` (``a`` per output phase for a ConvTranspose1d, `_input_widths`)."""
    total = 0.0
    for name, layer in kfac.layers.items():
        n_out = layer.shape[0]
        rows = max(1, round(sum(layer.tokens) / utterances))
        blocks = [torch.randn(n, width, device=device) for n, width in _input_widths(targets[name], rows, device)]
        g = torch.randn(rows, n_out, device=device)
        _sync(device)
        start = time.perf_counter()
        if method == "kfac":
            g.T @ g
            for a in blocks:
                a.T @ a
        else:
            for a in blocks:
                g[:a.shape[0]].T @ a
        _sync(device)
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="styletts2")
    parser.add_argument("--preset", choices=PRESETS, default="design")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="rounds of fine-tuning steps (each variant once a round)")
    parser.add_argument("--utterances", type=int, default=2, help="utterances of the estimation")
    parser.add_argument("--estimation-rounds", type=int, default=3,
                        help="rounds of the plain pass and each estimation in turn (medians)")
    parser.add_argument("--methods", nargs="+", default=["kfac", "ewc"], choices=("kfac", "ewc", "ekfac"))
    parser.add_argument("--max-frames", type=int, default=160, help="mel frames (12.5 ms) per utterance")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in the fine-tuning step's forward")
    parser.add_argument("--compress-energy", type=float, default=0.9999,
                        help="variant kfac-k: KFAC factors keeping this fraction of each trace (0: no such variant)")
    parser.add_argument("--tiny", action="store_true", help="StyleTTS 2's tiny build (checks the script quickly)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not 0 <= args.compress_energy <= 1:
        parser.error(f"--compress-energy {args.compress_energy}: a trace fraction in (0, 1], 0 for no kfac-k")
    for option in ("steps", "estimation_rounds", "utterances"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} {getattr(args, option)}: at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setup = build(args.model, args.preset, args.utterances, args.max_frames, device=args.device, tiny=args.tiny)
    net, lora = setup.model.net, _lora_parameters(setup.model.net)
    for module in (net.values() if isinstance(net, dict) else [net]):
        module.eval()
    result = {"model": setup.description, "preset": args.preset, "device": str(device), "amp": args.amp,
              "matrices": len(lora_targets(net)), "estimation": {}, "step_seconds": {}}
    print(f"{setup.description}; preset {args.preset}, {result['matrices']} adapted weight matrices; {device}",
          flush=True)

    # estimation vs plain forward + backward, per utterance: rounds of the plain pass and each method in turn
    # (medians), after one untimed plain pass (first-call allocations)
    def plain_pass(batch) -> None:
        out = setup.loss_fn(net, batch)
        loss = out if isinstance(out, torch.Tensor) else sum(t.sampled_nll() for t in out)
        torch.autograd.grad(loss.sum(), lora, allow_unused=True)

    def estimate(method: str) -> None:
        curvatures[method] = estimate_curvature(net, setup.curvature_batches, setup.loss_fn, method=method,
                                                fisher=setup.fisher, progress=False)

    def timed(run, *run_args) -> float:
        _sync(device)
        start = time.perf_counter()
        run(*run_args)
        _sync(device)
        return (time.perf_counter() - start) / args.utterances

    plain_pass(setup.curvature_batches[0])
    curvatures: dict[str, Curvature] = {}
    floored = [m for m in ("kfac", "ewc") if m in args.methods and "kfac" in args.methods]
    seconds: dict[str, list[float]] = {"plain": [], **{m: [] for m in args.methods},
                                       **{f"{m} floor": [] for m in floored}}
    for round_ in range(args.estimation_rounds):
        seconds["plain"].append(timed(lambda: [plain_pass(batch) for batch in setup.curvature_batches]))
        for method in args.methods:
            seconds[method].append(timed(estimate, method))
        for method in floored:  # in the same round as the passes it is compared with (the machine drifts)
            seconds[f"{method} floor"].append(seconds["plain"][-1] + floor_seconds(
                curvatures["kfac"], lora_targets(net), method, args.utterances, device))
        print(json.dumps({"estimation_round": round_ + 1, **{k: round(v[-1], 3) for k, v in seconds.items()}}),
              flush=True)
    plain = statistics.median(seconds["plain"])
    for method in args.methods:
        median = statistics.median(seconds[method])
        result["estimation"][method] = {"seconds_per_utterance": round(median, 3),
                                        "plain_seconds_per_utterance": round(plain, 3),
                                        "ratio": round(median / plain, 2)}
    for method in floored:
        floors = seconds[f"{method} floor"]
        result["estimation"][method].update(
            floor_seconds_per_utterance=round(statistics.median(floors), 3),
            ratio_to_floor=round(statistics.median(t / f for t, f in zip(seconds[method], floors)), 2),
            ratios_to_floor_by_round=[round(t / f, 2) for t, f in zip(seconds[method], floors)])
    if "kfac" in curvatures:
        if args.compress_energy:
            start = time.perf_counter()
            curvatures["kfac-k"] = curvatures["kfac"].compress(energy=args.compress_energy)
            widths = [(t["A_vals"].numel(), layer.shape[1]) for layer in curvatures["kfac-k"].layers.values()
                      for t in layer.terms]
            result["compressed"] = {"energy": args.compress_energy, "seconds": round(time.perf_counter() - start, 1),
                                    "widest_input": max(n for _, n in widths),
                                    "its_kept_rank": max(widths, key=lambda w: w[1])[0],
                                    "kept_share_of_A_widths": round(sum(k for k, _ in widths)
                                                                    / sum(n for _, n in widths), 4)}
            print(json.dumps({"compressed": result["compressed"]}), flush=True)
    if "ekfac" not in curvatures:
        shapes = {n: tuple(t.weight().shape) for n, t in lora_targets(net).items()}
        curvatures["ekfac"] = placeholder_curvature(shapes, "ekfac")
    for curvature in curvatures.values():  # on the model's device once, not at every penalty
        for layer in curvature.layers.values():
            layer.terms = [{k: v.to(device) for k, v in term.items()} for term in layer.terms]

    # fine-tuning steps, variants interleaved
    priors = {"none": None, "l2sp": LaplacePrior(kind="l2sp"),
              **{m: LaplacePrior(curvatures[m]) for m in ("ewc", "kfac", "kfac-k", "ekfac") if m in curvatures}}
    variants = [v for v in VARIANTS if v in priors]
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    times: dict[str, list[float]] = {v: [] for v in variants}
    penalty_times: dict[str, list[float]] = {v: [] for v in variants}
    item = setup.train_items[0]
    for round_ in range(args.steps + 1):  # round 0 untimed: first-call allocations of each variant
        for variant in variants:
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = setup.step_loss(item)
            loss.backward()
            _sync(device)
            penalty_start = time.perf_counter()
            if priors[variant] is not None:
                priors[variant].penalty(net).backward()
            _sync(device)
            penalty_seconds = time.perf_counter() - penalty_start
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if round_:
                times[variant].append(time.perf_counter() - start)
                penalty_times[variant].append(penalty_seconds)
        if round_:
            print(json.dumps({"round": round_, **{v: round(t[-1], 3) for v, t in times.items()}}), flush=True)
    if "kfac-k" in priors:
        with torch.no_grad():
            dense, kept = priors["kfac"].penalty(net).item(), priors["kfac-k"].penalty(net).item()
        result["compressed"]["penalty_relative_error"] = abs(kept - dense) / dense if dense else 0.0
    base = statistics.median(times["none"])
    for variant in variants:
        median, penalty = statistics.median(times[variant]), statistics.median(penalty_times[variant])
        result["step_seconds"][variant] = {"median": round(median, 4), "ratio": round(median / base, 3),
                                           "penalty_median": round(penalty, 4),
                                           "ratio_from_penalty": round((base + penalty) / base, 3)}

    print(f"\nestimation ({args.utterances} utterances, {args.max_frames} mel frames each)")
    print(f"{'method':<7} {'s/utt':>8} {'plain s/utt':>12} {'ratio':>6} {'floor s/utt':>12} {'vs floor':>9}  "
          "(by round)")
    for method, r in result["estimation"].items():
        print(f"{method:<7} {r['seconds_per_utterance']:>8} {r['plain_seconds_per_utterance']:>12} {r['ratio']:>6} "
              f"{r.get('floor_seconds_per_utterance', '-'):>12} {r.get('ratio_to_floor', '-'):>9}  "
              f"{r.get('ratios_to_floor_by_round', '')}")
    if "compressed" in result:
        c = result["compressed"]
        print(f"\nkfac-k: {c['energy']:g} of each factor's trace kept, the widest input ({c['widest_input']}) as rank "
              f"{c['its_kept_rank']}, {c['kept_share_of_A_widths']:.1%} of all input widths; penalty relative error "
              f"{c.get('penalty_relative_error', float('nan')):.2e} (compress took {c['seconds']} s)")
    print(f"\nfine-tuning step (median of {args.steps}; amp {args.amp})")
    print(f"{'prior':<7} {'seconds':>8} {'vs plain LoRA':>14} {'penalty s':>10} {'(plain + penalty) / plain':>26}")
    for variant, r in result["step_seconds"].items():
        print(f"{variant:<7} {r['median']:>8} {r['ratio']:>13}x {r['penalty_median']:>10} "
              f"{r['ratio_from_penalty']:>25}x")
    if args.out:
        from tts_bpeft.io import save_json

        save_json(result, args.out)


if __name__ == "__main__":
    main()
