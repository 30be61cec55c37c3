"""The evaluation plots are written as valid PNG images from hand-made rows, summaries and training logs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tts_bpeft.eval.plots import plot_speaker_similarity, plot_tradeoff, plot_training_curves, read_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, min_width: int = 300, min_height: int = 200) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height
    assert image.shape[2] in (3, 4)
    assert float(np.std(image[..., :3])) > 0.01  # something is drawn, not a blank canvas
    return image


def _summary(system, method, prior, lam, target, unseen):
    return {"system": system, "method": method, "prior": prior, "lam": lam, "target_speaker": "p248",
            "target_SIM": target, "unseen_SIM": unseen}


def test_tradeoff_plot(tmp_path) -> None:
    summary = [
        _summary("pretrained", "pretrained", "none", None, 0.55, 0.80),
        _summary("lora", "lora", "none", 0.0, 0.90, 0.40),
        _summary("kfac_1e3", "lora", "kfac", 1e3, 0.85, 0.60),
        _summary("kfac_1e4", "lora", "kfac", 1e4, 0.75, 0.72),
        _summary("ewc_1e3", "lora", "ewc", 1e3, 0.80, 0.50),
        _summary("broken", "lora", "ewc", 1e4, math.nan, 0.5),  # left out
    ]
    out = plot_tradeoff(summary, tmp_path / "plots" / "tradeoff.png")
    assert out == tmp_path / "plots" / "tradeoff.png"
    _check_png(out)
    with pytest.raises(ValueError, match="no system"):
        plot_tradeoff([summary[-1]], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_speaker_similarity_bars(tmp_path) -> None:
    accents = {"p248": "Indian", "p225": "English", "p234": "Scottish", "p238": "NorthernIrish",
               "p261": "NorthernIrish", "p302": "Canadian"}
    rows = []
    for k, system in enumerate(("pretrained", "lora", "lora+kfac")):
        for j, (speaker, accent) in enumerate(accents.items()):
            role = "target" if speaker == "p248" else "unseen"
            rows.append({"system": system, "speaker": speaker, "accent": accent, "role": role,
                         "SIM": 0.5 + 0.05 * j - 0.1 * k})
    rows[-1]["SIM"] = math.nan  # a missing score leaves an empty slot
    small = _check_png(plot_speaker_similarity(rows[:6], tmp_path / "one.png"))
    large = _check_png(plot_speaker_similarity(rows, tmp_path / "bars.png"))
    assert large.shape[1] >= small.shape[1]  # more systems -> at least as wide
    with pytest.raises(ValueError):
        plot_speaker_similarity([], tmp_path / "empty.png")


def _write_log(path: Path, steps: int, scale: float, prior: bool = True) -> Path:
    lines = ["step,epoch,seconds,loss,mel,dur" + (",prior" if prior else "")]
    for s in range(1, steps + 1):
        loss = scale * math.exp(-s / 10)
        row = f"{s},{(s - 1) // 5},{0.5 * s:.3f},{loss:.6f},{0.6 * loss:.6f},{0.4 * loss:.6f}"
        lines.append(row + (f",{0.01 * s:.4f}" if prior else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_log_parses_numbers(tmp_path) -> None:
    log = read_log(_write_log(tmp_path / "a" / "log.csv", 12, 2.0))
    assert list(log) == ["step", "epoch", "seconds", "loss", "mel", "dur", "prior"]
    assert log["step"].tolist() == list(range(1, 13))
    assert log["loss"][0] == pytest.approx(2.0 * math.exp(-0.1), rel=1e-5)
    assert log["prior"][-1] == pytest.approx(0.12)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a training log"):
        read_log(bad)


def test_training_curves(tmp_path) -> None:
    logs = {"lora": _write_log(tmp_path / "r1" / "log.csv", 30, 2.0, prior=False),
            "lora+kfac": _write_log(tmp_path / "r2" / "log.csv", 20, 1.5)}
    _check_png(plot_training_curves(logs, tmp_path / "curves.png", smooth=3))
    # 4 panels (loss, mel, dur, prior) on 3 columns -> 2 rows; one panel -> 1 row: the first is taller
    one = _check_png(plot_training_curves(logs, tmp_path / "loss.png", columns=["loss"]), min_width=200)
    four = imread(tmp_path / "curves.png")
    assert four.shape[0] > one.shape[0] * 1.4
    with pytest.raises(ValueError):
        plot_training_curves({}, tmp_path / "x.png")
