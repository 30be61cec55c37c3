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
   over the lam grid --lams (``scaling="relative"``, so one grid serves every prior), for each of --seeds;
   each prior's path is then extended (lam x --extend-factor) until it reaches the pre-trained model's
   Wikipedia perplexity (within --reach) or passes the largest budget. The rival, replay: plain LoRA whose
   fine-tuning examples include a share --replay of pre-training blocks, at the same number of steps.
   --world k repeats everything from another pre-training seed and curvature sample (seed k). A run's world
   is that seed and a fingerprint of the pre-trained weights: pre-training is not bit-reproducible across
   machines and torch builds, so runs on different pre-trained models never mix.
   Every run is cached as a JSON file (its training checkpoint beside it): an interrupted benchmark resumes
   where it stopped; the analysis uses every cached run of the current settings (--merge-json adds the runs
   of an earlier results file).
5. Per run: news and Wikipedia perplexity on the validation and the test splits. Per prior and budget b
   (news perplexity <= b x plain LoRA's, same seed), over seeds (mean +- sd):
   - the *front*: the lowest test Wikipedia perplexity on the piecewise-linear lam path whose test news
     perplexity is within the budget (what the prior can reach);
     (a family's member is chosen per seed and budget by its validation front, then reported on test);
   - the *selected* run: lam (and the prior) chosen on the validation split with `tts_bpeft.selection.pick`
     for tolerance b - 1, reported on the test split (what a user gets without looking at test data);
   - the default lam's news-perplexity ratio;
   - per prior, the budgets where its front is more than one paired sd above another front;
   - with runs of other worlds: the spread over (pre-training seed, curvature sample, fine-tuning seed)
     beside the spread over fine-tuning seeds alone, on the same lams.
   A JSON file, markdown tables on stdout and a trade-off plot (PNG) with every front.

Runs in ~2 h on 2 CPU cores (2 worker processes, 1 thread each) for the full grid.
    python benchmarks/forgetting_opt.py                        # everything (cached pre-training, runs)
    python benchmarks/forgetting_opt.py --priors kfac ewc --seeds 0 --lams 1 10
    python benchmarks/forgetting_opt.py --from-json docs/forgetting_opt.json --out /tmp/x   # analysis only

One script of ~700 lines on purpose: a benchmark that reads top to bottom in the order of the steps above
(data, pre-training, curvature, the run grid, the analysis); the model, data and training code it runs are
the package's (`tts_bpeft`, `tts_bpeft.text`), not copies.
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
from tts_bpeft.selection import Trial, front_value, pick
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
REPLAY = "replay"  # the rival system: its strength axis is the replayed share of the examples, not lam
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
          "kfac or kfac-damped": "tab:brown", "kfac or kfac+l2sp": "tab:pink", REPLAY: "tab:red"}


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
    p.add_argument("--reach", type=float, default=0.1,
                   help="a lam path is extended until its Wikipedia perplexity is within this of the pre-trained's")
    p.add_argument("--extend-factor", type=float, default=10.0, help="lam step of the extension")
    p.add_argument("--max-lam", type=float, default=1e7, help="the extension stops here")
    p.add_argument("--replay", nargs="*", type=float, default=[0.01, 0.1, 0.3],
                   help="replayed shares of pre-training blocks among the fine-tuning examples")
    p.add_argument("--world", type=int, default=0, help="pre-training seed and curvature sample seed")
    p.add_argument("--merge-json", type=Path, help="analyse the runs of this results JSON too (other worlds)")
    p.add_argument("--from-json", type=Path, help="analyse a results JSON only (no model, no fine-tune)")
    p.add_argument("--analyse-only", action="store_true", help="no fine-tune: analyse every cached run")
    return p.parse_args()


def pretrained(args, wiki_train: list[str]):
    """The cached tokenizer + pre-trained OPT, built (tokenizer, ~5 min of training) if missing."""
    folder = model_folder(args)
    if (folder / "pretrain.json").is_file():
        print(f"pre-trained model from cache: {folder}")
        return load_tokenizer(folder), load_causal_lm(folder), json.loads((folder / "pretrain.json").read_text())
    tokenizer = train_bpe_tokenizer(wiki_train, vocab_size=args.vocab)
    torch.manual_seed(args.world)
    config = tiny_opt_config(len(tokenizer), hidden_size=args.hidden, num_layers=args.layers,
                             num_heads=4, ffn_dim=4 * args.hidden, max_positions=args.block + 2)
    model = OPTForCausalLM(config)
    blocks = packed_blocks(tokenizer, wiki_train, args.block)
    loader = lm_loader(blocks, tokenizer.pad_token_id, args.batch, shuffle=True, seed=args.world)
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
        weights = hashlib.sha256((model_folder(args) / "model.safetensors").read_bytes()).hexdigest()[:8]
        self.world = f"{args.world}:{weights}"  # pre-training seed : fingerprint of the pre-trained weights
        tok, block, pad = self.tokenizer, args.block, self.tokenizer.pad_token_id
        limit = args.eval_tokens // block
        self.eval_sets = {"news_val": packed_blocks(tok, news_val, block),
                          "news_test": packed_blocks(tok, news_test, block),
                          "wiki_val": packed_blocks(tok, wiki_val, block)[:limit],
                          "wiki_test": packed_blocks(tok, wiki_test, block)[:limit]}
        self.news_blocks = packed_blocks(tok, news[:args.train_news], block)
        self.pad = pad
        g = torch.Generator().manual_seed(args.world)
        self.pre_blocks = packed_blocks(tok, wiki_train, block)  # what replay mixes in
        sample = self.pre_blocks[torch.randperm(self.pre_blocks.shape[0], generator=g)[: args.curvature_samples]]
        self.curvatures: dict[str, Curvature] = {}
        self.curvature_seconds: dict[str, float] = {}
        for method in ("kfac", "ewc", "ekfac"):
            path = args.cache / f"curvature_{method}_{args.fisher}_{model_key(args, self.world)}.safetensors"
            timing = path.with_suffix(".json")
            if not path.is_file():
                start = time.time()
                estimate_curvature(
                    self.base, lm_loader(sample, pad, 8), clm_likelihood, method=method, fisher=args.fisher,
                    targets=args.targets, description=f"{len(sample)} wikipedia blocks, {args.fisher} Fisher",
                ).save(path)
                save_json({"seconds": time.time() - start}, timing)
            self.curvatures[method] = Curvature.load(path)
            if timing.is_file():
                self.curvature_seconds[method] = json.loads(timing.read_text())["seconds"]

    def prior(self, name: str, lam: float) -> LaplacePrior | None:
        """The prior of a run (None for plain LoRA and for replay, which is plain LoRA on mixed data)."""
        if name in ("none", REPLAY):
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

    def pretrained_perplexity(self) -> dict[str, float]:
        """The pre-trained model's perplexities (cached beside it)."""
        path = model_folder(self.args) / f"perplexity_{self.args.eval_tokens}.json"
        if not path.is_file():
            save_json(self.evaluate(self.base), path)
        return json.loads(path.read_text())

    def training_blocks(self, replay: float, seed: int) -> torch.Tensor:
        """The news blocks, plus (replay) pre-training blocks making up the share `replay` of all blocks."""
        if not replay:
            return self.news_blocks
        n = round(replay / (1 - replay) * len(self.news_blocks))
        chosen = torch.randperm(len(self.pre_blocks), generator=torch.Generator().manual_seed(seed))[:n]
        return torch.cat([self.news_blocks, self.pre_blocks[chosen]])

    def run(self, prior: str, lam: float, seed: int, replay: float = 0.0) -> dict:
        """One fine-tune (cached by its options)."""
        path = self.args.cache / "runs" / f"{run_key(self.args, prior, lam, seed, replay, self.world)}.json"
        if path.is_file():
            return json.loads(path.read_text())
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        model = add_lora(copy.deepcopy(self.base), self.args.targets, r=self.args.r, alpha=self.args.alpha)
        loader = lm_loader(self.training_blocks(replay, seed), self.pad, self.args.batch, shuffle=True, seed=seed)
        start = time.time()
        history = fit(model, loader, clm_loss, path.with_suffix(""), prior=self.prior(prior, lam), lr=self.args.lr,
                      epochs=math.ceil(self.args.steps / len(loader)), max_steps=self.args.steps, seed=seed,
                      progress=False)["history"]
        row = {"prior": prior, "lam": lam, "seed": seed, "replay": replay, "world": self.world,
               **self.evaluate(model), "train_loss": history[-1]["loss"], "seconds": time.time() - start}
        save_json(row, path)
        return row


def model_folder(args) -> Path:
    """Where the tokenizer and the pre-trained OPT of the current world are cached."""
    return args.cache / f"opt_v{args.vocab}_h{args.hidden}_l{args.layers}_s{args.pretrain_steps}_seed{args.world}"


def model_key(args, world: str) -> str:
    """The pre-trained model (world: pre-training seed and weights' fingerprint) and curvature sample a run
    starts from."""
    return f"v{args.vocab}_h{args.hidden}_l{args.layers}_s{args.pretrain_steps}_n{args.curvature_samples}_" + \
        hashlib.sha256(" ".join(args.targets).encode()).hexdigest()[:6] + "_world" + world.replace(":", "_")


def run_key(args, prior: str, lam: float, seed: int, replay: float, world: str) -> str:
    """The cache name of one fine-tune: a hash of every option its result depends on."""
    spec = PRIORS.get(prior, {})
    options = {"prior": prior, "lam": lam, "seed": seed, "r": args.r, "alpha": args.alpha, "lr": args.lr,
               "steps": args.steps, "batch": args.batch, "news": [args.train_news, args.val_news],
               "eval": args.eval_tokens, "fisher": args.fisher if prior in PRIORS and prior != "l2sp" else None,
               "model": model_key(args, world), "damping": args.damping if spec.get("damped") else None,
               "mu": args.mu if spec.get("mix") else None}
    if replay:
        options["replay"] = replay
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def cached_runs(args) -> list[dict]:
    """Every cached run of the current settings (any prior, lam, seed, replay share or world)."""
    rows = []
    for path in sorted((args.cache / "runs").glob("*.json")):
        row = json.loads(path.read_text())
        if "world" in row and path.stem == run_key(args, row["prior"], row["lam"], row["seed"], row["replay"],
                                                   row["world"]):
            rows.append(row)
    return rows


_BENCH: Bench | None = None


def _run_in_worker(job: tuple[str, float, int, float]) -> dict:
    return _BENCH.run(*job)


def extensions(rows: list[dict], pretrained: dict[str, float], args) -> list[tuple[str, float, int, float]]:
    """The next lam of every (prior, seed) path that has not yet reached the pre-trained model's Wikipedia
    perplexity (within --reach, on the validation and the test split) nor passed the largest budget."""
    plain = {r["seed"]: r for r in rows if r["prior"] == "none"}
    jobs = []
    for prior in args.priors:
        for seed in args.seeds:
            runs = [r for r in rows if r["prior"] == prior and r["seed"] == seed]
            if not runs or seed not in plain:
                continue
            last = max(runs, key=lambda r: r["lam"])
            done = all(last[f"wiki_{split}"] <= pretrained[f"wiki_{split}"] + args.reach
                       or last[f"news_{split}"] > max(args.budgets) * plain[seed][f"news_{split}"]
                       for split in ("val", "test"))
            lam = last["lam"] * args.extend_factor
            if not done and lam <= args.max_lam:
                jobs.append((prior, lam, seed, 0.0))
    return jobs


def main() -> None:
    global _BENCH
    args = parse_args()
    torch.set_num_threads(1)
    if args.from_json:
        analysed_file = json.loads(args.from_json.read_text())
        results = {"args": {**analysed_file["args"], "budgets": args.budgets}, "runs": [], "pretrained": {},
                   "curvature_seconds": {}, "pretrain": {}}
        merge(results, analysed_file)
    else:
        results = run_all(args)
    if args.merge_json:
        merge(results, json.loads(args.merge_json.read_text()))
    results["summary"] = summarise(results["runs"], results["args"])
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out / "forgetting_opt.json")
    plot(results, args.out / "forgetting_opt.png")
    print(tables(results))


