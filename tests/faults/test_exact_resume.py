"""Issue 17, item 2: a run killed at any step, also in the middle of writing a checkpoint, resumes to weights
bit-equal to an uninterrupted run, although its data loader shuffles and crops with torch's global RNG; a
killed write's temp file is removed. The loop is the shared core one (tests/core/train_script.py, CPU)."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_helpers import FAST, finetune
from safetensors.torch import load_file

SCRIPT = Path(__file__).parents[1] / "core" / "train_script.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_killed_three_times_with_random_crops_resumes_bit_exactly(tmp_path):
    whole = run(str(tmp_path / "whole"), "--crops")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    # step 2: after the checkpoint's temp file is complete, before the rename; step 4: the end of epoch 0,
    # half-way through the write; step 7: mid-epoch, half-way through the write
    for kill in (["--kill-at", "2"], ["--kill-at", "4", "--mid-write"], ["--kill-at", "7", "--mid-write"]):
        killed = run(str(out), "--crops", *kill)
        assert killed.returncode == -9, killed.stderr  # SIGKILL
        assert list(out.glob(".checkpoint.pt.*.tmp"))  # the interrupted write
        assert not (out / "final.pt").exists()
    resumed = run(str(out), "--crops")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.glob(".*.tmp"))  # the half-written checkpoint was cleared on resume
    a = torch.load(tmp_path / "whole" / "final.pt", weights_only=True)
    b = torch.load(out / "final.pt", weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "whole" / "log.csv") as f:
        reference = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 13)]
    assert [r["loss"] for r in rows] == [r["loss"] for r in reference]  # every step saw the same crops


def test_reference_crops_do_not_depend_on_the_global_rng_or_the_batch():
    """StyleTTS 2's reference crops drawn from one generator per utterance: the same crop whatever torch's
    global RNG holds and whichever batch the utterance is in (what a resumed or data-parallel run needs)."""
    from tts_bpeft.styletts2.data.dataset import TTSItem, collate

    def item(name: str, frames: int) -> TTSItem:
        g = torch.Generator().manual_seed(frames)
        return TTSItem(name, "p248", "text", "tˈɛkst", torch.tensor([0, 62, 0]), torch.zeros(300 * frames),
                       torch.randn(80, frames, generator=g))

    items = [item("a.wav", 300), item("b.wav", 260)]
    refs = [item("ref_a.wav", 400), item("ref_b.wav", 500)]

    def generators():
        return [torch.Generator().manual_seed(11), torch.Generator().manual_seed(22)]

    torch.manual_seed(0)
    pair = collate(items, refs, 192, generators())
    torch.manual_seed(1)
    alone = collate(items[1:], refs[1:], 192, generators()[1:])
    assert torch.equal(pair.ref_mels[1], alone.ref_mels[0])
    start = int(torch.randint(0, 500 - 192 + 1, (1,), generator=torch.Generator().manual_seed(22)))
    assert torch.equal(alone.ref_mels[0], refs[1].mel[:, start:start + 192])  # the crop the generator drew


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_styletts2_finetuning_killed_twice_resumes_bit_exactly(tmp_path, vctk_root):
    """The recipe on the tiny build: killed before a checkpoint's rename and in the middle of another one's
    write, resumed, the adapter equals an uninterrupted run's bit for bit. The corpus (read-only, one
    recording damaged) is never written, the phoneme cache goes to the cache folder, and the summary counts
    the recording the reader skipped (items 2, 4 and 5)."""
    corpus = tmp_path / "VCTK-Corpus-0.92"
    shutil.copytree(vctk_root, corpus)
    next((corpus / "wav48_silence_trimmed" / "p248").glob("*_mic1.flac")).write_bytes(b"damaged")
    for path in [corpus, *corpus.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    before = snapshot(corpus)
    env = {"TTS_BPEFT_CACHE": str(tmp_path / "cache")}
    common = [f"data.vctk_root={corpus}", "optim.max_steps=4", *FAST]
    done = finetune(*common, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    for step, mid_write in ((1, False), (3, True)):
        killed = finetune(*common, f"hydra.run.dir={out}", cwd=tmp_path, kill_at=step, mid_write=mid_write, env=env)
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert list(out.glob(".checkpoint.pt.*.tmp")) and not (out / "adapter").exists()
    done = finetune(*common, f"hydra.run.dir={out}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.glob(".*.tmp")) and not (out / "run.lock").exists()
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert set(a) == set(b) and any("lora_B" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert snapshot(corpus) == before
    assert (tmp_path / "cache" / "phonemes.json").is_file()
    assert json.loads((out / "summary.json").read_text())["skipped_files"] == 1
