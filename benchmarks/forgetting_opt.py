"""Forgetting benchmark on a small OPT: does a Laplace prior keep what pre-training learned?

1. Data (offline, real English, from the gensim wheel's test data): 96 Wikipedia articles (~415k words),
   split by article into pre-training and held-out sets; the Lee corpus of Australian news (a different
   domain) for fine-tuning (250 articles) and target evaluation (the 50 Lee test articles).
2. Pre-training: a byte-level BPE tokenizer trained on the Wikipedia training articles and a randomly
   initialised OPT (~0.17M parameters) trained as a causal LM on them; both cached in --cache.
3. Curvature of the pre-training loss on Wikipedia blocks (one 64-token block = one sample; KFAC and EWC,
   empirical Fisher, as in the paper), for the LoRA targets q_proj and v_proj.
4. LoRA fine-tuning (r=16, alpha=32) on the news under each prior: none, l2sp, ewc, kfac. For each prior, lam
   is swept on a grid *relative to that prior's penalty at the unregularised solution*:
   ``lam = ratio / q(dW_none)`` (so ``ratio`` is the penalty in nats per token the unregularised adapter
   would pay), which puts the three priors on comparable footing.
5. Reported per run: news perplexity (the fine-tune metric) and held-out Wikipedia perplexity (forgetting);
   a JSON file, a markdown table on stdout and a trade-off plot (PNG).

Runs in ~10-15 minutes on 2 CPU cores (single-threaded by default: faster when the cores are shared).
    python benchmarks/forgetting_opt.py                       # everything, cached pre-training
    python benchmarks/forgetting_opt.py --ratios 0.1 1 10 --out docs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import OPTForCausalLM

from tts_bpeft import LaplacePrior, add_lora, estimate_curvature
from tts_bpeft.curvature import Curvature
from tts_bpeft.io import save_json
from tts_bpeft.text import (
    clm_loss,
    clm_sample_nll,
    finetune,
    lm_loader,
    load_causal_lm,
    load_tokenizer,
    packed_blocks,
    perplexity,
    tiny_opt_config,
    train_bpe_tokenizer,
)
from tts_bpeft.text.corpora import lee_news, wikipedia_articles

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "forgetting_opt")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where forgetting_opt.{json,png} go")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--heldout-articles", type=int, default=10)
    p.add_argument("--pretrain-steps", type=int, default=700)
    p.add_argument("--pretrain-lr", type=float, default=5e-3)
    p.add_argument("--curvature-samples", type=int, default=256)
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-news", type=int, default=250, help="news articles to fine-tune on")
    p.add_argument("--eval-tokens", type=int, default=40_000, help="held-out Wikipedia tokens for forgetting")
    p.add_argument("--methods", nargs="+", default=["l2sp", "ewc", "kfac"])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 1.0, 10.0])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def pretrained(args, wiki_train: list[str]):
    """The cached tokenizer + pre-trained OPT, built (tokenizer, ~3-5 min of training) if missing."""
    folder = args.cache / f"opt_v{args.vocab}_h{args.hidden}_l{args.layers}_s{args.pretrain_steps}_seed{args.seed}"
    if (folder / "model.safetensors").is_file():
        print(f"pre-trained model from cache: {folder}")
        return load_tokenizer(folder), load_causal_lm(folder), json.loads((folder / "pretrain.json").read_text())
    tokenizer = train_bpe_tokenizer(wiki_train, vocab_size=args.vocab)
    torch.manual_seed(args.seed)
    config = tiny_opt_config(len(tokenizer), hidden_size=args.hidden, num_layers=args.layers,
                             num_heads=4, ffn_dim=4 * args.hidden, max_positions=args.block + 2)
    model = OPTForCausalLM(config)
    blocks = packed_blocks(tokenizer, wiki_train, args.block)
    loader = lm_loader(blocks, tokenizer.pad_token_id, args.batch, shuffle=True, seed=args.seed)
    epochs = math.ceil(args.pretrain_steps / len(loader))
    start = time.time()
    history = finetune(model, loader, clm_loss, lr=args.pretrain_lr, epochs=epochs, warmup_ratio=0.05,
                       max_steps=args.pretrain_steps, weight_decay=0.01, desc="pre-train")
    info = {"params": sum(p.numel() for p in model.parameters()), "blocks": len(blocks), "history": history,
            "seconds": time.time() - start}
    tokenizer.save_pretrained(str(folder))
    model.save_pretrained(str(folder))  # model.safetensors last-but-one; pretrain.json marks completion
    save_json(info, folder / "pretrain.json")
    return tokenizer, load_causal_lm(folder), info


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    articles = wikipedia_articles(args.cache / "wikipedia.jsonl")
    order = list(range(len(articles)))
    random.Random(args.seed).shuffle(order)
    held = [articles[i]["text"] for i in order[:args.heldout_articles]]
    wiki_train = [articles[i]["text"] for i in order[args.heldout_articles:]]
    news, news_test = lee_news()
    news_train = news[:args.train_news]

    tokenizer, base, info = pretrained(args, wiki_train)
    pad = tokenizer.pad_token_id
    wiki_eval = packed_blocks(tokenizer, held, args.block)[: args.eval_tokens // args.block]
    news_eval = packed_blocks(tokenizer, news_test, args.block)
    news_blocks = packed_blocks(tokenizer, news_train, args.block)

    def evaluate(model) -> dict[str, float]:
        return {"news_ppl": perplexity(model, lm_loader(news_eval, pad, 32), desc="news ppl")["perplexity"],
                "wiki_ppl": perplexity(model, lm_loader(wiki_eval, pad, 32), desc="wiki ppl")["perplexity"]}

    results = {"pretrained": evaluate(base), "pretrain": {k: v for k, v in info.items() if k != "history"},
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": []}
    print(f"pre-trained: {results['pretrained']}  ({info['params']:,} parameters)")

    # curvature of the pre-training loss: one Wikipedia block = one sample
    g = torch.Generator().manual_seed(args.seed)
    pre_blocks = packed_blocks(tokenizer, wiki_train, args.block)
    sample = pre_blocks[torch.randperm(pre_blocks.shape[0], generator=g)[: args.curvature_samples]]
    curvatures: dict[str, Curvature] = {}
    for method in ("ewc", "kfac"):
        start = time.time()
        curvatures[method] = estimate_curvature(base, lm_loader(sample, pad, 8), clm_sample_nll, method=method,
                                                targets=args.targets, description="wikipedia blocks")
        results[f"curvature_seconds_{method}"] = time.time() - start

    def run(method: str, lam: float, ratio: float | None):
        torch.manual_seed(args.seed)
        model = add_lora(copy.deepcopy(base), args.targets, r=args.r, alpha=args.alpha)
        prior = None if method == "none" else LaplacePrior(curvatures.get(method), lam=lam, method=method)
        loader = lm_loader(news_blocks, pad, args.batch, shuffle=True, seed=args.seed)
        start = time.time()
        history = finetune(model, loader, clm_loss, prior=prior, lr=args.lr, epochs=args.epochs,
                           desc=f"{method} lam={lam:.3g}")
        row = {"method": method, "lam": lam, "ratio": ratio, **evaluate(model), "train_loss": history[-1]["task_loss"],
               "seconds": time.time() - start}
        row["q"] = {m: float(LaplacePrior(curvatures.get(m), lam=1.0, method=m).penalty(model).detach())
                    for m in ("l2sp", "ewc", "kfac")}
        results["runs"].append(row)
        print(f"{method:>5} lam={lam:<10.4g} news ppl {row['news_ppl']:8.2f}  wiki ppl {row['wiki_ppl']:8.2f}",
              flush=True)
        return row

    free = run("none", 0.0, None)
    for method in args.methods:
        for ratio in args.ratios:
            run(method, ratio / max(free["q"][method], 1e-12), ratio)
    results["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out / "forgetting_opt.json")
    plot(results, args.out / "forgetting_opt.png")
    print(table(results))
    print(f"total {results['seconds']:.0f} s")


def table(results: dict) -> str:
    """The results as a markdown table."""
    pre = results["pretrained"]
    lines = ["| prior | lam | ratio | news ppl (fine-tune) | held-out wiki ppl (forgetting) |",
             "|---|---|---|---|---|",
             f"| pre-trained | - | - | {pre['news_ppl']:.2f} | {pre['wiki_ppl']:.2f} |"]
    for r in results["runs"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:g}"
        lines.append(f"| {r['method']} | {r['lam']:.3g} | {ratio} | {r['news_ppl']:.2f} | {r['wiki_ppl']:.2f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Trade-off plot: target (news) perplexity vs held-out Wikipedia perplexity, one line per prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tts_bpeft.io import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4.5))
    pre = results["pretrained"]
    ax.scatter([pre["news_ppl"]], [pre["wiki_ppl"]], marker="*", s=150, c="k", label="pre-trained")
    free = [r for r in results["runs"] if r["method"] == "none"]
    ax.scatter([r["news_ppl"] for r in free], [r["wiki_ppl"] for r in free], marker="x", s=80, c="tab:red",
               label="LoRA, no prior")
    for method, color in (("l2sp", "tab:gray"), ("ewc", "tab:blue"), ("kfac", "tab:green")):
        rows = sorted((r for r in results["runs"] if r["method"] == method), key=lambda r: r["lam"])
        if rows:
            ax.plot([r["news_ppl"] for r in rows], [r["wiki_ppl"] for r in rows], "o-", c=color,
                    label=f"LoRA + {method}")
            for r in rows:
                ax.annotate(f"{r['ratio']:g}", (r["news_ppl"], r["wiki_ppl"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("news perplexity (fine-tune target, lower = better)")
    ax.set_ylabel("held-out Wikipedia perplexity (lower = less forgetting)")
    ax.set_title("Small OPT: fine-tune quality vs forgetting (labels: lam ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=120, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
