"""A 2-process DistributedDataParallel run (gloo, CPU) under nnstab.watch, for tests/watch/test_distributed.py.

    python _ddp_worker.py LOG_DIR PORT [NAN_RANK NAN_STEP]

Each rank trains its replica for STEPS steps with its own monitor writing into the shared LOG_DIR; on
rank NAN_RANK alone, the input of step NAN_STEP gets a NaN. After a barrier, rank 0 merges the logs
into LOG_DIR/log.jsonl and writes LOG_DIR/report.md from them.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

STEPS = 6
WORLD = 2


def run(rank, log_dir, port, nan_rank, nan_step):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from nnstab.report import Report
        from nnstab.watch import watch
        from nnstab.watch.distributed import merge_logs

        torch.manual_seed(0)                     # the same initial weights on every rank
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(100 + rank)   # each rank its own shard of data
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
        with watch(model, log_dir=log_dir) as monitor:
            for step in range(STEPS):
                xb = x.clone()
                if rank == nan_rank and step == nan_step:
                    xb[0, 0] = float("nan")
                opt.zero_grad()
                loss = nn.functional.cross_entropy(ddp(xb), y)
                loss.backward()
                opt.step()
                monitor.step(loss=loss)
        dist.barrier()                           # every rank's log is closed before rank 0 reads them
        if rank == 0:
            records = merge_logs(log_dir, out=os.path.join(log_dir, "log.jsonl"))
            Report(records).save(os.path.join(log_dir, "report.md"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    log_dir, port = sys.argv[1], int(sys.argv[2])
    nan_rank, nan_step = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (-1, -1)
    mp.spawn(run, args=(log_dir, port, nan_rank, nan_step), nprocs=WORLD, join=True)
