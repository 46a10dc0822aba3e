"""The shared-memory gradient sum's two barriers, A/B inside one 2-process training job.

    GANFORGE_DATA=../shared/data python bench/barrier_ab.py
    GANFORGE_DATA=../shared/data python bench/barrier_ab.py --model dcgan32 --steps 800 --jobs 3

Runs `ganforge train --nproc 2` (one thread per process, bf16, monitor and sampling off) with a
`sitecustomize` on PYTHONPATH that makes every SharedMemorySum switch its barrier every --block calls:
polling the shared file (`_spin_barrier`, the default on x86) and gloo's two-number all-reduce
(`_gloo_barrier`, GANFORGE_SHM_BARRIER=gloo), in turns, at the same call on both ranks, and record the
time between consecutive calls of the larger of the two sums (G's or D's: one per training step), under
the barrier that the first of the two calls used. Both barriers thus see the same processes,
data and moments of this VM, whose speed drifts by 10-20 % between separate runs. Reports the median
step time under each barrier (the first block dropped as warm-up) and their ratio, per job.
Writes bench/results/barrier_ab.json.
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
from datetime import date
from pathlib import Path

PATCH = r'''
import atexit, json, os, time
from ganforge import distributed as _d

_BLOCK, _OUT = int(os.environ["BARRIER_AB_BLOCK"]), os.environ["BARRIER_AB_OUT"]
_rows = {}
_average = _d.SharedMemorySum.average

def average(self, tensors, world):
    now = time.perf_counter()
    if hasattr(self, "ab_last"):  # the step since the last call, which waited at the barrier it then had
        _rows.setdefault(self.buffer.shape[-1], []).append(("polling" if self.spin else "gloo", now - self.ab_last))
    self.ab_last = now
    self.ab_calls = getattr(self, "ab_calls", 0) + 1
    self.spin = (self.ab_calls // _BLOCK) % 2 == 0  # the same call on every rank: the same barrier
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
    parser.add_argument("--out", default="bench/results/barrier_ab.json")
    args = parser.parse_args()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("bench: the polling barrier is x86 only; nothing to compare here.")
        return 0
    import torch

    data = "cifar10" if args.model == "dcgan32" else "mnist"
    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(PATCH)
        for job in range(args.jobs):
            out = Path(tmp) / f"rows{job}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "GANFORGE_SHM_ALLREDUCE": "1",
                   "PYTHONPATH": os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p),
                   "BARRIER_AB_BLOCK": str(args.block), "BARRIER_AB_OUT": str(out)}  # fmt: skip
            cmd = [sys.executable, "-m", "ganforge", "train", "--nproc", "2", "--model", args.model, "--data", data,
                   "--steps", str(args.steps), "--batch-size", str(2 * args.batch), "--precision", "bf16",
                   "--no-progress", "--runs-dir", str(Path(tmp) / "runs"), "--name", f"job{job}",
                   "--set", "monitor.every=null", f"train.sample_every={10 * args.steps}",
                   f"train.checkpoint_every={10 * args.steps}", "train.device=cpu"]  # fmt: skip
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
            ms = {kind: statistics.median(1e3 * s for k, s in steps if k == kind) for kind in ("polling", "gloo")}
            jobs.append({"ms_per_step_polling": ms["polling"], "ms_per_step_gloo": ms["gloo"],
                         "img_per_s_ratio_polling_over_gloo": ms["gloo"] / ms["polling"],
                         "steps_each": sum(k == "polling" for k, _ in steps)})  # fmt: skip
            print(f"job {job}: step {ms['polling']:.2f} ms with the polling barrier, {ms['gloo']:.2f} ms with "
                  f"gloo's -> img/s x{ms['gloo'] / ms['polling']:.3f}", flush=True)  # fmt: skip
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "model": args.model, "data": data, "batch_per_process": args.batch,
              "precision": "bf16", "threads_per_process": 1, "steps": args.steps, "block": args.block,
              "jobs": jobs}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
