"""The StyleTTS 2 recipes end to end on the tiny build and generated corpora (slow: minutes on 2 cores).

curvature (KFAC, EWC) -> a hydra multirun fine-tuning sweep over every prior -> synthesis -> export (also in
CI: marker e2e); a killed fine-tuning run resumes to the same adapter; two processes (torchrun-style, gloo)
fine-tune like one. Every recipe process runs in this module's temporary folder with its own phoneme cache
(``TTS_BPEFT_CACHE``), fixed seeds (the recipes' ``seed=0``) and, for gloo, a free port.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tts_bpeft.curvature import Curvature
from tts_bpeft.family import Voice, family
from tts_bpeft.quiet import KNOWN_LOG_RECORDS, KNOWN_WARNINGS
from tts_bpeft.runs import load_run

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).parents[2] / "recipes" / "styletts2_vctk"
FAST = ["optim.batch_size=1", "loss.max_frames=84", "checkpoint_every=1", "progress=false",
        "data.val_utterances=1", "data.test_utterances=1"]


def recipe_env(cwd: Path) -> dict[str, str]:
    """The environment of a recipe process: this tree importable, the user caches in `cwd` (no state shared
    with other tests or the user's own runs)."""
    return {**os.environ, "PYTHONPATH": str(RECIPES.parents[1]), "TTS_BPEFT_CACHE": str(cwd / ".cache")}


def recipe(script: str, *overrides: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(RECIPES / script), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=1800, env=recipe_env(cwd))
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    known = [k.message for k in (*KNOWN_WARNINGS, *KNOWN_LOG_RECORDS)]
    noisy = [p for p in known if re.search(p, done.stdout + done.stderr, re.I)]
    assert not noisy, f"{script} printed known third-party messages {noisy}: quiet logs broke"
    return done


def adapter_tensors(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_same_training(a: dict, b: dict, tolerance: float) -> None:
    """Two adapters trained the same way, up to floating-point rounding: the relative Frobenius distance of
    their trained B factors is below `tolerance`. The runs use ``optim.eps=1``: with the reference's eps 1e-9
    and beta1 0, AdamW moves every weight by ~10 lr sign(g), so gradients that are zero up to rounding would
    make whole steps differ; with eps 1 a step is ~lr g and rounding stays rounding."""
    keys = [k for k in a if "lora_B" in k]
    assert set(a) == set(b) and keys
    distance = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys) ** 0.5
    size = sum(float((a[k] ** 2).sum()) for k in keys) ** 0.5
    assert size > 0 and distance <= tolerance * size, (distance, size)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, vctk_root, libritts_root):
    work = tmp_path_factory.mktemp("recipes")
    for method in ("kfac", "ewc"):
        recipe("estimate_curvature.py", f"libritts.root={libritts_root}", "libritts.utterances=2", f"method={method}",
               f"output={work / f'curvature_{method}.safetensors'}", f"hydra.run.dir={work / ('curv_' + method)}",
               "max_frames=84", cwd=work)
    return work


@pytest.mark.e2e
def test_curvature_files_fit_the_preset_model(workdir):
    styletts2 = family("styletts2")
    model = styletts2.build({"config": "tiny"})
    styletts2.add_preset(model, "paper")
    kfac = Curvature.load(workdir / "curvature_kfac.safetensors", model.net)
    ewc = Curvature.load(workdir / "curvature_ewc.safetensors", model.net)
    assert kfac.samples == ewc.samples == 2 and kfac.method == "kfac" and ewc.method == "ewc"
    summary = json.loads((workdir / "curv_kfac" / "summary.json").read_text())
    assert summary["layers"] == len(kfac.names) and summary["bytes"] > 0


