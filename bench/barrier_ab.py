"""The shared-memory gradient sum's two barriers (or two ways to add its rows), A/B inside one 2-process
training job.

    GANFORGE_DATA=../shared/data python bench/barrier_ab.py
    GANFORGE_DATA=../shared/data python bench/barrier_ab.py --model dcgan32 --steps 800 --jobs 3
    GANFORGE_DATA=../shared/data python bench/barrier_ab.py --compare reduce --out bench/results/reduce_ab.json

Runs `ganforge train --nproc 2` (one thread per process, bf16, monitor and sampling off) with a
`sitecustomize` on PYTHONPATH that makes every SharedMemorySum switch its barrier every --block calls:
polling the shared file (`_spin_barrier`, the default on x86) and gloo's two-number all-reduce
(`_gloo_barrier`, GANFORGE_SHM_BARRIER=gloo), in turns, at the same call on both ranks, and record the
time between consecutive calls of the larger of the two sums (G's or D's: one per training step), under
the barrier that the first of the two calls used. Both barriers thus see the same processes,
data and moments of this VM, whose speed drifts by 10-20 % between separate runs. Reports the median
step time under each barrier (the first block dropped as warm-up) and their ratio, per job.
Writes bench/results/barrier_ab.json.

--compare reduce keeps the polling barrier and switches instead how the ranks' rows are averaged:
`SharedMemorySum.mean_of_rows` (elementwise: one `lerp` for 2 ranks) against the reduction it replaced
(`torch.sum` over the rows, then a division), in the same blocks; arms "rows" and "sum".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# the `ganforge train` command and the result file's header of bench/scaling.py
from scaling import DATA, command, save

PATCH = r'''
import atexit, json, os, time
from ganforge import distributed as _d

import torch

_BLOCK, _OUT = int(os.environ["BARRIER_AB_BLOCK"]), os.environ["BARRIER_AB_OUT"]
_REDUCE = os.environ.get("BARRIER_AB_COMPARE") == "reduce"
_rows = {}
_average = _d.SharedMemorySum.average
_rows_mean = _d.SharedMemorySum.mean_of_rows


def _sum_then_divide(part, out, world):  # the reduction before mean_of_rows (2026-11-28)
    torch.sum(part, dim=0, out=out)
    out.div_(world)

def average(self, tensors, world):
    now = time.perf_counter()
    if hasattr(self, "ab_last"):  # the step since the last call, which waited at the barrier it then had
        arm = ("rows" if self.ab_a else "sum") if _REDUCE else ("polling" if self.ab_a else "gloo")
        _rows.setdefault(self.buffer.shape[-1], []).append((arm, now - self.ab_last))
    self.ab_last = now
    self.ab_calls = getattr(self, "ab_calls", 0) + 1
    self.ab_a = (self.ab_calls // _BLOCK) % 2 == 0  # the same call on every rank: the same arm
    if _REDUCE:
        self.mean_of_rows = _rows_mean if self.ab_a else _sum_then_divide
    else:
        self.spin = self.ab_a
    return _average(self, tensors, world)

_d.SharedMemorySum.average = average
atexit.register(lambda: _rows and open(f"{_OUT}.{os.getpid()}", "w").write(json.dumps(_rows)))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dcgan28-classic", choices=("dcgan28-classic", "dcgan28", "dcgan32"))
    parser.add_argument("--batch", type=int, default=64, help="images per process per step")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--block", type=int, default=40, help="steps under one barrier before switching")
    parser.add_argument("--jobs", type=int, default=2, help="training jobs, each an A/B of its own")
    parser.add_argument("--compare", choices=("barrier", "reduce"), default="barrier",
                        help="barrier: polling vs gloo's barrier; reduce: SharedMemorySum.mean_of_rows vs torch.sum "
                        "over the rows")  # fmt: skip
    parser.add_argument("--out", default="bench/results/barrier_ab.json")
    args = parser.parse_args()
    arms = ("rows", "sum") if args.compare == "reduce" else ("polling", "gloo")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("bench: the polling barrier is x86 only; nothing to compare here.")
        return 0

    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(PATCH)
        for job in range(args.jobs):
            out = Path(tmp) / f"rows{job}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "GANFORGE_SHM_ALLREDUCE": "1",
                   "PYTHONPATH": os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p),
                   "BARRIER_AB_BLOCK": str(args.block), "BARRIER_AB_OUT": str(out),
                   "BARRIER_AB_COMPARE": args.compare,
                   **({"GANFORGE_SHM_BARRIER": "spin"} if args.compare == "reduce" else {})}  # fmt: skip
            cmd = command(args.model, 2, args.batch, args.steps, "bf16", Path(tmp) / "runs", f"job{job}", log_every=None)
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            files = sorted(Path(tmp).glob(f"rows{job}.*"))
            if len(files) != 2:
                raise SystemExit(f"bench: expected the timings of 2 ranks, found {len(files)}")
            rows = json.loads(files[0].read_text())  # rank order does not matter: both take each step's time
            timed = rows[max(rows, key=int)]  # the larger sum's calls: one per step
            if len(rows) != 2 or len(timed) != args.steps - 1:
                raise SystemExit(f"bench: expected one call of each of 2 sums per step, got {len(rows)} sums and "
                                 f"{len(timed) + 1} calls of the larger in {args.steps} steps")  # fmt: skip
            steps = timed[args.block :]  # warm-up dropped
            a, b = arms
            ms = {kind: statistics.median(1e3 * s for k, s in steps if k == kind) for kind in arms}
            jobs.append({f"ms_per_step_{a}": ms[a], f"ms_per_step_{b}": ms[b],
                         f"img_per_s_ratio_{a}_over_{b}": ms[b] / ms[a],
                         "steps_each": sum(k == a for k, _ in steps)})  # fmt: skip
            print(f"job {job}: step {ms[a]:.2f} ms with {a}, {ms[b]:.2f} ms with {b} -> img/s x{ms[b] / ms[a]:.3f}",
                  flush=True)  # fmt: skip
    save(args.out, {"model": args.model, "data": DATA[args.model], "batch_per_process": args.batch,
                    "precision": "bf16", "threads_per_process": 1, "steps": args.steps, "block": args.block,
                    "compare": args.compare, "arms": list(arms), "jobs": jobs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