def merge(results: dict, other: dict) -> None:
    """Add the runs, pre-trained perplexities and curvature timings of another results file (its worlds)."""
    if "news_test" in other["pretrained"]:  # written before worlds were recorded
        other = {**other, **{k: {ORIGINAL: other[k]} for k in ("pretrained", "curvature_seconds", "pretrain")}}
    known = {json.dumps(r, sort_keys=True) for r in with_defaults(results["runs"])}
    results["runs"] += [r for r in with_defaults(other["runs"]) if json.dumps(r, sort_keys=True) not in known]
    for key in ("pretrained", "curvature_seconds", "pretrain"):
        results[key] = {**other[key], **results[key]}


def run_all(args) -> dict:
    """Every fine-tune of the grid, the replay shares and the lam extensions (cached), then every cached run
    of the current settings, as the results to analyse."""
    global _BENCH
    t0 = time.time()
    _BENCH = bench = Bench(args)
    pretrained_ppl = bench.pretrained_perplexity()
    jobs = [("none", 0.0, seed, 0.0) for seed in args.seeds]
    jobs += [(REPLAY, 0.0, seed, share) for seed in args.seeds for share in args.replay]
    jobs += [(prior, lam, seed, 0.0) for seed in args.seeds for prior in args.priors
             for lam in sorted(set(args.lams) | {args.default_lam})]
    if args.analyse_only:
        jobs = []
    done = 0
    # fork: the workers inherit the data, the model and the curvature estimates
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        while jobs:
            for _ in tqdm(pool.map(_run_in_worker, jobs), total=len(jobs), desc="fine-tunes"):
                done += 1
            world = [r for r in cached_runs(args) if r["world"] == bench.world]
            jobs = [] if args.analyse_only else extensions(world, pretrained_ppl, args)
    rows = cached_runs(args)
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(f"{done} fine-tunes checked or run in {time.time() - t0:.0f} s; {len(rows)} cached runs analysed")
    return {"pretrained": {bench.world: pretrained_ppl}, "curvature_seconds": {bench.world: bench.curvature_seconds},
            "pretrain": {bench.world: {k: v for k, v in bench.info.items() if k != "history"}},
            "args": args_json, "runs": rows}


