"""Zero-shot evaluation results: per-speaker rows, per-system summaries, the Pareto front, the Markdown table
and the result files (``results.csv``, ``results.json``, ``utterances.csv``, ``summary.md``).

Everything here works on plain dicts so that results read back from disk, or made by hand, go through the
same code:

- an *utterance score* holds ``system, method, prior, lam, speaker, accent, gender, role`` (``"target"`` or
  ``"unseen"``), ``SIM`` (cosine in [-1, 1], NaN when the speaker encoder found no speech), and when ASR ran
  ``WER``, ``CER`` (fractions, may exceed 1), ``words`` and ``chars`` (reference length after normalisation);
- a *row* (`aggregate`) is one (system, speaker): mean SIM, pooled WER / CER, and the counts;
- a *summary* (`summarize`) is one system: target-speaker SIM, mean unseen-speaker SIM (mean of the
  per-speaker means), pooled WER / CER, and whether it lies on the Pareto front of (target SIM, unseen SIM).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tts_bpeft.io import save_json, write_text

ROLES = ("target", "unseen")
BACKEND_COLUMNS = ("SIM_encoder", "ASR_model")
"""CSV columns naming the speaker encoder and the ASR model (``describe_backend``) on every row."""
RESULT_COLUMNS = (
    "system", "method", "prior", "lam", "speaker", "accent", "gender", "role",
    "SIM", "WER", "CER", "n", "n_sim", "words", "chars", *BACKEND_COLUMNS,
)
SUMMARY_COLUMNS = (
    "system", "method", "prior", "lam", "target_speaker", "target_SIM", "unseen_SIM", "unseen_speakers",
    "WER", "CER", "WER_target", "WER_unseen", "n", "pareto",
)
UTTERANCE_COLUMNS = (
    "system", "method", "prior", "lam", "speaker", "accent", "gender", "role", "utterance_id", "text",
    "wav", "reference", "SIM", "hypothesis", "WER", "CER", "words", "chars", *BACKEND_COLUMNS,
)
_META = ("system", "method", "prior", "lam")


def _nan(value: Any) -> float:
    """``value`` as a float; None and empty strings become NaN."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _pooled(rates: Sequence[float], lengths: Sequence[float]) -> float:
    """Error rate pooled over utterances: sum(rate_i * length_i) / sum(length_i), i.e. errors / length."""
    pairs = [(r, n) for r, n in zip(rates, lengths, strict=True) if not math.isnan(r) and not math.isnan(n)]
    total = sum(n for _, n in pairs)
    return float(sum(r * n for r, n in pairs) / total) if pairs and total > 0 else math.nan


