"""transformers integration: a ``Trainer`` that adds the Laplace prior to the training loss.

An existing HF script gains the prior in two lines::

    prior = LaplacePrior(Curvature.load("curvature.safetensors", model), lam=1e5, scaling="reference")
    trainer = PriorTrainer(prior=prior, model=model, args=args, train_dataset=..., ...)   # was Trainer(...)

The penalty is added only in training mode (evaluation losses stay the data fit). With gradient accumulation
the Trainer either divides the returned loss by the accumulation steps or (when the model normalises by the
number of items of the whole accumulated batch) does not; the penalty is scaled so that each optimizer
step receives exactly one ``lam * q(dW)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import Trainer

from ..prior import LaplacePrior


class PriorTrainer(Trainer):
    """``transformers.Trainer`` whose training loss is ``task loss + prior.penalty(model)``.

    The mean penalty since the last log is reported as ``prior_penalty`` in the Trainer's logs.
    """

    def __init__(self, *args: Any, prior: LaplacePrior | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prior = prior
        self._penalty_sum, self._penalty_count = 0.0, 0

    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """Whether `training_step` will use the loss as is (True) or divide it by the accumulation steps."""
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Tensor | Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self.prior is None or not model.training:
            return result
        loss, outputs = result if return_outputs else (result, None)
        penalty = self.prior.penalty(model).to(loss.dtype)
        self._penalty_sum += float(penalty.detach())
        self._penalty_count += 1
        if self._loss_scaled_for_ga(num_items_in_batch):
            steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
            penalty = penalty / steps
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._penalty_count and "loss" in logs:
            logs = {**logs, "prior_penalty": self._penalty_sum / self._penalty_count}
            self._penalty_sum, self._penalty_count = 0.0, 0
        super().log(logs, *args, **kwargs)