# -- analysis -----------------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def members(system: str) -> tuple[str, ...]:
    """The priors a row of the analysis stands for: one, or a family whose member is chosen per budget."""
    return FAMILIES.get(system, (system,))


def analysed(rows: list[dict]) -> list[str]:
    """Plain LoRA, every prior that ran, each family whose members all ran, then replay if it ran."""
    ran = {r["prior"] for r in rows}
    families = [f for f, m in FAMILIES.items() if set(m) <= ran]
    return ["none", *[p for p in PRIORS if p in ran], *families, *([REPLAY] if REPLAY in ran else [])]


def budget_ranges(budgets: list[float], step: float = 0.01) -> str:
    """1.01, 1.02, 1.03, 1.05 -> '1.01-1.03, 1.05'."""
    spans: list[list[float]] = []
    for b in sorted(budgets):
        if spans and b - spans[-1][-1] <= step * 1.5:
            spans[-1].append(b)
        else:
            spans.append([b])
    return ", ".join(f"{s[0]:.2f}" if len(s) == 1 else f"{s[0]:.2f}-{s[-1]:.2f}" for s in spans)


def strength(row: dict) -> float:
    """Where a run sits on its system's path: lam, or replay's share of pre-training examples."""
    return row["replay"] if row["prior"] == REPLAY else row["lam"]


