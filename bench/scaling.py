"""Data-parallel scaling on this machine: images/s of `ganforge train` with 1 process and with N
processes (`--nproc N`, gloo), one thread each, the same batch per process (so N processes train on
an N times larger global batch). Efficiency = img/s(N) / (N x img/s(1)).

    python bench/scaling.py                       # dcgan28-classic on MNIST, dcgan32 on CIFAR-10
    python bench/scaling.py --models dcgan28-classic --batch 128 --gloo-too --independent-too
    python bench/scaling.py --updates alternating simultaneous   # one gradient sum per step vs two

Each configuration is a fresh `ganforge train` (monitor, sampling and checkpoints off during the
timed steps); img/s is the median of the run's logged windows after the first two (start-up, warm-up).
The arms run REPS times (default 7), each repetition starting with the next arm (no fixed order); the
efficiency is the ratio of the medians, and each repetition's own ratio is printed as a range. The N processes
sum their gradients through shared memory (ganforge's default on one machine); `--gloo-too` adds N-process
runs that use gloo's TCP all-reduce instead (GANFORGE_SHM_ALLREDUCE=0), `--gloo-barrier-too` N-process runs
whose shared-memory sum waits at gloo's all-reduce instead of polling the file (GANFORGE_SHM_BARRIER=gloo;
the barrier before the polling one, and still the one on non-x86 CPUs), `--pinned-too` N-process runs
whose ranks are each bound to their own cores (GANFORGE_PIN_CORES=1; by default the OS places them). `--independent-too` adds N
single-process trainings run at the same time, each on its own (no communication at all): their summed
img/s over N x img/s(1) is what sharing the machine's cores, caches and memory bandwidth alone leaves,
the ceiling for the N-process run. Needs the real data (GANFORGE_DATA). Writes bench/results/scaling.json.
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
from typing import Optional

DATA = {"dcgan28-classic": "mnist", "dcgan28": "mnist", "dcgan32": "cifar10", "resnet32": "cifar10"}

# the optional arms: (name, the option that adds it, its environment, N independent 1-process runs instead of one
# N-process run, what the printed line says of it, what the result file's "backend" says of it)
OPTIONAL_ARMS = (
    ("gloo", "gloo_too", {"GANFORGE_SHM_ALLREDUCE": "0"}, False,
     "with gloo's all-reduce {ips:.0f} img/s -> {eff:.1f}%", "gloo alone"),
    ("gloo_barrier", "gloo_barrier_too", {"GANFORGE_SHM_BARRIER": "gloo"}, False,
     "shared memory with gloo's barrier {ips:.0f} img/s -> {eff:.1f}%", "the sum with gloo's barrier"),
    ("pinned", "pinned_too", {"GANFORGE_PIN_CORES": "1"}, False,
     "bound to cores {ips:.0f} img/s -> {eff:.1f}%", "ranks bound to their own cores"),
    ("independent", "independent_too", {}, True,
     "{nproc} independent 1-process runs at once {ips:.0f} img/s in all -> {eff:.1f}% (the machine's own ceiling)",
     "independent 1-process runs at once"),
)  # fmt: skip


def command(model: str, nproc: int, batch: int, steps: int, precision: str, root: Path, name: str,
            log_every: Optional[int] = 10, update: str = "alternating") -> list[str]:  # fmt: skip
    """`ganforge train` for `steps` steps of `batch` per process with the given update rule, monitor, sampling
    and checkpoints off while timed; a metrics line every `log_every` steps (None: the config's default)."""
    cmd = [sys.executable, "-m", "ganforge", "train", "--model", model, "--data", DATA[model], "--steps", str(steps),
           "--batch-size", str(batch * nproc), "--precision", precision, "--no-progress", "--runs-dir", str(root),
           "--name", name, "--set", "monitor.every=null", f"train.update={update}",
           *([f"train.log_every={log_every}"] if log_every is not None else []), f"train.sample_every={10 * steps}",
           f"train.checkpoint_every={10 * steps}", "train.device=cpu"]  # fmt: skip
    if nproc > 1:
        cmd[4:4] = ["--nproc", str(nproc)]
    return cmd


def save(path: str, fields: dict) -> None:
    """Write a benchmark's result as JSON, headed by the date, this machine and torch's version."""
    import torch

    out = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "torch": torch.__version__, **fields}  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def rate(root: Path, name: str) -> float:
    """img/s of a finished run: the median of its logged windows after the first two (start-up, warm-up)."""
    rows = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median([r["img_per_s"] for r in rows if "img_per_s" in r][2:])


