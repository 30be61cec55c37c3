"""A small fine-tuning loop (AdamW, linear schedule) that adds the Laplace prior to the task loss.

``loss = task_loss(model, batch) + prior.penalty(model)`` where the prior holds lam (`tts_bpeft.LaplacePrior`);
only parameters with ``requires_grad`` are trained (LoRA factors and, for classification, the head, which
the prior does not regularise). The same loop pre-trains a small model from scratch when no LoRA is present.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..prior import LaplacePrior


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def finetune(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], loss_fn: Callable[[nn.Module, Any], Tensor],
             prior: LaplacePrior | None = None, lr: float = 5e-4, epochs: int = 3, weight_decay: float = 0.0,
             warmup_ratio: float = 0.0, schedule: str = "linear", max_grad_norm: float | None = 1.0,
             max_steps: int | None = None, seed: int = 0, progress: bool = True, desc: str = "fine-tune",
             on_epoch_end: Callable[[int], Mapping[str, float]] | None = None) -> list[dict[str, float]]:
    """Train `model` in place for `epochs` passes over `batches` (a re-iterable, e.g. a DataLoader).

    `loss_fn(model, batch)` returns the scalar task loss (e.g. `tts_bpeft.text.losses.clm_loss`); `prior`
    (optional) adds ``prior.penalty(model)``. `schedule` is ``"linear"`` (decay to 0 after warmup) or
    ``"constant"``; `max_steps` stops early. `on_epoch_end(epoch)` may return metrics to record. Returns one
    record per epoch: mean task loss, mean penalty (lam included), steps, and the recorded metrics.
    """
    if schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = len(batches) if hasattr(batches, "__len__") else None
    total = min(per_epoch * epochs, max_steps or math.inf) if per_epoch else max_steps
    warmup = int(warmup_ratio * total) if total else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or not total:
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    device = next(model.parameters()).device
    history, step = [], 0
    model.train()
    bar = tqdm(total=total, desc=desc, disable=not progress)
    try:
        for epoch in range(epochs):
            task_sum, pen_sum, n = 0.0, 0.0, 0
            for batch in batches:
                task = loss_fn(model, _to(batch, device))
                penalty = prior.penalty(model) if prior is not None else torch.zeros((), device=device)
                loss = task + penalty
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step}: task {task.item()}, "
                                             f"penalty {penalty.item()}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                task_sum, pen_sum, n, step = task_sum + task.item(), pen_sum + float(penalty.detach()), n + 1, step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{task.item():.3f}", penalty=f"{float(penalty.detach()):.3g}")
                if max_steps is not None and step >= max_steps:
                    break
            record = {"epoch": epoch + 1, "steps": step, "task_loss": task_sum / max(n, 1),
                      "penalty": pen_sum / max(n, 1)}
            if on_epoch_end is not None:
                record.update(on_epoch_end(epoch + 1))
                model.train()
            history.append(record)
            if max_steps is not None and step >= max_steps:
                break
    finally:
        bar.close()
    model.eval()
    return history
