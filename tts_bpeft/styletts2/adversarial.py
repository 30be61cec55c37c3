"""Training the StyleTTS 2 discriminators during fine-tuning, as the official ``train_finetune.py`` does.

Every fine-tuning step, before the generator's adversarial terms are computed (so that they see the updated
discriminators, as in the original), `Discriminators.step` takes the step's real and generated waveform
segments (generated ones detached) and:

- trains the multi-period and multi-scale discriminators (``model.mpd``, ``model.msd``) on the official
  ``DiscriminatorLoss`` (least squares + TPRLS), the mean over utterances of each utterance's loss (the
  segments differ in length, so they are not batched);
- every ``slm_every``-th call on which the SLM adversarial term is active (from ``joint_epoch``), trains
  the WavLM discriminator (``model.wd``) on the least-squares loss of real segments against the speech
  generated from text (`tts_bpeft.styletts2.slm_generation`). The original also adds two regularisers there
  (length invariance, reconstruction artifacts); they are not reproduced.

Each discriminator has its own AdamW (official: lr 1e-4, betas (0, 0.99), eps 1e-9, weight decay 1e-4).
Outside `step` the discriminators' parameters are frozen, so the generator's backward pass leaves no
gradient in them. With ``torch.distributed`` initialised, their gradients are averaged over processes.
The weights, optimizer states and call counter are one state dict, for the resumable checkpoint
(`tts_bpeft.training.train`'s ``extra_state``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from munch import Munch
from styletts2.losses import DiscriminatorLoss
from torch import Tensor, nn

from .slm import SpeechLanguageModel, slm_discriminator_loss


@dataclass
class Segment:
    """One utterance's waveforms of a step, each (1, samples) at 24 kHz: the real decoder segment and its
    reconstruction `fake`; with the SLM adversarial term, the speech `generated` from the text and a real
    segment `generated_real` of the same length (None when the utterance was too short)."""

    real: Tensor
    fake: Tensor
    generated: Tensor | None = None
    generated_real: Tensor | None = None


def _average_gradients(parameters: Sequence[Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


class Discriminators:
    """The discriminators of a StyleTTS 2 model and their optimizers.

    Args:
        model: the 13-module ``Munch`` (mpd, msd and wd are used).
        slm: the speech language model; None when the SLM adversarial term is off (wd then never trains).
        lr, betas, eps, weight_decay: AdamW settings, the same for every discriminator.
        slm_every: the WavLM discriminator trains on every `slm_every`-th call with the SLM term active.
    """

    def __init__(self, model: Munch, slm: SpeechLanguageModel | None = None, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.0, 0.99), eps: float = 1e-9, weight_decay: float = 1e-4,
                 slm_every: int = 10):
        self.modules: dict[str, nn.Module] = {"mpd": model.mpd, "msd": model.msd}
        if slm is not None:
            self.modules["wd"] = model.wd
        self.slm = slm
        self.slm_every = int(slm_every)
        self.loss = DiscriminatorLoss(model.mpd, model.msd)
        self.optimizers = {name: torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(betas), eps=eps,
                                                   weight_decay=weight_decay)
                           for name, module in self.modules.items()}
        self.calls = 0
        self.logged = ("d_loss", "d_slm") if slm is not None else ("d_loss",)
        for module in self.modules.values():
            module.requires_grad_(False)

    def _update(self, names: Sequence[str], loss_fn: Any) -> float:
        """One optimizer step of the discriminators `names` on ``loss_fn()``; returns the loss."""
        params = [p for name in names for p in self.modules[name].parameters()]
        for name in names:
            self.modules[name].train().requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = loss_fn()
                loss.backward()
            _average_gradients(params)
            for name in names:
                self.optimizers[name].step()
                self.optimizers[name].zero_grad(set_to_none=True)
        finally:
            for name in names:
                self.modules[name].requires_grad_(False)
        return float(loss.detach())

    def step(self, segments: Sequence[Segment], gan: bool = True, slm: bool = False) -> dict[str, float]:
        """Train mpd and msd on `segments` when `gan`, and wd when `slm` on its turn; returns the losses
        (``d_loss`` when mpd and msd trained, ``d_slm`` when wd did)."""
        def mpd_msd() -> Tensor:
            return torch.stack([self.loss(s.real.unsqueeze(1), s.fake.detach().unsqueeze(1))
                                for s in segments]).mean()

        out = {"d_loss": self._update(("mpd", "msd"), mpd_msd)} if gan else {}
        if slm and self.slm is not None:
            self.calls += 1
            pairs = [s for s in segments if s.generated is not None]
            if pairs and self.calls % self.slm_every == 0:
                def wd() -> Tensor:
                    return torch.stack([slm_discriminator_loss(self.slm, self.modules["wd"], s.generated_real,
                                                               s.generated.detach()) for s in pairs]).mean()
                out["d_slm"] = self._update(("wd",), wd)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimizer states by discriminator name, and the call counter."""
        return {"modules": {n: m.state_dict() for n, m in self.modules.items()},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (the same discriminators must be present)."""
        if set(state["modules"]) != set(self.modules):
            raise ValueError(f"the checkpoint holds discriminators {sorted(state['modules'])}, this run trains "
                             f"{sorted(self.modules)} (the slmadv term was switched); use a new output folder")
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        self.calls = int(state["calls"])
