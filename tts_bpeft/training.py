"""A small resumable training loop, shared by every integration: gradient accumulation, the prior term,
checkpoints that survive a kill, data-parallel gradients, a CSV log and a progress bar.

Resuming is exact: a checkpoint holds the trainable tensors, the optimizer state, torch's RNG states and
the position in the data (epoch, batches consumed), and `batches(epoch)` must give the same batches for
the same epoch (seed the shuffling with the epoch). Killing the process and rerunning the same command
therefore ends with the same weights as an uninterrupted run. Checkpoints and the log are written
atomically (temp file + rename). A learning-rate scheduler (stepped once per optimizer step; e.g.
`linear_schedule`) is checkpointed with the optimizer. `on_epoch_end(epoch)` (e.g. a validation metric)
may return floats that are added to the epoch's last log row.

Data parallel: with ``torch.distributed`` initialised, each process passes its own shard of every global
batch and the gradients of the trainable tensors are averaged before each optimizer step (the loss of a
global batch is the mean of the processes' mean losses, so equal shard sizes give the single-process
result). Only rank 0 writes files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from .io import atomic_write, write_text

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"

StepLoss = Callable[[Any], tuple[Tensor, dict[str, float]]]
Scheduler = torch.optim.lr_scheduler.LRScheduler


class Stateful(Protocol):
    """Anything else that training changes and a resume must restore (e.g. a discriminator and its
    optimizer): its ``state_dict()`` must hold only what ``torch.load(weights_only=True)`` reads."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainSettings:
    """How long and how to step: `epochs` over the data (capped by `max_steps` optimizer steps if set)."""

    epochs: int = 1
    max_steps: int | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = None
    checkpoint_every: int = 50
    progress: bool = True


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int | None, warmup_ratio: float = 0.0,
                    decay: bool = True) -> Scheduler:
    """Learning rate x factor(step): linear warm-up from 1/warmup to 1 over the first
    ``int(warmup_ratio * total_steps)`` optimizer steps, then (`decay`) a linear decay that reaches 0 at
    `total_steps`, or a constant rate. Step it once per optimizer step (`train` does)."""
    warmup = int(warmup_ratio * total_steps) if total_steps else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not decay or not total_steps:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_training_state(path: Path, trainable: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        position: Mapping[str, int], buffers: Mapping[str, Tensor] | None = None,
                        scheduler: Scheduler | None = None, extra_state: Mapping[str, Stateful] | None = None
                        ) -> None:
    """Trainable tensors, other state that training changes (`buffers`: running statistics, spectral-norm
    vectors; `extra_state`: objects with their own state dicts), optimizer (and scheduler) state, RNG states
    and data position, written atomically."""
    state = {"trainable": {k: v.detach().cpu() for k, v in trainable.items()},
             "buffers": {k: v.detach().cpu() for k, v in (buffers or {}).items()},
             "extra": {k: v.state_dict() for k, v in (extra_state or {}).items()},
             "optimizer": optimizer.state_dict(), "rng": _rng_state(), "position": dict(position)}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_training_state(path: Path, trainable: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        buffers: Mapping[str, Tensor] | None = None, scheduler: Scheduler | None = None,
                        extra_state: Mapping[str, Stateful] | None = None) -> dict[str, int]:
    """Restore a checkpoint written by `save_training_state`; returns the data position."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = sorted(set(trainable) - set(state["trainable"])) + sorted(set(buffers or {}) - set(state["buffers"]))
    missing += sorted(set(extra_state or {}) - set(state.get("extra", {})))
    if missing:
        raise ValueError(f"{path}: checkpoint lacks trainable tensors {missing[:5]}; was it written by "
                         "another configuration? Delete it or choose another output folder")
    with torch.no_grad():
        for name, tensor in trainable.items():
            tensor.copy_(state["trainable"][name])
        for name, tensor in (buffers or {}).items():
            tensor.copy_(state["buffers"][name])
    for name, obj in (extra_state or {}).items():
        obj.load_state_dict(state["extra"][name])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state["position"]


class CsvLog:
    """Per-step rows (step, epoch, loss terms, prior, time) in ``log.csv``; on resume, rows after the
    checkpoint are dropped so the log matches the weights."""

    RUNNING = ("step", "epoch", "seconds")  # counters, not averaged per epoch

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if resume_step and path.is_file():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]

    def epochs(self) -> list[dict[str, float]]:
        """Per epoch (1-based ``epoch``): the mean of every column over its rows, ``steps`` and ``seconds`` at
        its end, and the values only its last row has (`on_epoch_end`'s metrics)."""
        out = []
        for epoch in sorted({int(r["epoch"]) for r in self.rows}):
            rows = [r for r in self.rows if int(r["epoch"]) == epoch]
            every = [k for k in rows[-1] if k not in self.RUNNING and all(r.get(k) not in ("", None) for r in rows)]
            means = {k: sum(float(r[k]) for r in rows) / len(rows) for k in every}
            last = {k: float(v) for k, v in rows[-1].items() if k not in every and k not in self.RUNNING
                    and v not in ("", None)}
            out.append({**means, **last, "epoch": epoch + 1, "steps": int(rows[-1]["step"]),
                        "seconds": float(rows[-1]["seconds"])})
        return out

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))

    def flush(self) -> None:
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        text = buffer.getvalue()
        write_text(self.path, text)