def aggregate(utterance_scores: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (system, speaker), in order of first appearance.

    ``SIM`` is the mean over the speaker's utterances that have one (``n_sim`` of ``n``); ``WER`` / ``CER``
    are pooled (total errors / total reference words or characters; ``words`` / ``chars`` are the totals).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for score in utterance_scores:
        groups.setdefault((str(score["system"]), str(score["speaker"])), []).append(score)
    rows = []
    for items in groups.values():
        first = items[0]
        sims = [_nan(s.get("SIM")) for s in items]
        words = [_nan(s.get("words")) for s in items]
        chars = [_nan(s.get("chars")) for s in items]
        rows.append({
            **{k: first.get(k) for k in _META},
            "speaker": first["speaker"], "accent": first.get("accent", ""), "gender": first.get("gender", ""),
            "role": first["role"],
            "SIM": _nanmean(sims),
            "WER": _pooled([_nan(s.get("WER")) for s in items], words),
            "CER": _pooled([_nan(s.get("CER")) for s in items], chars),
            "n": len(items), "n_sim": sum(not math.isnan(v) for v in sims),
            "words": int(sum(w for w in words if not math.isnan(w))),
            "chars": int(sum(c for c in chars if not math.isnan(c))),
        })
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates to be maximised.

    Point j dominates i when it is >= in both coordinates and > in at least one; equal points are all on
    the front. Points with a NaN coordinate are never on it. Indices come sorted by the first coordinate
    (then index).
    """
    pts = [(float(x), float(y)) for x, y in points]
    valid = [i for i, (x, y) in enumerate(pts) if not (math.isnan(x) or math.isnan(y))]
    front = []
    for i in valid:
        xi, yi = pts[i]
        dominated = any(
            pts[j][0] >= xi and pts[j][1] >= yi and (pts[j][0] > xi or pts[j][1] > yi) for j in valid if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], i))


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per system (order of first appearance) from `aggregate` rows.

    ``target_SIM``: SIM of the target-speaker row(s) (mean when several); ``unseen_SIM``: mean of the
    unseen speakers' SIMs (each speaker counts once); ``WER`` / ``CER``: pooled over all the system's
    utterances, ``WER_target`` / ``WER_unseen`` over one role; ``pareto``: on the front of (target_SIM,
    unseen_SIM) among all systems.
    """
    systems: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        systems.setdefault(str(row["system"]), []).append(row)
    out = []
    for items in systems.values():
        first = items[0]
        by_role = {role: [r for r in items if r["role"] == role] for role in ROLES}
        unknown = {r["role"] for r in items} - set(ROLES)
        if unknown:
            raise ValueError(f"system {first['system']}: unknown role(s) {sorted(unknown)}; use {ROLES}")

        def pooled(subset: Sequence[Mapping[str, Any]], rate: str, length: str) -> float:
            return _pooled([_nan(r.get(rate)) for r in subset], [_nan(r.get(length)) for r in subset])

        out.append({
            **{k: first.get(k) for k in _META},
            "target_speaker": ",".join(str(r["speaker"]) for r in by_role["target"]),
            "target_SIM": _nanmean([_nan(r["SIM"]) for r in by_role["target"]]),
            "unseen_SIM": _nanmean([_nan(r["SIM"]) for r in by_role["unseen"]]),
            "unseen_speakers": len(by_role["unseen"]),
            "WER": pooled(items, "WER", "words"), "CER": pooled(items, "CER", "chars"),
            "WER_target": pooled(by_role["target"], "WER", "words"),
            "WER_unseen": pooled(by_role["unseen"], "WER", "words"),
            "n": int(sum(int(r["n"]) for r in items)),
        })
    front = set(pareto_front([(s["target_SIM"], s["unseen_SIM"]) for s in out]))
    for i, summary in enumerate(out):
        summary["pareto"] = i in front
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _fmt_lam(value: Any) -> str:
    lam = _nan(value)
    return "-" if math.isnan(lam) else f"{lam:g}"


def markdown_table(summary: Sequence[Mapping[str, Any]], sim_backend: str | None = None,
                   asr: str | None = None) -> str:
    """A Markdown table, one line per system: target SIM, mean unseen SIM, WER, CER, utterances, Pareto.

    ``sim_backend`` and ``asr`` (free text, e.g. ``"resemblyzer (GE2E)"``, ``"skipped: no model"``) are
    written above the table. WER / CER are percentages; "-" marks a missing value.
    """
    lines = []
    if sim_backend is not None:
        lines.append(f"Speaker similarity: {sim_backend}  ")
    if asr is not None:
        lines.append(f"ASR: {asr}  ")
    if lines:
        lines.append("")
    lines += [
        "| system | method | prior | lam | target SIM | unseen SIM | WER % | CER % | n | Pareto |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in summary:
        wer, cer = _nan(s.get("WER")) * 100, _nan(s.get("CER")) * 100
        target = f"{_fmt(_nan(s['target_SIM']))}"
        if s.get("target_speaker"):
            target += f" ({s['target_speaker']})"
        unseen = f"{_fmt(_nan(s['unseen_SIM']))} ({int(s.get('unseen_speakers', 0))} spk)"
        cells = [s["system"], s.get("method", ""), s.get("prior", ""), _fmt_lam(s.get("lam")), target, unseen,
                 _fmt(wer, 1), _fmt(cer, 1), _fmt(s.get("n")), "*" if s.get("pareto") else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def csv_text(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``records`` as CSV with the given columns (extra keys dropped; None and NaN as empty cells)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _csv_value(record.get(k)) for k in columns})
    return buffer.getvalue()


def write_results(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    utterances: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write ``results.csv`` (rows), ``results.json`` (meta, summary, rows), ``utterances.csv`` (when given)
    and ``summary.md`` (the Markdown table) into ``out_dir``, atomically; returns the paths by name.

    ``meta`` should hold ``speaker_encoder`` and ``asr`` (``{"backend", "model"}``, plus ``"fallback"``: why
    for a stand-in, or ``{"skipped": why}``); they are stored in results.json, written above the Markdown table
    (with the fallback reason) and named in the `BACKEND_COLUMNS` of both CSVs.
    """
    out_dir = Path(out_dir)
    sim_info, asr_info = meta.get("speaker_encoder"), meta.get("asr")
    backends = {"SIM_encoder": describe_backend(sim_info, reason=False),
                "ASR_model": describe_backend(asr_info, reason=False)}
    rows = [{**row, **backends} for row in rows]
    utterances = [{**utt, **backends} for utt in utterances]
    files = {
        "results_csv": write_text(out_dir / "results.csv", csv_text(rows, RESULT_COLUMNS)),
        "results_json": save_json({
            **{k: _json_value(v) for k, v in meta.items()},
            "summary": [{k: _json_value(v) for k, v in s.items()} for s in summary],
            "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows],
        }, out_dir / "results.json"),
    }
    if utterances:
        files["utterances_csv"] = write_text(out_dir / "utterances.csv", csv_text(utterances, UTTERANCE_COLUMNS))
    table = markdown_table(summary, describe_backend(sim_info), describe_backend(asr_info))
    files["summary_md"] = write_text(out_dir / "summary.md", table)
    return files


def describe_backend(info: Mapping[str, Any] | None, reason: bool = True) -> str | None:
    """``"backend (model)"`` for ``{"backend", "model"}`` (with ``reason``, ``"; fallback: why"`` appended when
    the info holds one), ``"skipped: why"`` for ``{"skipped": why}``, None for None."""
    if info is None:
        return None
    if info.get("skipped"):
        return f"skipped: {info['skipped']}"
    model = info.get("model")
    text = f"{info.get('backend')} ({model})" if model else str(info.get("backend"))
    return f"{text}; fallback: {info['fallback']}" if reason and info.get("fallback") else text


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` with numbers parsed (empty cells become NaN, ``lam`` None when empty)."""
    numeric = {"SIM", "WER", "CER", "words", "chars"}
    counts = {"n", "n_sim"}
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            row: dict[str, Any] = dict(record)
            for key in numeric & row.keys():
                row[key] = _nan(row[key])
            for key in counts & row.keys():
                row[key] = int(row[key]) if row[key] else 0
            if "lam" in row:
                row["lam"] = None if not row["lam"] else float(row["lam"])
            rows.append(row)
    return rows
