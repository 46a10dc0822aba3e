"""Gradient mean between 2 processes on this CPU: gloo's all-reduce vs ganforge's shared-memory sum.

    python bench/allreduce.py                  # 760,000 floats, about the G gradients of the scaling runs
    python bench/allreduce.py --numel 37000    # its D

Two processes (gloo, one thread each) time, in turns, 50 calls of: `torch.distributed.all_reduce` (gloo's
TCP loopback; the sum only), `SharedMemorySum.average` (what `Dist.sync_grads` uses on one machine: the
sum and the division by 2) with its polling barrier (x86) and with gloo's all-reduce as its barrier
(GANFORGE_SHM_BARRIER=gloo), and a one-number all-reduce (about that gloo barrier alone). Prints the
median ms per call over --reps turns, from rank 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def worker(rank: int, store: str, numel: int, reps: int, calls: int) -> None:
    from ganforge.distributed import Dist, SharedMemorySum

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    d = Dist(rank=rank, world=2, backend="gloo", shm_allowed=True)
    x0, ping = torch.randn(numel), torch.zeros(1)
    x = x0.clone()
    shm = SharedMemorySum.made_for(d, x.numel(), x.dtype)
    os.environ["GANFORGE_SHM_BARRIER"] = "gloo"  # a second buffer (its own size) that waits at gloo's barrier
    shm_gloo = SharedMemorySum.made_for(d, x.numel() - 1, x.dtype)
    arms = {"gloo all_reduce": lambda: tdist.all_reduce(x),
            f"shared memory, {'polling' if shm.spin else 'gloo'} barrier": lambda: shm.average([x], 2),
            "gloo barrier alone": lambda: tdist.all_reduce(ping)}  # fmt: skip
    if shm.spin:  # else the arm above is this one
        arms["shared memory, gloo barrier"] = lambda: shm_gloo.average([x[1:]], 2)
    ms: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(reps):
        for name, call in arms.items():
            x.copy_(x0)  # both work in place: start each turn from the same finite values
            tdist.barrier()
            start = time.perf_counter()
            for _ in range(calls):
                call()
            ms[name].append((time.perf_counter() - start) / calls * 1e3)
    if rank == 0:
        print(f"{numel:,} float32, 2 processes, 1 thread each, torch {torch.__version__}")
        for name, v in ms.items():
            print(f"  {name:30s} {statistics.median(v):6.3f} ms  (turns: {', '.join(f'{a:.3f}' for a in v)})")
    tdist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=760_000, help="floats per sum (760,000: about G's gradients)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "store"), args.numel, args.reps, args.calls), nprocs=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