def path_of(rows: list[dict], system: str, base: dict, split: str, lams: set[float] | None = None
            ) -> list[tuple[float, float]]:
    """(news ratio, Wikipedia perplexity) of plain LoRA, then of the system's runs by strength, on one split, for
    the seed and world of `base` (plain LoRA's run); `lams` restricts the runs."""
    runs = sorted((r for r in rows if r["prior"] == system and r["seed"] == base["seed"]
                   and r["world"] == base["world"] and (lams is None or strength(r) in lams)), key=strength)
    return [(1.0, base[f"wiki_{split}"])] + \
        [(r[f"news_{split}"] / base[f"news_{split}"], r[f"wiki_{split}"]) for r in runs]


def seed_front(rows: list[dict], system: str, base: dict, budget: float, lams: set[float] | None = None) -> float:
    """The test front of one seed at one budget. A family's member is the one whose *validation* front is the
    lowest at that budget; its test front is reported."""
    member = min(members(system), key=lambda m: front_value(path_of(rows, m, base, "val", lams), budget))
    return front_value(path_of(rows, member, base, "test", lams), budget)


ORIGINAL = "0:original"  # the world of results files written before worlds were recorded


def with_defaults(rows: list[dict]) -> list[dict]:
    """Runs of results files written before replay and worlds: replay share 0, world ORIGINAL."""
    return [{"replay": 0.0, "world": ORIGINAL, **r} for r in rows]


