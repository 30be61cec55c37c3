"""Loss functions for OPT: per-sample causal-LM losses for the curvature, batch losses for training.

For `tts_bpeft.estimate_curvature`, one sample = one document block; its loss is the *mean* next-token NLL
over the block's predicted tokens (the paper's per-sample loss):

- `clm_sample_nll` returns these losses (B,) (empirical Fisher);
- `clm_likelihood` returns them as a `tts_bpeft.Categorical` term (``reduction="mean"``), so that
  ``fisher="mc"`` can draw the next tokens from the model's own predictive distribution.

Batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (-100 = not predicted), as built
by `tts_bpeft.text.data.collate_lm`; labels are shifted inside (label t is predicted from tokens < t).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..curvature.likelihoods import Categorical


def _shifted(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(logits (B, T-1, V) for positions 0..T-2, targets (B, T-1) = labels 1..T-1)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    return logits[:, :-1], batch["labels"][:, 1:]


def clm_likelihood(model: nn.Module, batch: Mapping[str, Tensor]) -> Categorical:
    """The per-sample mean next-token NLL as a `Categorical` likelihood (for empirical or MC Fisher)."""
    logits, target = _shifted(model, batch)
    return Categorical(logits, target, reduction="mean")


def clm_sample_nll(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Per-sample mean next-token NLL (B,), in nats per predicted token."""
    return clm_likelihood(model, batch).nll()


def clm_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean next-token NLL over all predicted tokens of the batch (a scalar, as transformers computes it)."""
    logits, target = _shifted(model, batch)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


def classification_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean cross-entropy of a sequence classifier over the batch (a scalar)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    return F.cross_entropy(logits.float(), batch["labels"])
