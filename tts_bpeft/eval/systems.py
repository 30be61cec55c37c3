"""The systems of an evaluation: the pre-trained model of a family and fine-tuning run folders.

A system is described by a :class:`SystemSpec` (its model family, base-model settings and, for a run, the
run folder); the run folder is read through `tts_bpeft.runs`, never here. Models are not built here: the
synthesis loader (`tts_bpeft.eval.synthesis`) builds one only when it has wavs to write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_bpeft.runs import ADAPTER, RUN_SETTINGS, TRAINABLE, IncompleteRunError, find_run_dirs, read_run

PRETRAINED = "pretrained"
DEFAULT_FAMILY = "styletts2"


def _file_stamp(path: Path) -> list[Any]:
    """(name, size, mtime ns) of ``path`` and, for a folder, of every file inside it."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files if p.exists()]


@dataclass(frozen=True)
class SystemSpec:
    """One system to evaluate.

    ``name``: unique label (``"pretrained"`` or the run folder's name); ``system``: ``"pretrained"``,
    or the run's ``system`` (``"lora"``, ``"full"`` or ``"linear"``); ``family``: the model family's registry name
    (`tts_bpeft.family`); ``prior``: the run's ``prior.kind`` (``"none"`` for the pre-trained model);
    ``lam``: the run's ``prior.lam`` (None for the pre-trained model); ``speaker``: the run's target speaker
    (None for the pre-trained model); ``run_dir``: the run folder (None for the pre-trained model);
    ``model``: the base-model settings (StyleTTS 2: ``{config, checkpoint, aux}``); ``data``: the run's data
    settings (``{vctk_root, mic, val_utterances, test_utterances, ...}``; empty for the pre-trained model);
    ``seed``: the run's seed (random-weight builds depend on it).
    """

    name: str
    system: str
    family: str = DEFAULT_FAMILY
    prior: str = "none"
    lam: float | None = None
    speaker: str | None = None
    run_dir: Path | None = None
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def fingerprint(self) -> str:
        """A hash of what determines the system's weights: the base-model settings and files, and for a run
        its settings and result files (sizes and modification times). Retraining a run changes it."""
        parts: dict[str, Any] = {"system": self.system, "model": dict(self.model), "seed": self.seed}
        files = [self.model.get("config"), self.model.get("checkpoint"),
                 *(self.model.get("aux") or {}).values()]
        parts["model_files"] = [_file_stamp(Path(f)) for f in files if f and f != "tiny" and Path(f).exists()]
        if self.run_dir is not None:
            run = Path(self.run_dir)
            parts["run"] = [str(run.resolve()), _file_stamp(run / RUN_SETTINGS), _file_stamp(run / ADAPTER),
                            _file_stamp(run / TRAINABLE)]
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The spec as JSON-ready values (stored in results.json)."""
        return {"name": self.name, "system": self.system, "family": self.family, "prior": self.prior, "lam": self.lam,
                "speaker": self.speaker, "run_dir": str(self.run_dir) if self.run_dir else None,
                "model": dict(self.model), "seed": self.seed}


def pretrained_system(model: Mapping[str, Any], name: str = PRETRAINED, seed: int = 0,
                      family: str = DEFAULT_FAMILY) -> SystemSpec:
    """The pre-trained model of ``family`` with its model settings (StyleTTS 2: ``{config: path | "tiny",
    checkpoint: path | None, aux: {...}}``)."""
    return SystemSpec(name=name, system=PRETRAINED, family=family, prior="none", lam=None, model=dict(model),
                      seed=seed)


def run_system(run_dir: str | Path, name: str | None = None) -> SystemSpec:
    """A fine-tuning run folder (`tts_bpeft.runs`) as a system.

    Raises FileNotFoundError without ``run.json`` and `IncompleteRunError` when the run has no result yet.
    """
    run = read_run(run_dir)
    if not run.finished:
        raise IncompleteRunError(f"{run.folder}: no {run.result.name} (the run has not finished)")
    cfg = run.settings
    prior = cfg.get("prior") or {}
    lam = prior.get("lam")
    return SystemSpec(
        name=name or run.folder.name, system=run.system, family=run.family, prior=str(prior.get("kind", "none")),
        lam=None if lam is None else float(lam), speaker=cfg.get("speaker"), run_dir=run.folder,
        model=dict(cfg.get("model") or {}), data=dict(cfg.get("data") or {}), seed=run.seed,
    )


def _unique_names(run_dirs: Sequence[Path], taken: set[str]) -> list[str]:
    """Folder names, extended with parent folders while two runs (or a taken name) collide."""
    depth = 1
    while True:
        names = ["/".join(Path(r).resolve().parts[-depth:]) for r in run_dirs]
        clash = len(set(names)) < len(names) or bool(set(names) & taken)
        if not clash or depth >= max(len(Path(r).resolve().parts) for r in run_dirs):
            return names
        depth += 1


def collect_systems(runs: Sequence[str | Path] = (), pretrained: Mapping[str, Any] | None = None,
                    seed: int = 0, log: Callable[[str], None] = print, family: str = DEFAULT_FAMILY
                    ) -> list[SystemSpec]:
    """The systems to evaluate: the pre-trained model (when ``pretrained`` model settings are given) and
    every run folder of ``runs`` (each a run folder or a folder of runs). Unfinished runs are skipped with a
    message through ``log``; a folder named twice is evaluated once. Raises ValueError when nothing is
    left."""
    systems = [pretrained_system(pretrained, seed=seed, family=family)] if pretrained is not None else []
    run_dirs = list(dict.fromkeys(d.resolve() for r in runs for d in find_run_dirs(r)))
    names = _unique_names(run_dirs, {s.name for s in systems}) if run_dirs else []
    for run_dir, name in zip(run_dirs, names, strict=True):
        try:
            systems.append(run_system(run_dir, name))
        except IncompleteRunError as err:
            log(f"skipping {err}")
    if not systems:
        raise ValueError("no system to evaluate: give the pre-trained model and/or finished run folders")
    return systems


def target_speaker(systems: Sequence[SystemSpec], default: str | None = None) -> str:
    """The one target speaker of the runs (``default`` when there are no runs, or to check against).

    Raises ValueError when runs fine-tuned different speakers or disagree with ``default``: evaluate one
    target at a time.
    """
    speakers = sorted({s.speaker for s in systems if s.speaker})
    if len(speakers) > 1:
        raise ValueError(f"the runs fine-tuned different speakers {speakers}: evaluate one target at a time")
    if speakers and default and speakers[0] != default:
        raise ValueError(f"speaker={default} but the runs fine-tuned {speakers[0]}")
    if speakers:
        return speakers[0]
    if not default:
        raise ValueError("no run names a target speaker: give one")
    return default
