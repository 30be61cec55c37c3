"""Training-step time of LoRA + KFAC prior vs plain LoRA on a small random OPT (CPU).

Run: .venv/bin/python benchmarks/bench_train_overhead.py [--steps N]
LoRA r=16, alpha=32 on q_proj/v_proj (tts_bpeft.add_lora); the KFAC factors are estimated with
tts_bpeft.estimate_curvature on two batches first. A step = forward, loss (+ penalty), backward, AdamW
step. The two variants alternate step by step so that machine load affects both alike; medians are shown.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import OPTConfig, OPTForCausalLM

from tts_bpeft import LaplacePrior, add_lora, estimate_curvature


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a loaded 2-core machine 2 OpenMP threads make small "
                             "ops ~200x slower (spin/wait at every barrier), which would measure the machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=2000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                       ffn_dim=1024, max_position_embeddings=512, word_embed_proj_dim=256)
    model = add_lora(OPTForCausalLM(config), ["q_proj", "v_proj"], r=16, alpha=32)
    ids = torch.randint(0, config.vocab_size, (args.steps + 2, args.batch, args.seq))

    def per_sample_loss(m, batch):
        logits = m(input_ids=batch).logits[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").mean(1)

    curvature = estimate_curvature(model, [ids[0], ids[1]], per_sample_loss, progress=False)
    prior = LaplacePrior(curvature, lam=1e3)
    with torch.no_grad():  # non-zero B so that the penalty and its gradient are real work
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(batch, with_prior: bool) -> float:
        t0 = time.perf_counter()
        loss = per_sample_loss(model, batch).mean()
        if with_prior:
            loss = loss + prior.penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(ids[2], True)
    step(ids[2], False)  # warm-up
    plain, kfac = [], []
    for i in range(args.steps):
        plain.append(step(ids[i % len(ids)], False))
        kfac.append(step(ids[i % len(ids)], True))
    t_plain, t_kfac = statistics.median(plain), statistics.median(kfac)
    n_lora = sum(p.numel() for p in params)
    t_pen = statistics.median(_penalty_times(prior, model, 10))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OPT 4x256 (ffn 1024, vocab 2000), "
          f"batch {args.batch} x {args.seq} tokens, {len(curvature.names)} LoRA layers, {n_lora:,} LoRA params")
    print(f"plain LoRA step      {1e3 * t_plain:8.1f} ms (median of {args.steps})")
    print(f"LoRA + KFAC step     {1e3 * t_kfac:8.1f} ms")
    print(f"penalty fwd+bwd only {1e3 * t_pen:8.2f} ms")
    print(f"overhead             {100 * (t_kfac / t_plain - 1):+8.1f} %  (target <= +10 %)")


def _penalty_times(prior, model, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        prior.penalty(model).backward()
        times.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.grad = None
    return times


if __name__ == "__main__":
    main()
