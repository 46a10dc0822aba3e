"""Data-parallel scaling on this machine: images/s of `ganforge train` with 1 process and with N
processes (`--nproc N`, gloo), one thread each, the same batch per process (so N processes train on
an N times larger global batch). Efficiency = img/s(N) / (N x img/s(1)).

    python bench/scaling.py                       # dcgan28-classic on MNIST, dcgan32 on CIFAR-10
    python bench/scaling.py --models dcgan28-classic --steps 120 --reps 3

Each configuration is a fresh `ganforge train` (monitor, sampling and checkpoints off during the
timed steps); img/s is the median of the run's logged windows after the first two (start-up, warm-up).
1- and N-process runs alternate, REPS times, each repetition starting with the next arm (no fixed order). The N processes sum their gradients through shared memory
(ganforge's default on one machine); `--gloo-too` adds, interleaved, N-process runs that use gloo's TCP
all-reduce instead (GANFORGE_SHM_ALLREDUCE=0). Needs the real data (GANFORGE_DATA). Writes
bench/results/scaling.json.
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
import time
from datetime import date
from pathlib import Path

DATA = {"dcgan28-classic": "mnist", "dcgan28": "mnist", "dcgan32": "cifar10", "resnet32": "cifar10"}


def run(model: str, nproc: int, batch: int, steps: int, precision: str, root: Path, shm: bool = True) -> float:
    name = f"{model}-{nproc}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "ganforge", "train", "--model", model, "--data", DATA[model], "--steps", str(steps),
           "--batch-size", str(batch * nproc), "--precision", precision, "--no-progress", "--runs-dir", str(root),
           "--name", name, "--set", "monitor.every=null", "train.log_every=10", f"train.sample_every={10 * steps}",
           f"train.checkpoint_every={10 * steps}", "train.device=cpu"]  # fmt: skip
    if nproc > 1:
        cmd[4:4] = ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GANFORGE_SHM_ALLREDUCE": "1" if shm else "0"}  # one thread each
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows if "img_per_s" in r][2:]
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dcgan28-classic", "dcgan32"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="images per process per step")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--gloo-too", action="store_true", help="also N processes with gloo's TCP all-reduce")
    parser.add_argument("--out", default="bench/results/scaling.json")
    args = parser.parse_args()

    import torch

    from ganforge import __version__

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            one, many, gloo = [], [], []
            arms = [(one, 1, True), (many, args.nproc, True)] + ([(gloo, args.nproc, False)] if args.gloo_too else [])
            for rep in range(args.reps):
                for i in range(len(arms)):  # each repetition starts with the next arm: no arm always runs first
                    into, nproc, shm = arms[(rep + i) % len(arms)]
                    into.append(run(model, nproc, args.batch, args.steps, args.precision, Path(tmp), shm=shm))
            ips1, ipsn = statistics.median(one), statistics.median(many)
            row = {"model": model, "data": DATA[model], "batch_per_process": args.batch, "precision": args.precision,
                   "img_per_s_1": ips1, f"img_per_s_{args.nproc}": ipsn, "runs_1": one, f"runs_{args.nproc}": many,
                   "efficiency": ipsn / (args.nproc * ips1)}  # fmt: skip
            line = (f"{model}: 1 process {ips1:.0f} img/s, {args.nproc} processes {ipsn:.0f} img/s -> "
                    f"efficiency {100 * row['efficiency']:.1f}%")  # fmt: skip
            if gloo:
                ipsg = statistics.median(gloo)
                row.update({f"img_per_s_{args.nproc}_gloo": ipsg, f"runs_{args.nproc}_gloo": gloo,
                            "efficiency_gloo": ipsg / (args.nproc * ips1)})  # fmt: skip
                line += f"; with gloo's all-reduce {ipsg:.0f} img/s -> {100 * row['efficiency_gloo']:.1f}%"
            results.append(row)
            print(line, flush=True)
    out = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "torch": torch.__version__, "ganforge": __version__, "threads_per_process": 1,
           "backend": "gloo + shared-memory gradient sum" + (" (and gloo alone: *_gloo)" if args.gloo_too else ""),
           "steps": args.steps, "reps": args.reps, "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