@pytest.mark.e2e
def test_prior_sweep_synthesis_and_export(workdir, vctk_root):
    sweep = workdir / "sweep"
    recipe("finetune.py", "-m", "prior=none,l2sp,ewc,kfac", f"data.vctk_root={vctk_root}", "optim.max_steps=2",
           f"+curvature_dir={workdir}", "prior.curvature=${curvature_dir}/curvature_${prior.kind}.safetensors",
           f"hydra.sweep.dir={sweep}", *FAST, cwd=workdir)
    runs = {json.loads((d / "run.json").read_text())["prior"]["kind"]: d for d in sweep.iterdir()
            if (d / "run.json").is_file()}
    assert set(runs) == {"none", "l2sp", "ewc", "kfac"}
    priors = {}
    for kind, run in runs.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 2 and (run / ".hydra" / "config.yaml").is_file()
        priors[kind] = summary["last"]["prior"]
    assert priors["none"] == 0 and all(priors[k] > 0 for k in ("l2sp", "ewc", "kfac"))
    with_prior, without = adapter_tensors(runs["kfac"]), adapter_tensors(runs["none"])
    assert max((with_prior[k] - without[k]).abs().max().item() for k in without) > 0  # the prior changed the update

    reference = next((vctk_root / "wav48_silence_trimmed" / "p248").glob("*_mic1.flac"))
    out = recipe("synthesize.py", f"run={runs['kfac']}", f"reference={reference}", "text=Good morning.",
                 f"hydra.run.dir={workdir / 'synth'}", "+inference.max_token_frames=4", cwd=workdir)
    assert "wrote 1 wav" in out.stdout and (workdir / "synth" / "synthesized" / "0000.wav").is_file()

    merged = workdir / "merged.pth"
    out = subprocess.run([sys.executable, str(RECIPES / "export.py"), str(runs["kfac"]), str(merged)], cwd=workdir,
                         capture_output=True, text=True, timeout=1800, env=recipe_env(workdir))
    assert out.returncode == 0 and merged.is_file(), out.stderr[-3000:]
    styletts2 = family("styletts2")
    adapted, _ = load_run(runs["kfac"])
    plain = styletts2.build({"config": "tiny", "checkpoint": str(merged)})
    settings = {"max_token_frames": 4}
    a = styletts2.synthesizer(adapted, settings)("Good morning.", Voice.clone(reference), 0)
    b = styletts2.synthesizer(plain, settings)("Good morning.", Voice.clone(reference), 0)
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())


def test_killed_finetuning_resumes_to_the_same_adapter(workdir, vctk_root):
    common = [f"data.vctk_root={vctk_root}", "optim.max_steps=3", "optim.eps=1.0", "prior=l2sp", *FAST]
    whole = workdir / "whole"
    recipe("finetune.py", *common, f"hydra.run.dir={whole}", cwd=workdir)
    killed = workdir / "killed"
    proc = subprocess.Popen([sys.executable, str(RECIPES / "finetune.py"), *common, f"hydra.run.dir={killed}"],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=recipe_env(workdir))
    deadline = time.time() + 1200
    while not (killed / "checkpoint.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()
    recipe("finetune.py", *common, f"hydra.run.dir={killed}", cwd=workdir)
    # equal up to the rounding of CPU kernels (the toy loop in tests/core resumes bit-exactly)
    assert_same_training(adapter_tensors(whole), adapter_tensors(killed), tolerance=1e-4)


def test_two_processes_share_the_global_batch(workdir, vctk_root):
    """torchrun-style launch (WORLD_SIZE/RANK env, gloo): 2 x batch 1 equals 1 process x batch 2."""
    base = [f"data.vctk_root={vctk_root}", "optim.max_steps=1", "optim.eps=1.0", "prior=l2sp", *FAST[1:],
            "loss.terms=[f0,norm,dur,ce]"]
    single = workdir / "single"
    recipe("finetune.py", *base, "optim.batch_size=2", f"hydra.run.dir={single}", cwd=workdir)
    ddp = workdir / "ddp"
    with socket.socket() as probe:  # a port no other test or job holds
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**recipe_env(workdir), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, str(RECIPES / "finetune.py"), *base, "optim.batch_size=1",
                               f"hydra.run.dir={ddp}"], cwd=workdir, env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        assert p.returncode == 0, err[-3000:]
    # one AdamW step (lr 1e-4): the mean of two per-process gradients rounds differently from one batch's
    # measured 1.2e-3: besides rounding, the style encoders' spectral-norm power iteration runs once per
    # utterance in train mode, so in one process the second utterance sees an updated estimate; a process
    # that trained on its shard alone (no gradient averaging) would differ by O(1)
    assert_same_training(adapter_tensors(single), adapter_tensors(ddp), tolerance=5e-3)
