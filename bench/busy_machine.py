"""Training speed on a busy CPU: ganforge's thread setup beside other CPU-bound processes.

    GANFORGE_DATA=../shared/data python bench/busy_machine.py --jobs quick grid25 --competitors 0 1 2

Each job is run as a user runs it (`ganforge train ...` in a fresh process, the quick start or a
preset), for a fixed number of steps, alone and beside 1 and 2 competing CPU-bound processes (a
Python busy loop each: a build, another training run). Arms, each the same command under a different
thread setup (environment variables, set before torch is imported):
    old         GANFORGE_THREADS=off: torch's own defaults (one OpenMP thread per core, libgomp's
                spin-then-sleep wait), what ganforge did before
    omp1        GANFORGE_THREADS=off OMP_NUM_THREADS=1: one intra-op thread
    new         ganforge's default (ganforge.threads): the run's thread count from the cores this
                process may use and the model, OpenMP threads that sleep when they wait
Reports per (job, competitors, arm): wall seconds, CPU seconds of the command, images/s over the
wall time, and the slowdown against the same arm alone. Competitors are started before the arms of
their row and run through them; the arms of a row alternate their order between repeats.
Writes bench/results/busy_machine.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

JOBS = {  # job -> ganforge train arguments
    "quick": ["train"],  # the README's quick start: preset mnist-fast
    "grid25": ["train", "--preset", "grid25"],
}
ARMS = {
    "old": {"GANFORGE_THREADS": "off"},
    "omp1": {"GANFORGE_THREADS": "off", "OMP_NUM_THREADS": "1"},
    "new": {},
}
BUSY = "while True: pass"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_once(job: str, arm: str, steps: int, runs_dir: Path) -> dict:
    args = JOBS[job]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GANFORGE_THREADS", "OMP_WAIT_POLICY")}
    env.update(ARMS[arm])
    cmd = [sys.executable, "-m", "ganforge", *args, "--steps", str(steps), "--no-progress", "--runs-dir", str(runs_dir)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    run = max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    batch = yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"]
    shutil.rmtree(run)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "img_per_s": round(steps * batch / wall, 1),
            "batch": batch}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--competitors", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="bench/results/busy_machine.json")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in a.jobs:
            for k in a.competitors:
                busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(k)]
                try:
                    time.sleep(2.0)
                    for r in range(a.repeats):
                        arms = a.arms if r % 2 == 0 else a.arms[::-1]
                        for arm in arms:
                            load = uptime()
                            res = run_once(job, arm, a.steps, Path(tmp))
                            rows.append({"job": job, "competitors": k, "arm": arm, "repeat": r, **res,
                                         "uptime_before": load})  # fmt: skip
                            print(json.dumps(rows[-1]), flush=True)
                finally:
                    for b in busy:
                        b.kill()
                        b.wait()
    alone = {}
    for r in rows:
        if r["competitors"] == 0:
            alone.setdefault((r["job"], r["arm"]), []).append(r["wall_s"])
    print("\n| job | competitors | arm | wall s | CPU s | img/s | × own alone | × new alone |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        own = alone.get((r["job"], r["arm"]))
        new = alone.get((r["job"], "new"))
        x_own = f"{r['wall_s'] / (sum(own) / len(own)):.2f}" if own else "-"
        x_new = f"{r['wall_s'] / (sum(new) / len(new)):.2f}" if new else "-"
        print(f"| {r['job']} | {r['competitors']} | {r['arm']} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['img_per_s']} | {x_own} | {x_new} |")  # fmt: skip
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "steps": a.steps, "uptime_end": uptime(), "command": " ".join(sys.argv)}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
