"""A small resumable training loop, shared by every integration: gradient accumulation, the prior term,
checkpoints that survive a kill, data-parallel gradients, a CSV log and a progress bar.

Resuming is exact: a checkpoint holds the trainable tensors, the optimizer state, torch's RNG states (now,
and at the start of the current epoch) and the position in the data (epoch, batches consumed). On resume
the epoch's iterator is rebuilt from the epoch-start RNG state and the consumed batches are drawn again and
dropped (so a sampler or worker seeds drawn from torch's RNG repeat), then the RNG state of the checkpoint is
restored (so random draws of a collate function in the main process, e.g. random crops, are those the
uninterrupted run made next). `batches(epoch)` must otherwise depend on the epoch only. Killing the process at
any point, also while it writes a checkpoint, and rerunning the same command therefore ends with the same
weights as an uninterrupted run. Checkpoints and the log are written atomically (temp file + rename); temp
files left by a killed write are removed on resume. A learning-rate scheduler (stepped once per optimizer step;
e.g. `linear_schedule`) and `extra_state` objects (e.g. discriminators) are checkpointed with the optimizer.
`on_epoch_end(epoch)` (e.g. a validation metric) may return floats that are added to the epoch's last log row.

Bad numbers stop the run: settings and the optimizer's hyperparameters are checked before the first step,
and a non-finite loss term or prior stops training with `NonFiniteLossError` naming the step and the terms,
before the optimizer steps; weights that went non-finite are never checkpointed, so ``checkpoint.pt`` keeps
the last good state.

No host sync per batch: the values to log may be 0-dim tensors (on the model's device); they, the losses and
the prior of all accumulated batches are read back together, once per optimizer step (the check above needs
them on the host), so a GPU runs a step's batches without waiting for the CPU.

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

StepLoss = Callable[[Any], tuple[Tensor, Mapping[str, float | Tensor]]]
Scheduler = torch.optim.lr_scheduler.LRScheduler


class Stateful(Protocol):
    """Anything else that training changes and a resume must restore (e.g. a discriminator and its
    optimizer): its ``state_dict()`` must hold only what ``torch.load(weights_only=True)`` reads."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class NonFiniteLossError(FloatingPointError):
    """A loss term, the prior or a trained tensor became NaN or infinite; the checkpoint holds the last good state."""