def train(trainable: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
          batches: Callable[[int], Sized], step_loss: StepLoss, out_dir: str | os.PathLike,
          settings: TrainSettings | None = None, penalty: Callable[[], Tensor] | None = None,
          resume: bool = True, buffers: Mapping[str, Tensor] | None = None, scheduler: Scheduler | None = None,
          on_epoch_end: Callable[[int], Mapping[str, float]] | None = None,
          extra_state: Mapping[str, Stateful] | None = None) -> dict[str, Any]:
    """Train `trainable` (name -> tensor with requires_grad) with `optimizer`.

    `batches(epoch)` gives this process's batches of one epoch (deterministically; a sized iterable such as
    a DataLoader, so that its length is known without loading it); `step_loss(batch)`
    returns the mean loss of a batch and floats to log. `penalty()` (e.g. ``lambda: prior.penalty(model)``)
    is added once per optimizer step. `buffers` (name -> tensor) are non-trained tensors that forward passes
    change (BatchNorm statistics, spectral-norm vectors): checkpointed too, so that resuming is exact;
    `extra_state` (name -> object with ``state_dict``/``load_state_dict``, e.g. discriminators trained
    inside `step_loss`) likewise. `scheduler` steps after every optimizer step. `on_epoch_end(epoch)`
    (1-based; also after a last, partial epoch cut by `max_steps`) returns floats added to that epoch's last
    log row. Returns ``{"steps", "epochs", "seconds", "last": last log row, "history": per-epoch means of the
    log rows (plus the `on_epoch_end` values)}``.
    """
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    rank, world = _rank()
    params = list(trainable.values())
    ckpt = out_dir / CHECKPOINT_NAME
    for stale in [*out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"), *out_dir.glob(f".{LOG_NAME}.*.tmp")]:
        stale.unlink()  # left by a run killed while writing; the previous checkpoint is intact
    position = {"step": 0, "epoch": 0, "batch": 0}
    if resume and ckpt.is_file():
        position = load_training_state(ckpt, trainable, optimizer, buffers, scheduler, extra_state)
    log = CsvLog(out_dir / LOG_NAME, position["step"])
    per_epoch = len(batches(0))
    steps_per_epoch = max(1, math.ceil(per_epoch / settings.grad_accum))
    total = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    bar = tqdm(total=total, initial=position["step"], desc="fine-tuning", disable=not settings.progress or rank)
    started, step = time.time(), position["step"]
    last: dict[str, Any] = {}

    def checkpoint(epoch: int, batch: int) -> None:
        if rank == 0:
            save_training_state(ckpt, trainable, optimizer, {"step": step, "epoch": epoch, "batch": batch}, buffers,
                                scheduler, extra_state)
            log.flush()

    for epoch in range(position["epoch"], settings.epochs):
        skip = position["batch"] if epoch == position["epoch"] else 0
        accumulated, logs = 0, []
        for index, batch in enumerate(batches(epoch)):
            if index < skip:
                continue
            if step >= total:
                break
            loss, values = step_loss(batch)
            (loss / settings.grad_accum).backward()
            logs.append(values)
            accumulated += 1
            if accumulated < settings.grad_accum and index < per_epoch - 1:
                continue
            prior = penalty() if penalty is not None else None
            if prior is not None:
                prior.backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            last = {"step": step, "epoch": epoch, "seconds": round(time.time() - started, 3),
                    **{k: sum(v[k] for v in logs) / len(logs) for k in logs[0]},
                    "prior": float(prior.detach()) if prior is not None else 0.0}
            log.add(last)
            accumulated, logs = 0, []
            bar.update(1)
            bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4g}", prior=f"{last['prior']:.3g}")
            if step % settings.checkpoint_every == 0 or step == total:
                checkpoint(epoch, index + 1)
        if on_epoch_end is not None and log.rows and int(log.rows[-1]["epoch"]) == epoch:
            log.rows[-1].update(on_epoch_end(epoch + 1))
            checkpoint(epoch + 1, 0)
        if step >= total:
            break
    bar.close()
    checkpoint(settings.epochs, 0)
    return {"steps": step, "epochs": settings.epochs, "seconds": time.time() - started, "last": log.rows[-1]
            if log.rows else last, "history": log.epochs()}
