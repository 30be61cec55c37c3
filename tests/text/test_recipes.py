"""The hydra recipes end to end on tiny local files (configs composed with hydra's compose API)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "opt_glue"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"opt_glue_recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(RECIPES / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return _module(name).run(cfg)


def test_paper_defaults_and_the_scale_free_lam_in_configs():
    with initialize_config_dir(config_dir=str(RECIPES / "conf"), version_base="1.3"):
        glue = compose(config_name="finetune_glue")
        curv = compose(config_name="estimate_curvature")
    assert (glue.lora.r, glue.lora.alpha, list(glue.lora.targets)) == (16, 32, ["q_proj", "v_proj"])
    assert (glue.train.lr, glue.train.epochs, glue.train.batch_size) == (5e-4, 3, 32)
    assert glue.model == "facebook/opt-350m" and (glue.prior.lam, glue.prior.scaling) == (1.0, "relative")
    assert (curv.data.num_documents, curv.data.block_size, curv.batch_size) == (20000, 1024, 1)


def test_recipes_end_to_end(tiny, tmp_path):
    root, model = tiny["root"], str(tiny["model"])
    curv = _run("estimate_curvature", [f"model={model}", f"data.files=[{root / 'wiki.jsonl'}]",
                                       "data.num_documents=12", "data.block_size=32", "batch_size=4",
                                       f"output={tmp_path / 'curvature_kfac.safetensors'}", "method=kfac"])
    assert curv["metrics"]["samples"] == 12 and (tmp_path / "curvature_kfac.json").is_file()
    common = [f"model={model}", "lora.r=4", "lora.alpha=8", "train.epochs=1", "train.batch_size=8", "train.lr=1e-2"]
    glue = _run("finetune_glue", common + [
        f"data.train_file={root / 'sst2_train.tsv'}", f"data.validation_file={root / 'sst2_dev.tsv'}",
        f"prior.curvature={tmp_path / 'curvature_kfac.safetensors'}", "prior.lam=10.0", "prior.scaling=package",
        f"output_dir={tmp_path / 'glue'}"])
    metrics = glue["metrics"]
    assert metrics["examples"] == 16 and 0 <= metrics["accuracy"] <= 1 and metrics["penalty"] > 0
    assert len(metrics["history"]) == 1 and (tmp_path / "glue" / "adapter" / "adapter_config.json").is_file()
    evaluation = _run("evaluate", [f"model={model}", "task_type=glue", f"adapter={tmp_path / 'glue' / 'adapter'}",
                                   f"glue.file={root / 'sst2_dev.tsv'}",
                                   f"forgetting.files=[{root / 'wiki_heldout.jsonl'}]",
                                   "forgetting.skip_documents=0", "forgetting.block_size=32"])["metrics"]
    assert evaluation["task_accuracy"] == pytest.approx(metrics["accuracy"])  # the reloaded adapter agrees
    assert evaluation["forgetting_documents"] == 12 and evaluation["forgetting_perplexity"] > 1
    saved = json.loads((tmp_path / "glue" / "adapter" / "evaluate.json").read_text())
    assert saved["metrics"]["forgetting_perplexity"] == evaluation["forgetting_perplexity"]
    base = _run("evaluate", [f"model={model}", "task_type=glue", f"forgetting.files=[{root / 'wiki_heldout.jsonl'}]",
                             "forgetting.skip_documents=0", "forgetting.block_size=32",
                             f"output={tmp_path / 'pre.json'}"])["metrics"]
    assert base["forgetting_perplexity"] != evaluation["forgetting_perplexity"]  # the backbone did change

    clm = _run("finetune_clm", common + [
        f"data.files=[{root / 'news_train.txt'}]", f"data.validation_files=[{root / 'news_dev.txt'}]",
        "data.block_size=32", "prior.kind=l2sp", "prior.lam=1e-3", f"output_dir={tmp_path / 'clm'}"])["metrics"]
    assert clm["history"][-1]["validation_perplexity"] == pytest.approx(clm["perplexity"])
    clm_eval = _run("evaluate", [f"model={model}", "task_type=clm", f"adapter={tmp_path / 'clm' / 'adapter'}",
                                 f"target.files=[{root / 'news_dev.txt'}]", "target.block_size=32",
                                 f"forgetting.files=[{root / 'wiki_heldout.jsonl'}]", "forgetting.skip_documents=0",
                                 "forgetting.block_size=32"])["metrics"]
    assert clm_eval["target_perplexity"] == pytest.approx(clm["perplexity"], rel=1e-5)


@pytest.mark.slow
def test_hydra_command_line(tiny, tmp_path):
    root = tiny["root"]
    out = tmp_path / "c.safetensors"
    subprocess.run([sys.executable, str(RECIPES / "estimate_curvature.py"), f"model={tiny['model']}",
                    f"data.files=[{root / 'wiki.jsonl'}]", "data.num_documents=8", "data.block_size=16",
                    "method=ewc", f"output={out}", f"hydra.run.dir={tmp_path / 'hydra'}"], check=True)
    assert json.loads((tmp_path / "c.json").read_text())["metrics"]["samples"] == 8


def test_select_strength_recipe(tiny, tmp_path):
    """The lam search on tiny files: plain LoRA + a bracketed, bisected lam; the chosen run is within the
    tolerance on validation and its adapter exists; a rerun refits nothing."""
    root, model = tiny["root"], str(tiny["model"])
    _run("estimate_curvature", [f"model={model}", f"data.files=[{root / 'wiki.jsonl'}]", "data.num_documents=12",
                                "data.block_size=32", "batch_size=4", "method=kfac",
                                f"output={tmp_path / 'curvature_kfac.safetensors'}"])
    overrides = [f"model={model}", "lora.r=4", "lora.alpha=8", "train.epochs=1", "train.batch_size=8",
                 "train.lr=3e-2", f"data.files=[{root / 'news_train.txt'}]",
                 f"data.validation_files=[{root / 'news_dev.txt'}]", "data.block_size=32",
                 f"heldout.files=[{root / 'wiki_heldout.jsonl'}]", "prior.kind=kfac", "selection.second=damping",
                 "selection.mus=[0.0,0.3]",
                 f"prior.curvature={tmp_path / 'curvature_kfac.safetensors'}", "selection.tolerance=0.01",
                 "selection.lam0=10", "selection.steps=1", "selection.factor=100", f"output_dir={tmp_path / 'sel'}"]
    record = _run("select_strength", overrides)["metrics"]
    chosen, plain = record["chosen"], record["plain"]
    assert plain["lam"] == 0 and chosen["finetune"] <= 1.01 * plain["finetune"]
    assert Path(record["adapter"], "adapter_config.json").is_file()
    # the forgetting metric, recomputed from the saved adapter by the evaluate recipe
    check = _run("evaluate", [f"model={model}", "task_type=clm", f"adapter={record['adapter']}",
                              f"target.files=[{root / 'wiki_heldout.jsonl'}]", "target.block_size=32",
                              f"forgetting.files=[{root / 'wiki_heldout.jsonl'}]", "forgetting.skip_documents=0",
                              "forgetting.block_size=32"])["metrics"]
    assert check["target_perplexity"] == pytest.approx(chosen["forgetting"], rel=1e-5)
    trials = json.loads((tmp_path / "sel" / "trials.json").read_text())["trials"]
    assert len(trials) == 1 + record["trials"] >= 5 and {t["mu"] for t in trials} == {0.0, 0.3}
    table = (tmp_path / "sel" / "selection.md").read_text()
    assert "**yes**" in table and "budget" in table
    stamp = (tmp_path / "sel" / "lam0_mu0" / "finetune.json").stat().st_mtime_ns
    again = _run("select_strength", overrides)["metrics"]
    assert again["chosen"] == chosen and (tmp_path / "sel" / "lam0_mu0" / "finetune.json").stat().st_mtime_ns == stamp
