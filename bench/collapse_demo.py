"""Collapse demonstration: a configuration known to collapse, run with the live health monitor.

    python bench/collapse_demo.py [--steps 1500]

The seed's literal minimax objective on MNIST (dcgan28-classic, Adam 2e-4 for both nets): D wins at
once, G's gradient vanishes and its samples collapse to one blob. Two runs with the same seed:
  warn      the monitor logs `collapse` events and training goes on (still collapsed at the end);
  rollback  on the event the run restores checkpoints/healthy.pt, halves D's learning rate and goes on.
Events may fire from step 500 (monitor.warmup), after two failed checks in a row (monitor.patience).
Reports the events (step, reasons, action) and, for each final generator, the MNIST domain
classifier's classes covered and confident share on 2,000 samples, plus the domain FID vs the test split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date

import torch

from ganforge import build_config, evaluate, train


def run(policy: str, steps: int, runs_dir: str) -> dict:
    cfg = build_config(overrides={
        "data": {"name": "mnist"}, "loss": {"name": "minimax"},
        "train": {"steps": steps, "sample_every": steps, "device": "cpu"},
        "monitor": {"every": 100, "warmup": 500, "patience": 2, "on_collapse": policy, "rollback_lr": "d",
                    "max_rollbacks": 3},
        "run": {"runs_dir": runs_dir, "name": policy}})  # fmt: skip
    start = time.perf_counter()
    run_dir = train(cfg, progress=False)
    seconds = time.perf_counter() - start
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r.get("event") in ("collapse", "divergence", "rollback")]
    report = evaluate(run_dir, metrics=["fid", "modes"], n=2000)
    values = {r["metric"]: r["value"] for r in report["results"]}
    return {"policy": policy, "seconds": seconds, "events": events, "final": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(policy, args.steps, tmp) for policy in ("warn", "rollback")]
    print(f"\n{date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps\n")
    print("| policy | events (step: action) | final classes covered | confident share | domain FID (2k vs test) | s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ev = ", ".join(f"{e['event']}@{e.get('step', e.get('from_step'))}"
                       + (f"->{e['to_step']} (D lr {e['d_lr']:.2g})" if e["event"] == "rollback" else f": {e['action']}")
                       for e in r["events"])  # fmt: skip
        f = r["final"]
        print(f"| {r['policy']} | {ev or 'none'} | {f['classes_covered']:.0f}/10 | {f['confident_fraction']:.2f} "
              f"| {f['fid']:.2f} | {r['seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