@dataclass
class TrainSettings:
    """How long and how to step: `epochs` over the data (capped by `max_steps` optimizer steps if set)."""

    epochs: int = 1
    max_steps: int | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = None
    checkpoint_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        counts = {"epochs": self.epochs, "grad_accum": self.grad_accum, "checkpoint_every": self.checkpoint_every}
        if self.max_steps is not None:
            counts["max_steps"] = self.max_steps
        for name, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"training setting {name} = {value!r}: must be an integer >= 1")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"training setting max_grad_norm = {self.max_grad_norm!r}: must be > 0 and finite, "
                             "or None for no clipping")


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Every numeric hyperparameter of every parameter group finite, learning rates >= 0."""
    for index, group in enumerate(optimizer.param_groups):
        for key, value in group.items():
            numbers = value if isinstance(value, (tuple, list)) and key != "params" else (value,)
            if key == "params" or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                continue
            if not all(math.isfinite(v) for v in numbers) or (key == "lr" and value < 0):
                raise ValueError(f"optimizer parameter group {index}: {key} = {value!r} must be finite"
                                 + (" and >= 0" if key == "lr" else ""))


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
                        scheduler: Scheduler | None = None, extra_state: Mapping[str, Stateful] | None = None,
                        epoch_rng: Mapping[str, Any] | None = None) -> None:
    """Trainable tensors, other state that training changes (`buffers`: running statistics, spectral-norm
    vectors; `extra_state`: objects with their own state dicts), optimizer (and scheduler) state, RNG states
    (now, and `epoch_rng`: at the start of the epoch) and data position, written atomically."""
    state = {"trainable": {k: v.detach().cpu() for k, v in trainable.items()},
             "buffers": {k: v.detach().cpu() for k, v in (buffers or {}).items()},
             "extra": {k: v.state_dict() for k, v in (extra_state or {}).items()},
             "optimizer": optimizer.state_dict(), "rng": _rng_state(), "position": dict(position)}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if epoch_rng is not None:
        state["epoch_rng"] = dict(epoch_rng)
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_training_state(path: Path, trainable: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                        buffers: Mapping[str, Tensor] | None = None, scheduler: Scheduler | None = None,
                        extra_state: Mapping[str, Stateful] | None = None) -> dict[str, Any]:
    """Restore a checkpoint written by `save_training_state` (RNG states included); returns the data position
    and, under ``"epoch_rng"``, the RNG states at the start of its epoch (None if not stored)."""
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
    return {**state["position"], "epoch_rng": state.get("epoch_rng")}


class CsvLog:
    """Per-step rows (step, epoch, loss terms, prior, time) in ``log.csv``; on resume, rows after the
    checkpoint are dropped so the log matches the weights."""

    RUNNING = ("step", "epoch", "seconds")  # counters, not averaged per epoch

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if resume_step and path.is_file():
            with open(path, newline="") as f:
                rows = [self._parse(r) for r in csv.DictReader(f)]
            self.rows = [r for r in rows if r["step"] <= resume_step]

    @staticmethod
    def _parse(row: Mapping[str, str]) -> dict[str, Any]:
        """A row read back from the CSV with the values it was written with: ints for step and epoch, floats
        for the rest, empty cells (a column other rows have) left empty."""
        return {k: "" if v in ("", None) else int(v) if k in ("step", "epoch") else float(v) for k, v in row.items()}

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


def _non_finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if not math.isfinite(v)}


def _read_back(rows: list[Mapping[str, float | Tensor]]) -> list[dict[str, float]]:
    """`rows` with every tensor value as a float, all tensors read back to the host in one transfer."""
    tensors = [v for row in rows for v in row.values() if isinstance(v, Tensor)]
    if tensors:
        device = tensors[0].device
        values = iter(torch.stack([t.detach().float().reshape(()).to(device) for t in tensors]).tolist())
    return [{k: next(values) if isinstance(v, Tensor) else float(v) for k, v in row.items()} for row in rows]


def train(trainable: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
          batches: Callable[[int], Sized], step_loss: StepLoss, out_dir: str | os.PathLike,
          settings: TrainSettings | None = None, penalty: Callable[[], Tensor] | None = None,
          resume: bool = True, buffers: Mapping[str, Tensor] | None = None, scheduler: Scheduler | None = None,
          on_epoch_end: Callable[[int], Mapping[str, float]] | None = None,
          extra_state: Mapping[str, Stateful] | None = None) -> dict[str, Any]:
    """Train `trainable` (name -> tensor with requires_grad) with `optimizer`.

    `batches(epoch)` gives this process's batches of one epoch (deterministically; a sized iterable such as
    a DataLoader, so that its length is known without loading it); `step_loss(batch)`
    returns the mean loss of a batch and values to log (floats or 0-dim tensors, read back once per step).
    `penalty()` (e.g. ``lambda: prior.penalty(model)``) is added once per optimizer step. `buffers` (name ->
    tensor) are non-trained tensors that forward passes change (BatchNorm statistics, spectral-norm vectors):
    checkpointed too, so that resuming is exact; `extra_state` (name -> object with ``state_dict``/
    ``load_state_dict``, e.g. discriminators trained inside `step_loss`) likewise. `scheduler` steps after
    every optimizer step. `on_epoch_end(epoch)` (1-based; also after a last, partial epoch cut by
    `max_steps`) returns floats added to that epoch's last log row. Returns ``{"steps", "epochs", "seconds",
    "last": last log row, "history": per-epoch means of the log rows (plus the `on_epoch_end` values)}``.
    Raises `NonFiniteLossError` (after keeping the last good checkpoint) when a loss term, the prior or the
    trained tensors become non-finite.
    """
    settings = settings or TrainSettings()
    check_optimizer(optimizer)
    out_dir = Path(out_dir)
    rank, world = _rank()
    params = list(trainable.values())
    ckpt = out_dir / CHECKPOINT_NAME
    for stale in [*out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"), *out_dir.glob(f".{LOG_NAME}.*.tmp")]:
        stale.unlink()  # left by a run killed while writing; the previous checkpoint is intact
    position: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "epoch_rng": None}
    if resume and ckpt.is_file():
        position = load_training_state(ckpt, trainable, optimizer, buffers, scheduler, extra_state)
    log = CsvLog(out_dir / LOG_NAME, position["step"])
    per_epoch = len(batches(0))
    steps_per_epoch = max(1, math.ceil(per_epoch / settings.grad_accum))
    total = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    bar = tqdm(total=total, initial=position["step"], desc="fine-tuning", disable=not settings.progress or rank)
    started, step, saved = time.time(), position["step"], position["step"]
    last: dict[str, Any] = {}

    def checkpoint(epoch: int, batch: int, epoch_rng: Mapping[str, Any] | None) -> None:
        nonlocal saved
        bad = [name for name, tensor in trainable.items() if not torch.isfinite(tensor).all()]
        if bad:
            raise NonFiniteLossError(f"{out_dir}: after step {step} the trained tensors {bad[:5]} hold NaN or Inf "
                                     f"(finite loss, so the update itself diverged); {ckpt} keeps step {saved}. "
                                     "Lower the learning rate or set a max_grad_norm")
        if rank == 0:
            save_training_state(ckpt, trainable, optimizer, {"step": step, "epoch": epoch, "batch": batch}, buffers,
                                scheduler, extra_state, epoch_rng)
            log.flush()
        saved = step

    def stop(epoch: int, index: int, bad: Mapping[str, float]) -> NonFiniteLossError:
        if rank == 0:
            log.flush()  # the rows of the good steps since the last checkpoint
        return NonFiniteLossError(f"{out_dir}: non-finite {bad} at step {step + 1} (epoch {epoch}, batch {index}); "
                                  f"training stopped, {ckpt} keeps step {saved}, the last good one. Check the "
                                  "learning rate, the prior's lam and the data of that batch")

    for epoch in range(position["epoch"], settings.epochs):
        skip = position["batch"] if epoch == position["epoch"] else 0
        if skip and position["epoch_rng"] is not None:
            resumed_rng = _rng_state()
            _set_rng_state(position["epoch_rng"])  # the iterator draws what it drew when the epoch began
        epoch_rng = _rng_state()
        iterator = iter(batches(epoch))
        for _ in range(skip):  # consumed before the checkpoint; their random draws are undone just below
            next(iterator, None)
        if skip and position["epoch_rng"] is not None:
            _set_rng_state(resumed_rng)
        accumulated, pending, indices = 0, [], []
        for index, batch in enumerate(iterator, start=skip):
            if step >= total:
                break
            loss, values = step_loss(batch)
            (loss / settings.grad_accum).backward()
            pending.append(({"loss": loss.detach()}, values))
            indices.append(index)
            accumulated += 1
            if accumulated < settings.grad_accum and index < per_epoch - 1:
                continue
            prior = penalty() if penalty is not None else None
            read = _read_back([row for pair in pending for row in pair] +
                              [{"prior": prior if prior is not None else 0.0}])
            logs, prior_value = read[1:-1:2], read[-1]
            for batch_index, loss_value, values in zip(indices, read[0:-1:2], logs):
                bad = _non_finite({**loss_value, **values})
                if bad:
                    raise stop(epoch, batch_index, bad)
            if not math.isfinite(prior_value["prior"]):
                raise stop(epoch, index, prior_value)
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
                    **{k: sum(v[k] for v in logs) / len(logs) for k in logs[0]}, **prior_value}
            log.add(last)
            accumulated, pending, indices = 0, [], []
            bar.update(1)
            bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4g}", prior=f"{last['prior']:.3g}")
            if step % settings.checkpoint_every == 0 or step == total:
                if index + 1 < per_epoch or on_epoch_end is not None:
                    checkpoint(epoch, index + 1, epoch_rng)
                else:  # the epoch is done: resume at the next one (nothing draws between the two)
                    checkpoint(epoch + 1, 0, None)
        if on_epoch_end is not None and log.rows and int(log.rows[-1]["epoch"]) == epoch:
            log.rows[-1].update(on_epoch_end(epoch + 1))
            checkpoint(epoch + 1, 0, None)
        if step >= total:
            break
    bar.close()
    checkpoint(settings.epochs, 0, None)
    return {"steps": step, "epochs": settings.epochs, "seconds": time.time() - started, "last": log.rows[-1]
            if log.rows else last, "history": log.epochs()}
