"""The shared training loop: exact resume after a real SIGKILL, data-parallel equality, the CSV log."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("train_script.py")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    reference = run(str(tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr
    killed = run(str(tmp_path / "killed"), "--kill-at", "5")
    assert killed.returncode == -9  # SIGKILL, mid-run
    assert not (tmp_path / "killed" / "final.pt").exists()
    resumed = run(str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = final(tmp_path / "whole"), final(tmp_path / "killed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    with open(tmp_path / "killed" / "log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 13))  # 3 epochs x 4 batches, each step logged once despite the kill
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # the half-written checkpoint was cleared on resume


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    big = run(str(tmp_path / "big"), "--batch", "4", "--dropout", "0")
    accum = run(str(tmp_path / "accum"), "--batch", "2", "--accum", "2", "--dropout", "0")
    assert big.returncode == 0 and accum.returncode == 0, big.stderr + accum.stderr
    with open(tmp_path / "accum" / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 12  # 3 epochs x 8 micro-batches / 2 = optimizer steps
    a, b = final(tmp_path / "big"), final(tmp_path / "accum")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", [2])
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, world):
    single = run(str(tmp_path / "single"), "--batch", "4", "--dropout", "0")
    assert single.returncode == 0, single.stderr
    init = tmp_path / "init"
    command = [sys.executable, str(SCRIPT), str(tmp_path / "ddp"), "--batch", "2", "--world", "2", "--init",
               str(init), "--dropout", "0"]
    procs = [subprocess.Popen([*command, "--rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = final(tmp_path / "single"), final(tmp_path / "ddp")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_the_log_read_back_on_resume_has_the_values_it_was_written_with(tmp_path):
    from tts_bpeft.training import CsvLog

    path = tmp_path / "log.csv"
    log = CsvLog(path, 0)
    log.add({"step": 1, "epoch": 0, "seconds": 0.5, "loss": 2.25})
    log.add({"step": 2, "epoch": 0, "seconds": 1.0, "loss": 1.5, "score": 0.75})  # a column the first row lacks
    log.add({"step": 3, "epoch": 1, "seconds": 1.5, "loss": 1.25})
    log.flush()
    resumed = CsvLog(path, 2)  # a checkpoint at step 2: step 3 is dropped
    assert resumed.rows == [{"step": 1, "epoch": 0, "seconds": 0.5, "loss": 2.25, "score": ""},
                            {"step": 2, "epoch": 0, "seconds": 1.0, "loss": 1.5, "score": 0.75}]
    assert resumed.epochs() == [{"loss": 1.875, "score": 0.75, "epoch": 1, "steps": 2, "seconds": 1.0}]
    resumed.flush()
    assert CsvLog(path, 2).rows == resumed.rows  # a second resume reads the rewritten log the same way
