"""`train`'s extra_state: objects trained inside step_loss (a discriminator and its optimizer) resume exactly."""

import pytest
import torch

from tts_bpeft.training import TrainSettings, train

DATA = [torch.tensor([1.0, -2.0, 0.5]) * (i + 1) for i in range(4)]


class Side:
    """A second model trained inside step_loss, as a discriminator is: its own weight and momentum optimizer."""

    def __init__(self):
        self.weight = torch.zeros(3, requires_grad=True)
        self.optimizer = torch.optim.SGD([self.weight], lr=0.1, momentum=0.9)

    def step(self, target: torch.Tensor) -> None:
        ((self.weight - target) ** 2).sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def state_dict(self) -> dict:
        return {"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])


def run(out, crash_at: int | None = None, extra: bool = True):
    """Two epochs of 4 batches; the main weight and the side model both chase the batch; `crash_at` raises
    inside the step_loss of that (1-based) call, as a killed process would stop."""
    side, weight, calls = Side(), torch.zeros(3, requires_grad=True), []

    def step_loss(batch):
        calls.append(1)
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt
        side.step(batch)
        return ((weight - batch) ** 2).sum(), {}

    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    train({"w": weight}, optimizer, lambda epoch: DATA, step_loss, out,
          TrainSettings(epochs=2, checkpoint_every=1, progress=False),
          extra_state={"side": side} if extra else None)
    return weight.detach(), side.weight.detach()


def test_extra_state_resumes_to_the_same_weights(tmp_path):
    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crashed", crash_at=6)
    resumed = run(tmp_path / "crashed")
    for a, b in zip(whole, resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "side_lost", crash_at=6)
    side_lost = run(tmp_path / "side_lost", extra=False)  # resumed without restoring the side model
    torch.testing.assert_close(side_lost[0], whole[0], rtol=0, atol=0)
    assert (side_lost[1] - whole[1]).abs().max() > 0.1
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(state["extra"]["side"]["weight"], whole[1])
    assert state["extra"]["side"]["optimizer"]["state"][0]["momentum_buffer"].abs().sum() > 0


def test_checkpoint_without_the_extra_state_is_refused(tmp_path):
    run(tmp_path / "plain", extra=False)
    with pytest.raises(ValueError, match=r"checkpoint.pt: checkpoint lacks .*'side'"):
        run(tmp_path / "plain")
