"""Forgetting benchmark on a small OPT: which Laplace prior keeps most of pre-training at a fine-tuning budget?

1. Data (offline, real English, from the gensim wheel's test data): 96 Wikipedia articles (~415k words),
   split by article into pre-training, validation (6 articles) and test (10 articles) sets; the 300 Lee
   background articles of Australian news (a different domain), shuffled: 200 to fine-tune on, 50 for
   validation, 50 for the test.
2. Pre-training: a byte-level BPE tokenizer and a randomly initialised OPT (~0.93M parameters) trained as
   a causal LM on the pre-training articles; cached in --cache.
3. Curvature of the pre-training loss on Wikipedia blocks (one 64-token block = one sample; Monte-Carlo
   Fisher by default, --fisher): KFAC (expand), EWC and EKFAC, for the LoRA targets.
4. LoRA fine-tuning (r=8 on q/v/out/fc1/fc2, 120 steps) on the news under every prior of --priors, each
   over the lam grid --lams (``scaling="relative"``, so one grid serves every prior), for each of --seeds.
   Every run is cached as a JSON file (its training checkpoint beside it): an interrupted benchmark resumes
   where it stopped.
5. Per run: news and Wikipedia perplexity on the validation and the test splits. Per prior and budget b
   (news perplexity <= b x plain LoRA's, same seed), over seeds (mean +- sd):
   - the *front*: the lowest test Wikipedia perplexity on the piecewise-linear lam path whose test news
     perplexity is within the budget (what the prior can reach);
   - the *selected* run: lam (and the prior) chosen on the validation split with `tts_bpeft.selection.pick`
     for tolerance b - 1, reported on the test split (what a user gets without looking at test data);
   - the default lam's news-perplexity ratio.
   A JSON file, markdown tables on stdout and a trade-off plot (PNG) with every front.

Runs in ~40 min on 2 CPU cores (2 worker processes, 1 thread each) for the full grid.
    python benchmarks/forgetting_opt.py                        # everything (cached pre-training, runs)
    python benchmarks/forgetting_opt.py --priors kfac ewc --seeds 0 --lams 1 10
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import OPTForCausalLM

from tts_bpeft import LaplacePrior, add_lora, estimate_curvature
from tts_bpeft.curvature import Curvature
from tts_bpeft.io import save_json
from tts_bpeft.selection import Trial, pick
from tts_bpeft.text import (
    clm_likelihood,
    clm_loss,
    fit,
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
BUDGETS = (1.0, 1.02, 1.05, 1.1, 1.2, 1.3)
# prior name -> its kind, whether damped (--damping), what is mixed in (--mu)
PRIORS = {
    "l2sp": {"kind": "l2sp"},
    "ewc": {"kind": "ewc"},
    "kfac": {"kind": "kfac"},
    "ekfac": {"kind": "ekfac"},
    "kfac-damped": {"kind": "kfac", "damped": True},
    "kfac+l2sp": {"kind": "kfac", "mix": "l2sp"},
    "kfac+ewc": {"kind": "kfac", "mix": "ewc"},
}
# families: per budget the member (and lam) is chosen on the validation split
FAMILIES = {"kfac or kfac-damped": ("kfac", "kfac-damped"), "kfac or kfac+l2sp": ("kfac", "kfac+l2sp")}
COLORS = {"l2sp": "tab:gray", "ewc": "tab:blue", "kfac": "tab:green", "ekfac": "tab:purple",
          "kfac-damped": "tab:olive", "kfac+l2sp": "tab:orange", "kfac+ewc": "tab:cyan",
          "kfac or kfac-damped": "tab:brown", "kfac or kfac+l2sp": "tab:pink"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "forgetting_opt")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where forgetting_opt.{json,png} go")
    p.add_argument("--workers", type=int, default=2, help="fine-tuning processes (1 thread each)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--val-articles", type=int, default=6, help="held-out Wikipedia articles for validation")
    p.add_argument("--test-articles", type=int, default=10, help="held-out Wikipedia articles for the test")
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--pretrain-lr", type=float, default=5e-3)
    p.add_argument("--curvature-samples", type=int, default=256)
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj", "out_proj", "fc1", "fc2"])
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-news", type=int, default=200, help="Lee background articles to fine-tune on")
    p.add_argument("--val-news", type=int, default=50, help="Lee background articles to validate on (the rest test)")
    p.add_argument("--fisher", default="mc", choices=["mc", "empirical"], help="Fisher of the curvature estimates")
    p.add_argument("--eval-tokens", type=int, default=40_000, help="Wikipedia tokens per evaluation split (at most)")
    p.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    p.add_argument("--lams", nargs="+", type=float, default=[0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 1000])
    p.add_argument("--default-lam", type=float, default=1.0, help="LaplacePrior's default lam (relative scaling)")
    p.add_argument("--damping", type=float, default=0.3, help="relative damping of kfac-damped")
    p.add_argument("--mu", type=float, default=1.0, help="mixed-in share of the mixed priors")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    return p.parse_args()


def pretrained(args, wiki_train: list[str]):
    """The cached tokenizer + pre-trained OPT, built (tokenizer, ~5 min of training) if missing."""
    folder = args.cache / f"opt_v{args.vocab}_h{args.hidden}_l{args.layers}_s{args.pretrain_steps}_seed0"
    if (folder / "pretrain.json").is_file():
        print(f"pre-trained model from cache: {folder}")
        return load_tokenizer(folder), load_causal_lm(folder), json.loads((folder / "pretrain.json").read_text())
    tokenizer = train_bpe_tokenizer(wiki_train, vocab_size=args.vocab)
    torch.manual_seed(0)
    config = tiny_opt_config(len(tokenizer), hidden_size=args.hidden, num_layers=args.layers,
                             num_heads=4, ffn_dim=4 * args.hidden, max_positions=args.block + 2)
    model = OPTForCausalLM(config)
    blocks = packed_blocks(tokenizer, wiki_train, args.block)
    loader = lm_loader(blocks, tokenizer.pad_token_id, args.batch, shuffle=True, seed=0)
    epochs = math.ceil(args.pretrain_steps / len(loader))
    start = time.time()
    history = fit(model, loader, clm_loss, folder / "training", lr=args.pretrain_lr, epochs=epochs, warmup_ratio=0.05,
                  max_steps=args.pretrain_steps, weight_decay=0.01)["history"]
    info = {"params": sum(p.numel() for p in model.parameters()), "blocks": len(blocks), "history": history,
            "seconds": time.time() - start}
    tokenizer.save_pretrained(str(folder))
    model.save_pretrained(str(folder))
    save_json(info, folder / "pretrain.json")  # written last: marks a complete folder
    return tokenizer, load_causal_lm(folder), info


class Bench:
    """Data, pre-trained model and curvature estimates shared by every run (built once, inherited by workers)."""

    def __init__(self, args) -> None:
        self.args = args
        articles = wikipedia_articles(args.cache / "wikipedia.jsonl")
        order = list(range(len(articles)))
        random.Random(0).shuffle(order)
        held = args.val_articles + args.test_articles
        wiki_val = [articles[i]["text"] for i in order[:args.val_articles]]
        wiki_test = [articles[i]["text"] for i in order[args.val_articles:held]]
        wiki_train = [articles[i]["text"] for i in order[held:]]
        news, _ = lee_news()  # the 300 background articles, shuffled: train, validation, test
        news = [news[i] for i in torch.randperm(len(news), generator=torch.Generator().manual_seed(0)).tolist()]
        news_val = news[args.train_news:args.train_news + args.val_news]
        news_test = news[args.train_news + args.val_news:]
        self.tokenizer, self.base, self.info = pretrained(args, wiki_train)
        tok, block, pad = self.tokenizer, args.block, self.tokenizer.pad_token_id
        limit = args.eval_tokens // block
        self.eval_sets = {"news_val": packed_blocks(tok, news_val, block),
                          "news_test": packed_blocks(tok, news_test, block),
                          "wiki_val": packed_blocks(tok, wiki_val, block)[:limit],
                          "wiki_test": packed_blocks(tok, wiki_test, block)[:limit]}
        self.news_blocks = packed_blocks(tok, news[:args.train_news], block)
        self.pad = pad
        g = torch.Generator().manual_seed(0)
        pre_blocks = packed_blocks(tok, wiki_train, block)
        sample = pre_blocks[torch.randperm(pre_blocks.shape[0], generator=g)[: args.curvature_samples]]
        self.curvatures: dict[str, Curvature] = {}
        self.curvature_seconds: dict[str, float] = {}
        for method in ("kfac", "ewc", "ekfac"):
            path = args.cache / f"curvature_{method}_{args.fisher}_{self.model_key()}.safetensors"
            if path.is_file():
                self.curvatures[method] = Curvature.load(path)
                continue
            start = time.time()
            self.curvatures[method] = estimate_curvature(
                self.base, lm_loader(sample, pad, 8), clm_likelihood, method=method, fisher=args.fisher,
                targets=args.targets, description=f"{len(sample)} wikipedia blocks, {args.fisher} Fisher")
            self.curvature_seconds[method] = time.time() - start
            self.curvatures[method].save(path)

    def model_key(self) -> str:
        a = self.args
        return f"v{a.vocab}_h{a.hidden}_l{a.layers}_s{a.pretrain_steps}_n{a.curvature_samples}_" + \
            hashlib.sha256(" ".join(a.targets).encode()).hexdigest()[:6]

    def run_key(self, prior: str, lam: float, seed: int) -> str:
        a, spec = self.args, PRIORS.get(prior, {})
        options = {"prior": prior, "lam": lam, "seed": seed, "r": a.r, "alpha": a.alpha, "lr": a.lr,
                   "steps": a.steps, "batch": a.batch, "news": [a.train_news, a.val_news], "eval": a.eval_tokens,
                   "fisher": a.fisher if prior not in ("none", "l2sp") else None,
                   "model": self.model_key(), "damping": a.damping if spec.get("damped") else None,
                   "mu": a.mu if spec.get("mix") else None}
        return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]

    def prior(self, name: str, lam: float) -> LaplacePrior | None:
        if name == "none":
            return None
        spec = PRIORS[name]
        options = {"lam": lam, "scaling": "relative", "kind": spec["kind"],
                   "curvature": self.curvatures.get(spec["kind"])}
        if spec.get("damped"):
            options["damping"] = self.args.damping
        if spec.get("mix"):
            mix = spec["mix"]
            options.update(mix=mix if mix == "l2sp" else self.curvatures[mix], mu=self.args.mu)
        return LaplacePrior(**options)

    def evaluate(self, model) -> dict[str, float]:
        return {name: perplexity(model, lm_loader(blocks, self.pad, 32), progress=False)["perplexity"]
                for name, blocks in self.eval_sets.items()}

    def run(self, prior: str, lam: float, seed: int) -> dict:
        """One fine-tune (cached by its options)."""
        path = self.args.cache / "runs" / f"{self.run_key(prior, lam, seed)}.json"
        if path.is_file():
            return json.loads(path.read_text())
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        model = add_lora(copy.deepcopy(self.base), self.args.targets, r=self.args.r, alpha=self.args.alpha)
        loader = lm_loader(self.news_blocks, self.pad, self.args.batch, shuffle=True, seed=seed)
        start = time.time()
        history = fit(model, loader, clm_loss, path.with_suffix(""), prior=self.prior(prior, lam), lr=self.args.lr,
                      epochs=math.ceil(self.args.steps / len(loader)), max_steps=self.args.steps, seed=seed,
                      progress=False)["history"]
        row = {"prior": prior, "lam": lam, "seed": seed, **self.evaluate(model),
               "train_loss": history[-1]["loss"], "seconds": time.time() - start}
        save_json(row, path)
        return row


_BENCH: Bench | None = None


def _run_in_worker(job: tuple[str, float, int]) -> dict:
    return _BENCH.run(*job)


def main() -> None:
    global _BENCH
    args = parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    _BENCH = bench = Bench(args)
    jobs = [("none", 0.0, seed) for seed in args.seeds]
    jobs += [(prior, lam, seed) for seed in args.seeds for prior in args.priors
             for lam in sorted(set(args.lams) | {args.default_lam})]
    rows = []
    # fork: the workers inherit the data, the model and the curvature estimates
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for row in tqdm(pool.map(_run_in_worker, jobs), total=len(jobs), desc="fine-tunes"):
            rows.append(row)
    pretrained_ppl = bench.evaluate(bench.base)
    results = {"pretrained": pretrained_ppl, "pretrain": {k: v for k, v in bench.info.items() if k != "history"},
               "curvature_seconds": bench.curvature_seconds,
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": rows}
    results["summary"] = summarise(rows, results["args"])
    results["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out / "forgetting_opt.json")
    plot(results, args.out / "forgetting_opt.png")
    print(tables(results))
    print(f"total {results['seconds']:.0f} s ({len(rows)} fine-tunes)")


# -- analysis -----------------------------------------------------------------------------------------
def front(path: list[tuple[float, float]], budget: float) -> float:
    """The lowest forgetting on a piecewise-linear path of (news ratio, wiki ppl) points (ordered by lam,
    starting at plain LoRA's (1, wiki)) whose news ratio is <= budget."""
    best = math.inf
    for (x0, y0), (x1, y1) in zip(path, path[1:] + [path[-1]]):
        for x, y in ((x0, y0), (x1, y1)):
            if x <= budget:
                best = min(best, y)
        if (x0 - budget) * (x1 - budget) < 0:  # the segment crosses the budget
            best = min(best, y0 + (y1 - y0) * (budget - x0) / (x1 - x0))
    return best


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def members(prior: str) -> tuple[str, ...]:
    """The priors a row of the analysis stands for: one, or a family whose member is chosen per budget."""
    return FAMILIES.get(prior, (prior,))


def analysed(args) -> list[str]:
    """Every prior run, then each family whose members all ran."""
    return ["none", *args["priors"], *[f for f, m in FAMILIES.items() if set(m) <= set(args["priors"])]]


def seed_front(rows: list[dict], prior: str, base: dict, budget: float) -> float:
    """The test front of one seed at one budget: the best over the members' lam paths."""
    best = math.inf
    for member in members(prior):
        runs = sorted((r for r in rows if r["prior"] == member and r["seed"] == base["seed"]), key=lambda r: r["lam"])
        path = [(1.0, base["wiki_test"])] + [(r["news_test"] / base["news_test"], r["wiki_test"]) for r in runs]
        best = min(best, front(path, budget))
    return best


def summarise(rows: list[dict], args: dict) -> dict:
    """Per prior (and family): the test front, the validation-selected run and the default lam's ratio, per
    budget, mean and sd over seeds."""
    plain = {r["seed"]: r for r in rows if r["prior"] == "none"}
    summary = {}
    for prior in analysed(args):
        fronts, selected, default = {b: [] for b in args["budgets"]}, {b: [] for b in args["budgets"]}, []
        for seed, base in plain.items():
            # a family's trials carry their member's index as mu, so pick() chooses among members too
            trials = {Trial(r["lam"], float(i), r["news_val"], r["wiki_val"]): r
                      for i, member in enumerate(members(prior)) for r in rows
                      if r["prior"] == member and r["seed"] == seed}
            plain_trial = Trial(0.0, 0.0, base["news_val"], base["wiki_val"])
            for b in args["budgets"]:
                fronts[b].append(seed_front(rows, prior, base, b))
                run = trials.get(pick(list(trials), plain_trial, b - 1), base)
                selected[b].append((run["wiki_test"], run["news_test"] / base["news_test"], run["prior"], run["lam"]))
            if prior in PRIORS:
                default += [r["news_test"] / base["news_test"] for r in trials.values()
                            if r["lam"] == args["default_lam"]]
        summary[prior] = {
            "front": {str(b): _mean_sd(v) for b, v in fronts.items()},
            "selected": {str(b): {"wiki_test": _mean_sd([s[0] for s in v]), "news_ratio": _mean_sd([s[1] for s in v]),
                                  "runs": [s[2:] for s in v]} for b, v in selected.items()},
            "default_news_ratio": _mean_sd(default) if default else None,
        }
    return summary


def tables(results: dict) -> str:
    """Markdown: the fronts, the validation-selected runs and the default lam, per prior and budget."""
    args, summary = results["args"], results["summary"]
    budgets = [str(b) for b in args["budgets"]]
    head = "| prior | " + " | ".join(f"{b}x" for b in budgets) + " |"
    rule = "|---|" + "---|" * len(budgets)
    out = [f"pre-trained: news test ppl {results['pretrained']['news_test']:.2f}, "
           f"wiki test ppl {results['pretrained']['wiki_test']:.2f}", "",
           "Front: lowest held-out (test) Wikipedia perplexity within the news-perplexity budget (mean +- sd "
           f"over seeds {args['seeds']})", "", head, rule]
    for prior, s in summary.items():
        cells = [f"{s['front'][b]['mean']:.1f} +- {s['front'][b]['sd']:.1f}" for b in budgets]
        out.append(f"| {prior} | " + " | ".join(cells) + " |")
    out += ["", "Selected on validation (tolerance = budget - 1): test Wikipedia perplexity [test news ratio]", "",
            head, rule]
    for prior, s in summary.items():
        cells = [f"{s['selected'][b]['wiki_test']['mean']:.1f} +- {s['selected'][b]['wiki_test']['sd']:.1f} "
                 f"[{s['selected'][b]['news_ratio']['mean']:.3f}]" for b in budgets]
        out.append(f"| {prior} | " + " | ".join(cells) + " |")
    out += ["", f"Default lam = {args['default_lam']:g} (relative scaling): test news perplexity / plain LoRA's", "",
            "| prior | news ratio |", "|---|---|"]
    for prior, s in summary.items():
        if s["default_news_ratio"]:
            d = s["default_news_ratio"]
            out.append(f"| {prior} | {d['mean']:.3f} +- {d['sd']:.3f} |")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    """Left: every prior's front (test Wikipedia perplexity vs news budget; mean over seeds, +- sd shaded).
    Right: each front minus L2-SP's front of the same seed (paired, so the seed-to-seed spread of the
    fine-tuning itself cancels), mean +- sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tts_bpeft.io import atomic_write

    args, rows = results["args"], results["runs"]
    bases = [r for r in rows if r["prior"] == "none"]
    grid = [1.0 + i * 0.005 for i in range(61)]
    reference = [[seed_front(rows, "l2sp", base, b) for b in grid] for base in bases]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for prior in analysed(args):
        if prior == "none":
            continue
        curves = [[seed_front(rows, prior, base, b) for b in grid] for base in bases]
        style = {"c": COLORS[prior], "ls": "--" if prior in FAMILIES else "-"}
        for ax, series in ((axes[0], curves), (axes[1], [[y - r for y, r in zip(c, ref)]
                                                          for c, ref in zip(curves, reference)])):
            mean = [statistics.fmean(c) for c in zip(*series)]
            sd = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in zip(*series)]
            ax.plot(grid, mean, label=prior, **style)
            ax.fill_between(grid, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                            color=style["c"], alpha=0.08)
    axes[0].axhline(results["pretrained"]["wiki_test"], c="k", ls=":", lw=1, label="pre-trained")
    axes[0].set_ylabel("held-out Wikipedia perplexity (test; lower = less forgetting)")
    axes[0].set_title(f"Fronts (mean +- sd over seeds {args['seeds']})")
    axes[1].axhline(0.0, c="k", lw=0.8)
    axes[1].set_ylabel("front - L2-SP's front, same seed (perplexity)")
    axes[1].set_title("Paired difference to L2-SP (below 0 = less forgetting)")
    for ax in axes:
        ax.set_xlabel("news perplexity budget (x plain LoRA, test split)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=120, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
