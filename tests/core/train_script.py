"""A tiny regression trained with tts_bpeft.training.train; run as a script by test_training.py.

    python train_script.py OUT_DIR [--kill-at STEP [--mid-write]] [--world 2 --rank R --init FILE]
                           [--batch B] [--accum A] [--dropout P] [--crops]

With --kill-at the process SIGKILLs itself right after writing that step's checkpoint to its temporary
file, before the rename (checkpoint_every=1): a crash before the rename; with --mid-write, after writing
half of the checkpoint's bytes. With --crops the data are sequences and the batches come from a DataLoader
that shuffles with torch's global RNG and whose collate function crops each batch at a random start drawn
from torch's global RNG (what StyleTTS 2's reference crops did). The final weights are written to
OUT_DIR/final.pt.
"""

import argparse
import os

import torch
import torch.distributed as dist
from kill_on_save import install

from tts_bpeft.training import TrainSettings, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--init", default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--mid-write", action="store_true")
    parser.add_argument("--crops", action="store_true")
    args = parser.parse_args()
    if args.world > 1:
        dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world)
    torch.manual_seed(0)
    data_x, data_y = torch.randn(16, 5), torch.randn(16, 3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(args.dropout), torch.nn.Linear(8, 3))
    trainable = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)

    sequences = torch.randn(16, 12, 5)

    def crop(items: list) -> tuple:
        start = int(torch.randint(0, 12 - 4 + 1, (1,)))
        return (torch.stack([x[start:start + 4] for x, _ in items]).mean(1), torch.stack([y for _, y in items]))

    def batches(epoch: int):
        if args.crops:
            return torch.utils.data.DataLoader(list(zip(sequences, data_y)), batch_size=args.batch, shuffle=True,
                                               collate_fn=crop)
        order = torch.randperm(16, generator=torch.Generator().manual_seed(epoch))
        global_batch = args.batch * args.world
        out = []
        for start in range(0, 16, global_batch):
            chunk = order[start:start + global_batch]
            mine = chunk[args.rank * args.batch:(args.rank + 1) * args.batch]
            out.append((data_x[mine], data_y[mine]))
        return out

    def step_loss(batch):
        loss = ((model(batch[0]) - batch[1]) ** 2).mean()
        return loss, {"loss": float(loss.detach())}

    def penalty():
        return 1e-3 * sum((p ** 2).sum() for p in model.parameters())

    settings = TrainSettings(epochs=3, grad_accum=args.accum, checkpoint_every=1, progress=False)
    if args.kill_at is not None:
        install(args.kill_at, args.mid_write)
    train(trainable, optimizer, batches, step_loss, args.out if args.rank == 0 else args.out + f"_rank{args.rank}",
          settings, penalty=penalty)
    if args.rank == 0:
        torch.save({k: v.detach() for k, v in trainable.items()}, os.path.join(args.out, "final.pt"))
    if args.world > 1:
        dist.destroy_process_group()  # exiting with gloo's threads alive can abort ("terminate called ...")


if __name__ == "__main__":
    main()
