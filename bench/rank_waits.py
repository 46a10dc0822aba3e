"""Where a 2-process CPU training step goes, rank by rank: compute between gradient sums, and the wait at each sum.

    GANFORGE_DATA=../shared/data python bench/rank_waits.py
    GANFORGE_DATA=../shared/data python bench/rank_waits.py --model dcgan32 --steps 400 --out bench/results/rank_waits_dcgan32.json
    GANFORGE_DATA=../shared/data python bench/rank_waits.py --update simultaneous --out bench/results/rank_waits_simultaneous.json

Runs one `ganforge train --nproc 2` (one thread per process, bf16, 64 images per process, monitor and sampling
off) with a `sitecustomize` on PYTHONPATH that times, on each rank, every wait at the shared-memory sum's polling
barrier (`SharedMemorySum._spin_barrier`) and the time between leaving one barrier and reaching the next (the
rank's own work: a D or a G update's (with `--update simultaneous`, a whole step's) forward, backward, the copy of
its gradients, the optimizer step, and
the job's rarer collectives: the vote on stopping every 8 steps and the logged means every 10). The first 50 barriers
are dropped as warm-up. Two sums per alternating step, so "per step" is twice "per barrier"; one per step with
`--update simultaneous` (G's and D's gradients averaged in one sum).
A rank that computes more slowly makes the other wait at every barrier: comparing the ranks' compute says
whether the loss of scaling efficiency is one slow rank or jitter on both. Writes bench/results/rank_waits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

# the same `ganforge train` command, img/s read off its log and result file's header as bench/scaling.py
from scaling import DATA, command, rate, save

PATCH = r'''
import atexit, json, os, statistics, time
from ganforge import distributed as _d

_OUT = os.environ["RANK_WAITS_OUT"]
_wait, _work, _last = [], [], [None]
_barrier = _d.SharedMemorySum._spin_barrier

def _timed(self, layout):
    start = time.perf_counter()
    if _last[0] is not None:
        _work.append(start - _last[0])
    same = _barrier(self, layout)
    _last[0] = time.perf_counter()
    _wait.append(_last[0] - start)
    return same

def _dump():
    if len(_wait) > 60:
        w, c = _wait[50:], _work[49:]
        out = {"rank": int(os.environ["RANK"]), "barriers": len(w),
               "wait_ms_mean": 1e3 * statistics.mean(w), "wait_ms_p90": 1e3 * statistics.quantiles(w, n=10)[-1],
               "work_ms_mean": 1e3 * statistics.mean(c), "work_ms_median": 1e3 * statistics.median(c)}
        open(f"{_OUT}.{os.environ['RANK']}", "w").write(json.dumps(out))

_d.SharedMemorySum._spin_barrier = _timed
atexit.register(_dump)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dcgan28-classic", choices=("dcgan28-classic", "dcgan28", "dcgan32"))
    parser.add_argument("--batch", type=int, default=64, help="images per process per step")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--update", default="alternating", choices=("alternating", "simultaneous"))
    parser.add_argument("--out", default="bench/results/rank_waits.json")
    args = parser.parse_args()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("bench: the polling barrier (the one timed here) is x86 only.")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(PATCH)
        out = Path(tmp) / "ranks"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GANFORGE_SHM_ALLREDUCE": "1", "GANFORGE_SHM_BARRIER": "spin",
               "PYTHONPATH": os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p),
               "RANK_WAITS_OUT": str(out)}  # fmt: skip
        cmd = command(args.model, 2, args.batch, args.steps, "bf16", Path(tmp) / "runs", "job", update=args.update)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        ranks = [json.loads(f.read_text()) for f in sorted(Path(tmp).glob("ranks.*"))]
        if len(ranks) != 2:
            raise SystemExit(f"bench: expected the timings of 2 ranks, found {len(ranks)} (no polling barrier?)")
        img_per_s = rate(Path(tmp) / "runs", "job")
    per_step = 2 if args.update == "alternating" else 1
    for r in ranks:
        print(f"rank {r['rank']}: work {r['work_ms_mean']:.2f} ms per barrier (median {r['work_ms_median']:.2f}), "
              f"wait {r['wait_ms_mean']:.2f} ms (p90 {r['wait_ms_p90']:.2f}) over {r['barriers']} barriers; "
              f"{per_step} barrier(s) per step: wait {per_step * r['wait_ms_mean']:.2f} ms per step of "
              f"{per_step * (r['work_ms_mean'] + r['wait_ms_mean']):.2f}")  # fmt: skip
    print(f"{args.update} update: {img_per_s:.0f} img/s")
    save(args.out, {"model": args.model, "data": DATA[args.model], "update": args.update, "barriers_per_step": per_step,
                    "batch_per_process": args.batch,
                    "precision": "bf16", "threads_per_process": 1, "steps": args.steps, "ranks": ranks,
                    "img_per_s_2_processes_median": img_per_s})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
