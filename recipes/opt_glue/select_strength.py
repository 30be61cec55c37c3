"""Choose the prior's lam (and mu) for a tolerance on validation data, instead of guessing it.

    python recipes/opt_glue/select_strength.py prior.kind=kfac selection.second=damping \
        'selection.mus=[0.0,0.3]' data.hub_name=wikitext-2-raw-v1 heldout.files=[wiki_heldout.jsonl]

Each trial is one run of ``finetune_clm.py`` (same config) in ``<output_dir>/lam<lam>_mu<value>``: its
validation perplexity is the fine-tuning metric, the perplexity of ``heldout`` (pre-training text not used
for the curvature) the forgetting metric. `tts_bpeft.selection.select_strength` searches lam (per value of
``selection.mus``, which sets ``prior.mu`` or, with ``selection.second=damping``, ``prior.damping``) for
the least forgetting with a validation perplexity at most ``1 + selection.tolerance`` times plain LoRA's.
Writes ``trials.json`` (resumable: a rerun refits nothing), ``selection.md`` (the trials table) and
``select_strength.json`` (the chosen trial and its adapter folder).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from tts_bpeft.io import write_text
from tts_bpeft.selection import select_strength
from tts_bpeft.text.recipe import finetune_clm, finish, log, path


def trial_dir(out: Path, lam: float, mu: float) -> Path:
    return out / f"lam{lam:.6g}_mu{mu:g}"


def run(cfg: DictConfig) -> dict:
    """Search, write the trial log and table; returns the record (chosen trial, its adapter)."""
    if not (cfg.heldout.get("files") or cfg.heldout.get("hub")):
        raise ValueError("select_strength needs held-out pre-training text for the forgetting metric: "
                         "heldout.files=[...] (or heldout.hub)")
    out = Path(path(cfg.output_dir))

    def fit(lam: float, mu: float) -> tuple[float, float]:
        trial = OmegaConf.to_container(cfg, resolve=True)
        trial["prior"].update({"lam": lam, cfg.selection.second: mu,
                               "kind": trial["prior"]["kind"] if lam else "none"})
        trial["output_dir"] = str(trial_dir(out, lam, mu))
        metrics = finetune_clm(OmegaConf.create(trial))["metrics"]
        return metrics["perplexity"], metrics["heldout_perplexity"]

    s = cfg.selection
    if s.second not in ("mu", "damping"):
        raise ValueError(f"selection.second must be 'mu' or 'damping', got {s.second!r}")
    selection = select_strength(fit, tolerance=s.tolerance, lam0=s.lam0, mus=list(s.mus), factor=s.factor,
                                steps=s.steps, log=out / "trials.json", report=log.info)
    write_text(out / "selection.md", selection.table() + "\n")
    chosen = selection.chosen
    metrics = {"chosen": asdict(chosen), "plain": asdict(selection.plain), "trials": len(selection.trials),
               "adapter": str(trial_dir(out, chosen.lam, chosen.mu) / "adapter")}
    return finish(cfg, out, metrics, "select_strength")


@hydra.main(config_path="conf", config_name="select_strength", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
