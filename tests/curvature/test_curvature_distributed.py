"""Two gloo processes over disjoint shards give the estimate of one process over all the data."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tts_bpeft import Curvature, estimate_curvature


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 5)
        self.lstm = nn.LSTM(5, 4, batch_first=True)
        self.conv = nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x):
        h, _ = self.lstm(torch.tanh(self.lin(x)))
        return self.conv(h.transpose(1, 2))


def _data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 6, 3, generator=g), torch.randn(10, 2, 6, generator=g)
    return [(x[i:i + 2], y[i:i + 2]) for i in range(0, 10, 2)]  # 5 batches


def _loss(m, batch):
    return ((m(batch[0]) - batch[1]) ** 2).sum((1, 2))


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        shard = _data()[rank::world]  # rank 0: 3 batches, rank 1: 2 batches (uneven on purpose)
        for method in ("kfac", "ewc"):
            curv = estimate_curvature(Net(), shard, _loss, method=method, targets=["lin", "lstm", "conv"],
                                      progress=False)
            curv.save(os.path.join(folder, f"{method}_rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~25 s idle, 90 s on a loaded 2-core machine: each spawned process imports peft/transformers
def test_two_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    for method in ("kfac", "ewc"):
        single = estimate_curvature(Net(), _data(), _loss, method=method, targets=["lin", "lstm", "conv"],
                                    progress=False)
        for rank in (0, 1):
            pooled = Curvature.load(tmp_path / f"{method}_rank{rank}.safetensors")
            assert pooled.samples == single.samples == 10
            assert pooled.names == single.names
            for name in single.names:
                assert pooled.layers[name].tokens == single.layers[name].tokens
                for key, value in single.term(name).items():
                    torch.testing.assert_close(pooled.term(name)[key], value, rtol=1e-6, atol=1e-7)


def test_one_process_group_goes_through_the_all_reduce_unchanged(tmp_path):
    """Fast in-process check of the distributed path (world size 1): pooling is the identity."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        for method in ("kfac", "ewc"):
            pooled = estimate_curvature(Net(), _data(), _loss, method=method, targets=["lin", "lstm"],
                                        progress=False)
            local = estimate_curvature(Net(), _data(), _loss, method=method, targets=["lin", "lstm"],
                                       progress=False, distributed=False)
            assert pooled.samples == local.samples == 10
            for name in local.names:
                assert pooled.layers[name].tokens == local.layers[name].tokens
                for key, value in local.term(name).items():
                    torch.testing.assert_close(pooled.term(name)[key], value, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()