def run(model: str, nproc: int, batch: int, steps: int, precision: str, root: Path, env: dict[str, str],
        independent: int = 1, update: str = "alternating") -> float:  # fmt: skip
    """img/s of one `ganforge train` with `nproc` processes (`env` added to the environment); or, with
    independent=N, the summed img/s of N single-process trainings run at the same time (no communication:
    what sharing the machine alone costs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GANFORGE_SHM_ALLREDUCE": "1", "GANFORGE_SHM_BARRIER": "spin", **env}
    names = [f"{model}-{nproc}-{i}-{time.time_ns()}" for i in range(independent)]
    cmds = [command(model, nproc, batch, steps, precision, root, name, update=update) for name in names]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for cmd in cmds]
    for cmd, proc in zip(cmds, procs):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{err[-3000:]}")
    return sum(rate(root, name) for name in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dcgan28-classic", "dcgan32"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="images per process per step")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--reps", type=int, default=7,
                        help="repetitions of every arm (this VM's runs drift by 10-20 %%: medians of 3 moved the "
                             "efficiency by +-8 points between runs, medians of 7 by less)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--updates", nargs="+", default=["alternating"], choices=("alternating", "simultaneous"),
                        help="train.update of the arms; one row per model and update, every update's arms in one rotation "
                             "(the simultaneous update averages G's and D's gradients in one sum: one barrier per "
                             "step instead of two)")
    parser.add_argument("--gloo-too", action="store_true", help="also N processes with gloo's TCP all-reduce")
    parser.add_argument("--gloo-barrier-too", action="store_true",
                        help="also N processes whose shared-memory sum uses gloo's all-reduce as its barrier")
    parser.add_argument("--pinned-too", action="store_true",
                        help="also N processes each bound to its own cores (GANFORGE_PIN_CORES=1)")
    parser.add_argument("--independent-too", action="store_true",
                        help="also N independent 1-process trainings at once: the ceiling that sharing the machine sets")
    parser.add_argument("--out", default="bench/results/scaling.json")
    args = parser.parse_args()
    args.updates = list(dict.fromkeys(args.updates))  # each update once

    from ganforge import __version__

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            kinds = [("one", 1, {}, 1), ("many", args.nproc, {}, 1)]
            kinds += [(name, 1, env, args.nproc) if independent else (name, args.nproc, env, 1)
                      for name, option, env, independent, *_ in OPTIONAL_ARMS if getattr(args, option)]  # fmt: skip
            arms = [(update, *kind) for update in args.updates for kind in kinds]  # one rotation for all updates
            runs: dict[tuple[str, str], list[float]] = {(update, kind): [] for update, kind, *_ in arms}
            for rep in range(args.reps):
                for i in range(len(arms)):  # each repetition starts with the next arm: no arm always runs first
                    update, kind, nproc, env, independent = arms[(rep + i) % len(arms)]
                    runs[update, kind].append(run(model, nproc, args.batch, args.steps, args.precision, Path(tmp), env,
                                                  independent, update))  # fmt: skip
            for update in args.updates:
                one, many = runs[update, "one"], runs[update, "many"]
                ips1, ipsn = statistics.median(one), statistics.median(many)
                row = {"model": model, "data": DATA[model], "update": update, "batch_per_process": args.batch,
                       "precision": args.precision, "img_per_s_1": ips1, f"img_per_s_{args.nproc}": ipsn,
                       "runs_1": one, f"runs_{args.nproc}": many, "efficiency": ipsn / (args.nproc * ips1),
                       # each repetition's own ratio: how far this VM moves the figure
                       "efficiency_per_rep": [b / (args.nproc * a) for a, b in zip(one, many)]}  # fmt: skip
                spread = row["efficiency_per_rep"]
                line = (f"{model} ({update}): 1 process {ips1:.0f} img/s, {args.nproc} processes {ipsn:.0f} img/s -> "
                        f"efficiency {100 * row['efficiency']:.1f}% (repetitions {100 * min(spread):.0f}-"
                        f"{100 * max(spread):.0f}%)")  # fmt: skip
                for arm, _, _, _, says, _ in OPTIONAL_ARMS:  # the optional arms, when run
                    if runs.get((update, arm)):
                        ips = statistics.median(runs[update, arm])
                        row.update({f"img_per_s_{args.nproc}_{arm}": ips, f"runs_{args.nproc}_{arm}": runs[update, arm],
                                    f"efficiency_{arm}": ips / (args.nproc * ips1)})  # fmt: skip
                        line += "; " + says.format(nproc=args.nproc, ips=ips, eff=100 * row[f"efficiency_{arm}"])
                results.append(row)
                print(line, flush=True)
    save(args.out, {"ganforge": __version__, "threads_per_process": 1,
           "backend": "gloo + shared-memory gradient sum" + "".join(
               f" (and {note}: *_{arm})" for arm, option, *_, note in OPTIONAL_ARMS if getattr(args, option)),
           "steps": args.steps, "reps": args.reps, "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
