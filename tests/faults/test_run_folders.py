"""Issue 17, item 1: every configuration has its own run folder, a folder holding another configuration is
refused naming the keys that differ, and a second live process on one folder is refused (a dead one's lock
is taken over). Fast: the refusals come before any model is built."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from fault_helpers import RECIPES, finetune
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

SWEPT = ["prior.damping=0.1", "prior.mix=l2sp", "prior.mu=0.5", "lora.r=8", "optim.lr=2e-4", "seed=1",
         "prior.lam=10", "train_utterances=3", "lora.alpha=8", "data.trim_db=40"]


def run_dirs(overrides: list[str]) -> tuple[str, str]:
    """(run dir, sweep subdir) of the fine-tuning recipe's config with `overrides`, as hydra resolves them."""
    from tts_bpeft.runs import register_run_name_resolver

    register_run_name_resolver()
    with initialize_config_dir(config_dir=str(RECIPES / "conf"), version_base="1.3"):
        cfg = compose("finetune", overrides=["data.vctk_root=/corpus", "prior=kfac", *overrides],
                      return_hydra_config=True)
    return OmegaConf.select(cfg, "hydra.run.dir"), OmegaConf.select(cfg, "hydra.sweep.subdir")


def test_every_setting_of_a_sweep_gets_its_own_folder():
    base_run, base_sub = run_dirs([])
    assert base_run.startswith("outputs/finetune/p248/lora_kfac_lam1000.0_nNone_")  # readable, then the hash
    folders = {base_run} | {run_dirs([o])[0] for o in SWEPT}
    subdirs = {base_sub} | {run_dirs([o])[1] for o in SWEPT}
    assert len(folders) == len(subdirs) == len(SWEPT) + 1
    assert run_dirs(["progress=false", "checkpoint_every=1"]) == (base_run, base_sub)  # not part of the identity
    assert run_dirs([]) == (base_run, base_sub)  # the same settings, the same folder (resume)


def test_a_folder_holding_other_settings_is_refused_naming_the_keys(tmp_path, vctk_root):
    common = [f"data.vctk_root={vctk_root}", f"hydra.run.dir={tmp_path / 'run'}", "speaker=p999",
              "model.checkpoint=/no/such/checkpoint.pth"]
    first = finetune(*common, cwd=tmp_path)  # writes run.json, then stops at the unknown speaker
    assert first.returncode != 0 and "speaker=p999" in first.stderr
    again = finetune(*common, "lora.r=8", "optim.lr=0.001", cwd=tmp_path)
    assert again.returncode != 0
    assert "this folder holds a run with other settings (lora.r: 16 -> 8; optim.lr: 0.0001 -> 0.001)" in again.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["lora"]["r"] == 16  # not relabelled


def test_settings_that_do_not_shape_the_result_may_change_on_resume(tmp_path):
    from tts_bpeft.runs import RunConflictError, write_run

    settings = {"seed": 0, "prior": {"kind": "kfac", "damping": 0.0}, "progress": True, "device": "cpu"}
    write_run(tmp_path, settings, "styletts2")
    write_run(tmp_path, {**settings, "progress": False, "checkpoint_every": 1, "device": "cuda"}, "styletts2")
    with pytest.raises(RunConflictError, match=r"prior.damping: 0.0 -> 0.1\)"):
        write_run(tmp_path, {**settings, "prior": {"kind": "kfac", "damping": 0.1}}, "styletts2")


def test_a_second_live_process_is_refused(tmp_path, vctk_root):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (folder / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        done = finetune(f"data.vctk_root={vctk_root}", f"hydra.run.dir={folder}", cwd=tmp_path)
        assert done.returncode != 0
        assert f"run.lock: process {holder.pid} on {socket.gethostname()}" in done.stderr
        assert "is training in this folder" in done.stderr
        assert not (folder / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    from tts_bpeft.runs import RunConflictError, run_lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RunConflictError, match=f"process {os.getpid()}"):
            with run_lock(tmp_path):
                pass
        other = subprocess.run([sys.executable, "-c", f"from tts_bpeft.runs import run_lock\n"
                                f"with run_lock({str(tmp_path)!r}): pass"], capture_output=True, text=True)
        assert other.returncode != 0 and "is training in this folder" in other.stderr
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "another-machine"}))  # cannot be checked from here: refused
    with pytest.raises(RunConflictError, match="another-machine"):
        with run_lock(tmp_path):
            pass
