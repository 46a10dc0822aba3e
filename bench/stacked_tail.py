"""Continue a finished Stacked MNIST run for some more steps with another ending, then score it by
PacGAN's protocol: does a learning-rate decay to 0, or a G EMA, over the last steps lower the KL?

    GANFORGE_DATA=../shared/data python bench/stacked_tail.py RUN_DIR --steps 2000 --tails none decay ema

RUN_DIR is a finished run without a learning-rate schedule (e.g. one that `bench/equal_budget.py --keep DIR`
kept); it is not changed.
Each tail trains a copy of it from its final checkpoint's exact state (weights, optimisers, RNG, step):
- none: the same settings (the control: what the extra steps alone do);
- decay: both learning rates fall linearly to 0 over the extra steps;
- ema: a G EMA starts as a copy of G and averages over the extra steps; sampling uses it. Its decay is
  ganforge's: min(--ema-beta, (1 + step) / (10 + step)), so --ema-beta 0.999 holds from step 8,991 on (the
  30-minute runs end near step 22,000); like every G_ema of ganforge, its BN statistics are recomputed
  from G_ema's own activations when it is saved, so a gain mixes the averaging with that recalibration.
`ganforge train --resume` refuses such changes on purpose (a resumed run stays the run it was); this
script edits the copy's checkpoint config instead. Then 26,000 samples (sample seed 0) by PacGAN's
protocol, as `ganforge eval` and bench/equal_budget.py score them. Prints one JSON line per tail.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

from ganforge import evaluate, train
from ganforge.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished stacked-mnist run folder")
    parser.add_argument("--steps", type=int, default=2000, help="extra steps")
    parser.add_argument("--tails", nargs="+", default=["none", "decay", "ema"], choices=("none", "decay", "ema"))
    parser.add_argument("--ema-beta", type=float, default=0.999)
    parser.add_argument("--n", type=int, default=26000)
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()
    if len(set(args.tails)) != len(args.tails):
        parser.error("--tails: name each tail once")
    src = Path(args.run)
    final = load_checkpoint(src / "checkpoints" / "final.pt")
    if final["config"]["optim"]["lr_decay"] != "none":  # a longer run would stretch its schedule: no control arm
        raise SystemExit(f"bench: {src} has a learning-rate schedule (optim.lr_decay); use a run without one.")
    start = final["step"]
    total = start + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        for tail in args.tails:
            run = Path(tmp) / tail
            shutil.copytree(src, run)
            ckpt = copy.deepcopy(final)
            (run / "checkpoints" / "healthy.pt").unlink(missing_ok=True)  # the source's, without this tail's changes
            if tail == "decay":  # the schedule's decay starts at this fraction of the new length: the last steps
                ckpt["config"]["optim"].update(lr_decay="linear", decay_start=(start + 0.5) / total)
            elif tail == "ema":
                if "G_ema" in ckpt:
                    raise SystemExit(f"bench: {src} already has a G EMA; the ema tail starts one.")
                ckpt["config"]["train"]["ema_beta"] = args.ema_beta
                ckpt["G_ema"] = copy.deepcopy(ckpt["G"])
            save_checkpoint(run / "checkpoints" / "last.pt", ckpt)
            clock = time.perf_counter()
            # the steps, not the source's time limit or epochs, end the tail
            train(resume=run, overrides={"train": {"steps": total, "time_limit": None, "epochs": None}}, progress=False)
            seconds = time.perf_counter() - clock
            reached = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
            report = evaluate(run, n=args.n, seed=0)
            values = {r["metric"]: round(r["value"], 4) for r in report["results"]}
            line = json.dumps({"run": str(src), "tail": tail, "from_step": start, "to_step": reached,
                               "ema_beta": args.ema_beta if tail == "ema" else None,
                               "train_seconds": round(seconds), **values})  # fmt: skip
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
