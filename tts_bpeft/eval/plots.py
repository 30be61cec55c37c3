"""Plots of a zero-shot evaluation (PNG, drawn with matplotlib's Agg canvas; pyplot is never imported, so
the caller's matplotlib backend is left alone):

- `plot_tradeoff`: target-speaker SIM against mean unseen-speaker SIM, one point per system; the points of
  one method + prior are joined in order of lam, and the Pareto front is marked;
- `plot_speaker_similarity`: SIM per speaker and system as grouped bars, speakers grouped by accent;
- `plot_training_curves`: the per-step columns of fine-tuning runs' ``log.csv`` files (loss, its terms,
  the prior penalty) against the optimizer step.

Inputs are the plain dicts of `tts_bpeft.eval.report` (summaries and rows), so results read back from disk
can be plotted again.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from tts_bpeft.eval.report import pareto_front
from tts_bpeft.io import atomic_write

LOG_INDEX_COLUMNS = ("step", "epoch", "seconds")


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Render ``fig`` to a PNG at ``path`` atomically."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight"))


def _num(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def group_label(method: str, prior: str | None) -> str:
    """Legend label of a method + prior: ``"lora+kfac"``, ``"lora"`` (no prior), ``"pretrained"``."""
    prior = prior or "none"
    return method if prior == "none" else f"{method}+{prior}"


def plot_tradeoff(summary: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None,
                  dpi: int = 120) -> Path:
    """Trade-off of each system: target-speaker SIM (x) against mean unseen-speaker SIM (y).

    Points of one ``method`` + ``prior`` are joined in order of ``lam`` and labelled with it; the Pareto
    front (both SIMs maximised; `tts_bpeft.eval.report.pareto_front`) is circled and joined by a dashed
    line. Systems with a NaN SIM are left out. Returns ``path``.
    """
    points = [s for s in summary if not (math.isnan(_num(s["target_SIM"])) or math.isnan(_num(s["unseen_SIM"])))]
    if not points:
        raise ValueError("no system has both a target and an unseen-speaker SIM to plot")
    fig = Figure(figsize=(6.4, 5.0))
    ax = fig.add_subplot()
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in points:
        groups.setdefault(group_label(str(s.get("method", "")), s.get("prior")), []).append(s)
    for label, items in groups.items():
        items = sorted(items, key=lambda s: (-math.inf if math.isnan(_num(s.get("lam"))) else _num(s.get("lam"))))
        xs = [_num(s["target_SIM"]) for s in items]
        ys = [_num(s["unseen_SIM"]) for s in items]
        marker = "*" if label == "pretrained" else "o"
        ax.plot(xs, ys, marker=marker, markersize=12 if marker == "*" else 6, linestyle="-" if len(items) > 1
                else "none", label=label)
        for s, x, y in zip(items, xs, ys, strict=True):
            lam = _num(s.get("lam"))
            if not math.isnan(lam) and len(items) > 1:
                ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front([(_num(s["target_SIM"]), _num(s["unseen_SIM"])) for s in points])
    fx = [_num(points[i]["target_SIM"]) for i in front]
    fy = [_num(points[i]["unseen_SIM"]) for i in front]
    ax.plot(fx, fy, linestyle="--", color="black", linewidth=0.8, marker="o", markersize=14,
            markerfacecolor="none", markeredgecolor="black", label="Pareto front")
    targets = sorted({str(s.get("target_speaker")) for s in points if s.get("target_speaker")})
    ax.set_xlabel("target-speaker SIM" + (f" ({', '.join(targets)})" if targets else ""))
    ax.set_ylabel("mean unseen-speaker SIM")
    ax.set_title(title or "Adaptation vs. zero-shot forgetting")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, dpi)


def _speaker_order(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(speaker, accent, role) of every speaker: target(s) first, then by accent, then by id."""
    seen: dict[str, tuple[str, str, str]] = {}
    for r in rows:
        seen.setdefault(str(r["speaker"]), (str(r["speaker"]), str(r.get("accent") or "?"), str(r["role"])))
    return sorted(seen.values(), key=lambda t: (t[2] != "target", t[1], t[0]))