def worlds_of(rows: list[dict]) -> list[str]:
    """The worlds with plain LoRA runs, the one with the most runs first (the primary world)."""
    counts = {w: sum(r["world"] == w for r in rows) for w in {r["world"] for r in rows if r["prior"] == "none"}}
    return sorted(counts, key=lambda w: (-counts[w], w))


def default_ratio(runs: list[dict], base: dict, lam: float) -> float | None:
    """The test news ratio at `lam`: the run's, else interpolated linearly in log lam between the runs
    around it (None outside the runs' lams)."""
    points = sorted((r["lam"], r["news_test"] / base["news_test"]) for r in runs if r["lam"] > 0)
    for (l0, y0), (l1, y1) in zip(points, points[1:] + points[-1:]):
        if l0 == lam:
            return y0
        if l0 < lam < l1:
            return y0 + (y1 - y0) * math.log(lam / l0) / math.log(l1 / l0)
    return None


def ran(rows: list[dict], system: str, base: dict) -> bool:
    """Whether the system (a member of it) ran with the seed and in the world of plain LoRA's run `base`."""
    return system == "none" or any(r["prior"] in members(system) and r["seed"] == base["seed"]
                                   and r["world"] == base["world"] for r in rows)


def summarise_world(rows: list[dict], args: dict) -> dict:
    """Per system (prior, family, replay) of one world: the test front, the validation-selected run and the
    default lam's news ratio per budget, mean and sd over the seeds it ran; and where each front is beaten."""
    plain = {r["seed"]: r for r in rows if r["prior"] == "none"}
    summary = {}
    for system in analysed(rows):
        fronts, selected, default = {b: [] for b in args["budgets"]}, {b: [] for b in args["budgets"]}, []
        for seed, base in plain.items():
            if not ran(rows, system, base):
                continue
            # a family's trials carry their member's index as mu, so pick() chooses among members too
            trials = {Trial(strength(r), float(i), r["news_val"], r["wiki_val"]): r
                      for i, member in enumerate(members(system)) for r in rows
                      if r["prior"] == member and r["seed"] == seed}
            plain_trial = Trial(0.0, 0.0, base["news_val"], base["wiki_val"])
            for b in args["budgets"]:
                fronts[b].append(seed_front(rows, system, base, b))
                run = trials.get(pick(list(trials), plain_trial, b - 1), base)
                selected[b].append((run["wiki_test"], run["news_test"] / base["news_test"], run["prior"],
                                    strength(run)))
            ratio = default_ratio(list(trials.values()), base, args["default_lam"]) if system in PRIORS else None
            default += [ratio] if ratio is not None else []
        summary[system] = {
            "front": {str(b): _mean_sd(v) for b, v in fronts.items()},
            "selected": {str(b): {"wiki_test": _mean_sd([s[0] for s in v]), "news_ratio": _mean_sd([s[1] for s in v]),
                                  "runs": [s[2:] for s in v], "wiki_test_per_seed": [s[0] for s in v]}
                         for b, v in selected.items()},
            "default_news_ratio": _mean_sd(default) if default else None,
            "seeds": [seed for seed, base in plain.items() if ran(rows, system, base)],
        }
    return {"systems": summary, "beaten": beaten(rows), "selected_beaten": selected_beaten(summary, args)}


