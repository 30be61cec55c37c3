"""Train an OPT model (LoRA fine-tuning with the Laplace prior, or a small pre-training) with the shared loop.

``loss = task_loss(model, batch) + prior.penalty(model)`` where the prior holds lam (`tts_bpeft.LaplacePrior`);
only parameters with ``requires_grad`` are trained (LoRA factors and, for classification, the head, which
the prior does not regularise). AdamW with `tts_bpeft.training.linear_schedule`; the loop itself, its
checkpoints, exact resume and ``log.csv`` are `tts_bpeft.training.train`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler

from ..prior import LaplacePrior
from ..training import TrainSettings, linear_schedule, train


def epoch_batches(loader: DataLoader) -> Callable[[int], DataLoader]:
    """``batches(epoch)`` for `tts_bpeft.training.train`: `loader` with its shuffling generator put where
    its ``epoch``-th pass (0-based) starts when the loader is iterated pass after pass from its seed, so a
    run resumed at any epoch sees the batches an uninterrupted run sees."""
    generator = loader.generator
    if isinstance(loader.sampler, RandomSampler) and generator is None:
        raise ValueError("a shuffling DataLoader needs a seeded generator (lm_loader / classification_loader "
                         "make one) for a resumable order")
    seed = generator.initial_seed() if generator is not None else None

    def batches(epoch: int) -> DataLoader:
        if seed is not None:
            generator.manual_seed(seed)
            for _ in range(epoch):
                # replay an earlier pass's draws without loading its data: starting an iterator draws its
                # base seed, running through its index sampler draws the permutation
                for _ in iter(loader)._sampler_iter:
                    pass
        return loader

    return batches


def fit(model: nn.Module, loader: DataLoader, loss_fn: Callable[[nn.Module, Any], Tensor],
        out_dir: str | os.PathLike, prior: LaplacePrior | None = None, lr: float = 5e-4, epochs: int = 3,
        weight_decay: float = 0.0, warmup_ratio: float = 0.0, decay: bool = True,
        max_grad_norm: float | None = 1.0, max_steps: int | None = None, seed: int = 0, progress: bool = True,
        checkpoint_every: int = 50, on_epoch_end: Callable[[int], Mapping[str, float]] | None = None) -> dict[str, Any]:
    """Train `model` in place for `epochs` passes over `loader` (capped at `max_steps` optimizer steps),
    checkpointing into `out_dir` every `checkpoint_every` steps (a rerun resumes there, exactly).

    `loss_fn(model, batch)` returns the scalar mean task loss of a batch (e.g. `tts_bpeft.text.clm_loss`);
    `prior` (optional) adds ``prior.penalty(model)`` once per step. The learning rate warms up linearly
    over ``warmup_ratio`` of the steps, then decays linearly to 0 (`decay`) or stays. `on_epoch_end(epoch)`
    may return metrics (e.g. a validation accuracy) for that epoch's record; the model is back in training
    mode afterwards. Returns `tts_bpeft.training.train`'s record: its ``history`` has per epoch the mean task
    ``loss``, the mean ``prior`` term (lam included), ``steps`` and the recorded metrics.
    """
    torch.manual_seed(seed)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=lr, weight_decay=weight_decay)
    total = len(loader) * epochs if max_steps is None else min(len(loader) * epochs, max_steps)
    scheduler = linear_schedule(optimizer, total, warmup_ratio, decay)
    device = next(model.parameters()).device

    def step_loss(batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        task = loss_fn(model, {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
        return task, {"loss": task.item()}

    def after_epoch(epoch: int) -> Mapping[str, float]:
        metrics = on_epoch_end(epoch)
        model.train()
        return metrics

    model.train()
    settings = TrainSettings(epochs=epochs, max_steps=max_steps, max_grad_norm=max_grad_norm,
                             checkpoint_every=checkpoint_every, progress=progress)
    result = train(trainable, optimizer, epoch_batches(loader), step_loss, out_dir, settings,
                   penalty=(lambda: prior.penalty(model)) if prior is not None else None, scheduler=scheduler,
                   on_epoch_end=after_epoch if on_epoch_end is not None else None)
    model.eval()
    return result
