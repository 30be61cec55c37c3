"""Evaluation: corpus perplexity of a causal LM and accuracy of a sequence classifier."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], progress: bool = True,
               desc: str = "perplexity") -> dict[str, float]:
    """Token-weighted perplexity: ``exp(sum of next-token NLLs / number of predicted tokens)``.

    Returns ``{"nll": mean NLL in nats per token, "perplexity": exp(nll), "tokens": predicted tokens}``. The
    model is evaluated in eval mode and its mode restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            device = next(model.parameters()).device
            ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                  reduction="sum")
            total += nll.item()
            count += int((target != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no predicted tokens: every label is -100")
    mean = total / count
    return {"nll": mean, "perplexity": math.exp(mean), "tokens": count}


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], progress: bool = True) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a sequence classifier: ``{"accuracy", "loss", "examples"}``."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    try:
        for batch in tqdm(batches, desc="accuracy", disable=not progress, leave=False):
            device = next(model.parameters()).device
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()
            labels = batch["labels"].to(device)
            correct += int((logits.argmax(-1) == labels).sum())
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            n += labels.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no examples to evaluate")
    return {"accuracy": correct / n, "loss": loss / n, "examples": n}