def selected_beaten(summary: dict, args: dict, tie: float = 0.05) -> dict[str, list[dict]]:
    """Per system and budget: every other system whose validation-selected run is lower on the test split by
    more than one paired sd (same seed) and more than `tie` perplexity (plain LoRA not counted)."""
    out = {}
    for system, s in summary.items():
        out[system] = []
        for b in map(str, args["budgets"]):
            for other, o in summary.items():
                mine = dict(zip(s["seeds"], s["selected"][b]["wiki_test_per_seed"]))
                theirs = dict(zip(o["seeds"], o["selected"][b]["wiki_test_per_seed"]))
                both = [seed for seed in mine if seed in theirs]
                if other in (system, "none") or not both:
                    continue
                d = _mean_sd([mine[seed] - theirs[seed] for seed in both])
                if d["mean"] > max(d["sd"], tie):
                    out[system].append({"budget": float(b), "other": other, **d})
    return out


def summarise(rows: list[dict], args: dict) -> dict:
    """Every world's summary (the primary world, with the most runs, first) and, with several worlds, the
    spread over worlds beside the spread over seeds."""
    rows = with_defaults(rows)
    worlds = worlds_of(rows)
    return {"worlds": {w: summarise_world([r for r in rows if r["world"] == w], args) for w in worlds},
            "spread": spread(rows, worlds, args)}


FINE_BUDGETS = [round(1.0 + 0.01 * i, 2) for i in range(31)]


def beaten(rows: list[dict], tie: float = 0.05) -> dict[str, list[dict]]:
    """Per system and budget of 1.0x-1.3x (step 0.01): every other front it lies above by more than one paired
    sd (same seed) and more than `tie` perplexity, with the paired difference's mean and sd."""
    bases = [r for r in rows if r["prior"] == "none"]
    systems = [s for s in analysed(rows) if s != "none"]
    curves = {s: {b: {base["seed"]: seed_front(rows, s, base, b) for base in bases if ran(rows, s, base)}
                  for b in FINE_BUDGETS} for s in systems}
    out = {}
    for system in systems:
        out[system] = []
        for b in FINE_BUDGETS:
            for other in systems:
                both = [seed for seed in curves[system][b] if seed in curves[other][b]]
                if other == system or not both:
                    continue
                d = _mean_sd([curves[system][b][seed] - curves[other][b][seed] for seed in both])
                if d["mean"] > max(d["sd"], tie):
                    out[system].append({"budget": b, "other": other, **d})
    return out