def plot_speaker_similarity(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None,
                            dpi: int = 120) -> Path:
    """Grouped bars of SIM per speaker (one bar per system), speakers grouped by accent.

    The target speaker comes first (tick label marked ``(target)``); accent groups are separated by a gap
    and named under the axis. Missing (system, speaker) pairs and NaN SIMs leave an empty slot. Returns
    ``path``.
    """
    if not rows:
        raise ValueError("no rows to plot")
    systems = list(dict.fromkeys(str(r["system"]) for r in rows))
    sims = {(str(r["system"]), str(r["speaker"])): _num(r["SIM"]) for r in rows}
    speakers = _speaker_order(rows)
    positions, x, previous = [], 0.0, None
    for _, accent, role in speakers:
        group = (role, accent)
        if previous is not None and group != previous:
            x += 0.6
        positions.append(x)
        x += 1.0
        previous = group
    width = 0.8 / len(systems)
    fig = Figure(figsize=(max(6.0, 0.65 * len(speakers) * max(1.0, len(systems) / 3) + 2), 4.6))
    ax = fig.add_subplot()
    for k, system in enumerate(systems):
        offsets = [p - 0.4 + width * (k + 0.5) for p in positions]
        values = [sims.get((system, spk), math.nan) for spk, _, _ in speakers]
        ax.bar(offsets, np.nan_to_num(values, nan=0.0), width=width, label=system)
    ax.set_xticks(positions)
    ax.set_xticklabels([spk + ("\n(target)" if role == "target" else "") for spk, _, role in speakers], fontsize=8)
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    accents: dict[tuple[str, str], list[float]] = {}
    for (_, accent, role), pos in zip(speakers, positions, strict=True):
        accents.setdefault((role, accent), []).append(pos)
    for (_, accent), where in accents.items():
        ax.text(float(np.mean(where)), -0.16, accent, transform=transform, ha="center", va="top", fontsize=8,
                style="italic")
    finite = [v for v in sims.values() if not math.isnan(v)]
    low = min(0.0, min(finite)) if finite else 0.0
    ax.set_ylim(low, 1.0)
    ax.set_ylabel("speaker similarity (cosine)")
    ax.set_title(title or "Speaker similarity per speaker, grouped by accent")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=min(4, len(systems)))
    return _save(fig, path, dpi)


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """The numeric columns of a training ``log.csv`` as float arrays (steps,), by column name.

    Cells that are empty or not numbers become NaN; a column with no number at all is dropped.
    Raises ValueError when the file has no ``step`` column or no rows.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    if not records or "step" not in records[0]:
        raise ValueError(f"{path}: not a training log (needs a header with 'step' and at least one row)")
    columns: dict[str, np.ndarray] = {}
    for name in records[0]:
        values = []
        for record in records:
            try:
                values.append(float(record[name]))
            except (TypeError, ValueError):
                values.append(math.nan)
        array = np.asarray(values, dtype=np.float64)
        if not np.all(np.isnan(array)):
            columns[name] = array
    return columns


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < 2:
        return values
    window = min(window, values.size)
    kernel = np.ones(window)
    valid = ~np.isnan(values)
    sums = np.convolve(np.where(valid, values, 0.0), kernel, mode="full")[: values.size]
    counts = np.convolve(valid.astype(float), kernel, mode="full")[: values.size]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def plot_training_curves(logs: Mapping[str, str | Path], path: str | Path, columns: Sequence[str] | None = None,
                         smooth: int = 1, ncols: int = 3, dpi: int = 110) -> Path:
    """One panel per logged quantity (``loss``, each loss term, ``prior``) against the optimizer step, one
    line per run (``logs``: run label -> its ``log.csv``).

    ``columns`` picks the panels (default: every numeric column but step / epoch / seconds, ``loss`` first,
    in order of appearance); ``smooth`` > 1 draws a trailing moving average over that many steps. Returns
    ``path``.
    """
    if not logs:
        raise ValueError("no training logs to plot")
    data = {label: read_log(p) for label, p in logs.items()}
    if columns is None:
        names = [c for d in data.values() for c in d if c not in LOG_INDEX_COLUMNS]
        columns = list(dict.fromkeys(["loss", *names] if "loss" in names else names))
    if not columns:
        raise ValueError("the training logs hold no quantity to plot besides step / epoch / seconds")
    ncols = max(1, min(ncols, len(columns)))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        for k, (label, d) in enumerate(data.items()):  # one colour per run in every panel
            if column in d:
                ax.plot(d["step"], _moving_average(d[column], smooth), label=label, linewidth=1.0,
                        color=f"C{k % 10}")
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes.flat:  # every run once, even when the first panel lacks some
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(labels) / 3)))
    fig.tight_layout()
    return _save(fig, path, dpi)