def spread(rows: list[dict], worlds: list[str], args: dict) -> dict:
    """Per prior run in several worlds (pre-training seed or build, curvature sample) and budget, on the lams
    every (world, seed) ran: the front's mean +- sd over each world's fine-tuning seeds, and over all (world, seed)
    pairs pooled (what varies when everything varies); the same for the front minus L2-SP's (paired)."""
    if len(worlds) < 2:
        return {}
    plains = {w: [r for r in rows if r["world"] == w and r["prior"] == "none"] for w in worlds}
    shared = set.intersection(*[{r["prior"] for r in rows if r["world"] == w} for w in worlds]) - {"none"}
    lams = {system: set.intersection(*[{strength(r) for r in rows if r["prior"] == system and r["world"] == w
                                        and r["seed"] == base["seed"]} for w in worlds for base in plains[w]
                                       if ran(rows, system, base)]) for system in shared}
    out = {}
    for system in [p for p in [*PRIORS, REPLAY] if p in shared]:
        # the (world, seed) pairs where this system and L2-SP ran
        bases = {w: [b for b in plains[w] if ran(rows, system, b) and ("l2sp" not in shared or ran(rows, "l2sp", b))]
                 for w in worlds}
        out[system] = {"lams": sorted(lams[system])}
        for b in args["budgets"]:
            fronts = {w: [seed_front(rows, system, base, b, lams[system]) for base in bases[w]] for w in worlds}
            cell = {w: _mean_sd(v) for w, v in fronts.items()}
            cell["pooled"] = _mean_sd([v for w in worlds for v in fronts[w]])
            if "l2sp" in shared and system != "l2sp":
                diffs = {w: [v - seed_front(rows, "l2sp", base, b, lams["l2sp"])
                             for v, base in zip(fronts[w], bases[w])] for w in worlds}
                cell.update({f"{w} minus l2sp": _mean_sd(v) for w, v in diffs.items()})
                cell["pooled minus l2sp"] = _mean_sd([v for w in worlds for v in diffs[w]])
            out[system][str(b)] = cell
    return out


def _cell(d: dict, digits: int = 1, sign: str = "") -> str:
    return f"{d['mean']:{sign}.{digits}f} +- {d['sd']:.{digits}f}"


def world_tables(world: str, summary: dict, pretrained: dict | None, args: dict) -> list[str]:
    """Markdown of one world: fronts, validation-selected runs, default lam, where each front is beaten."""
    systems = summary["systems"]
    budgets = [str(b) for b in args["budgets"]]
    head = "| system | " + " | ".join(f"{b}x" for b in budgets) + " |"
    rule = "|---|" + "---|" * len(budgets)
    out = [f"## World {world}", ""]
    if pretrained:
        out += [f"pre-trained: news test ppl {pretrained['news_test']:.2f}, wiki test ppl "
                f"{pretrained['wiki_test']:.2f}", ""]
    out += ["Front: lowest held-out (test) Wikipedia perplexity within the news-perplexity budget (mean +- sd "
            "over seeds; a family's member chosen on validation)", "", head, rule]
    out += [f"| {k} | " + " | ".join(_cell(v["front"][b]) for b in budgets) + " |" for k, v in systems.items()]
    out += ["", "Selected on validation (tolerance = budget - 1): test Wikipedia perplexity [test news ratio]", "",
            head, rule]
    for k, v in systems.items():
        picked = [v["selected"][b] for b in budgets]
        out.append(f"| {k} | " + " | ".join(f"{_cell(c['wiki_test'])} [{c['news_ratio']['mean']:.3f}]"
                                            for c in picked) + " |")
    out += ["", f"Default lam = {args['default_lam']:g} (relative scaling; interpolated in log lam where not run): "
            "test news perplexity / plain LoRA's", "", "| prior | news ratio |", "|---|---|"]
    out += [f"| {k} | {_cell(v['default_news_ratio'], 3)} |" for k, v in systems.items() if v["default_news_ratio"]]
    out += ["", "Budgets (1.0x-1.3x, step 0.01) where a front lies above another by more than one paired sd "
            "(and 0.05): the worst case, difference mean +- sd", "",
            "| system | beaten at | worst case |", "|---|---|---|"]
    out += _beaten_table(summary["beaten"])
    out += ["", "Budgets of the table where a validation-selected run lies above another system's selected run by "
            "more than one paired sd (and 0.05)", "", "| system | beaten at | worst case |", "|---|---|---|"]
    out += _beaten_table(summary["selected_beaten"])
    return out


def _beaten_table(beaten_cases: dict[str, list[dict]]) -> list[str]:
    out = []
    for system, cases in beaten_cases.items():
        worst = {}
        for c in cases:
            if c["budget"] not in worst or c["mean"] > worst[c["budget"]]["mean"]:
                worst[c["budget"]] = c
        top = max(worst.values(), key=lambda c: c["mean"], default=None)
        out.append(f"| {system} | {budget_ranges(list(worst)) or 'nowhere'} | "
                   + (f"{top['other']} at {top['budget']:g}x: +{_cell(top, 2)} |" if top else "- |"))
    return out


def tables(results: dict) -> str:
    """Markdown: every world's tables, then the spread over worlds beside the spread over seeds."""
    args, summary = results["args"], results["summary"]
    out = []
    for world, world_summary in summary["worlds"].items():
        out += world_tables(world, world_summary, results["pretrained"].get(world), args) + [""]
    if summary["spread"]:
        budgets = [str(b) for b in args["budgets"]]
        out += ["## Spread over worlds", "", "Front per world (mean +- sd over its fine-tuning seeds) and pooled over "
                "every (world, seed), on the lams every world ran; [front minus L2-SP's, paired]", "",
                "| system | over | " + " | ".join(f"{b}x" for b in budgets) + " |", "|---|---|" + "---|" * len(budgets)]
        for system, cells in summary["spread"].items():
            for name in [*summary["worlds"], "pooled"]:
                row = [_cell(cells[b][name]) + (f" [{_cell(cells[b][name + ' minus l2sp'], 1, '+')}]"
                                                if name + " minus l2sp" in cells[b] else "") for b in budgets]
                out.append(f"| {system} | {name} | " + " | ".join(row) + " |")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    """One row per world. Left: every front (test Wikipedia perplexity vs news budget; mean over the seeds the
    system ran, +- sd shaded). Right: each front minus L2-SP's front of the same seed (paired, so the
    seed-to-seed spread of the fine-tuning itself cancels), mean +- sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tts_bpeft.io import atomic_write

    rows = with_defaults(results["runs"])
    worlds = worlds_of(rows)
    grid = [1.0 + i * 0.005 for i in range(61)]
    fig, all_axes = plt.subplots(len(worlds), 2, figsize=(13, 5 * len(worlds)), squeeze=False)
    for world, axes in zip(worlds, all_axes):
        runs = [r for r in rows if r["world"] == world]
        bases = [r for r in runs if r["prior"] == "none"]
        reference = {base["seed"]: [seed_front(runs, "l2sp", base, b) for b in grid] for base in bases}
        for system in analysed(runs)[1:]:
            mine = [base for base in bases if ran(runs, system, base)]  # the seeds this system ran
            curves = [[seed_front(runs, system, base, b) for b in grid] for base in mine]
            reference_curves = [reference[base["seed"]] for base in mine]
            style = {"c": COLORS[system], "ls": "--" if system in FAMILIES else ":" if system == REPLAY else "-"}
            for ax, series in ((axes[0], curves), (axes[1], [[y - r for y, r in zip(c, ref)]
                                                              for c, ref in zip(curves, reference_curves)])):
                mean = [statistics.fmean(c) for c in zip(*series)]
                sd = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in zip(*series)]
                ax.plot(grid, mean, label=system, **style)
                ax.fill_between(grid, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                                color=style["c"], alpha=0.08)
        if world in results["pretrained"]:
            axes[0].axhline(results["pretrained"][world]["wiki_test"], c="k", ls=":", lw=1, label="pre-trained")
        axes[0].set_ylabel("held-out Wikipedia perplexity (test; lower = less forgetting)")
        axes[0].set_title(f"World {world}: fronts (mean +- sd over {len(bases)} seeds)")
        axes[1].axhline(0.0, c="k", lw=0.8)
        axes[1].set_ylabel("front - L2-SP's front, same seed (perplexity)")
        axes[1].set_title("Paired difference to L2-SP (below 0 = less forgetting)")
        for ax in axes:
            ax.set_xlabel("news perplexity budget (x plain LoRA, test split)")
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
