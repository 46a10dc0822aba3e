"""Time to good digits: how many seconds of wall time, from process start, until MNIST samples are good.

    python bench/time_to_quality.py --preset mnist-fast --seconds 240
    python bench/time_to_quality.py --preset seed-mnist --seconds 600 --every 100

Runs `ganforge train` as a subprocess (so the clock includes Python start-up, imports and data
loading, as a user experiences it) with a snapshot checkpoint every EVERY steps, all kept, and notes
the wall time at which each was written. Afterwards (outside the timed run) it judges each snapshot's
generator (G_ema when kept): 1,000 samples (seed 0) under the shipped MNIST domain classifier ->
fraction classified with p >= 0.9, the classes present, and domain FID against 1,000 real test
digits. "Good digits" = at least 90 % confident and every one of the 10 classes at least 5 % of
the samples. The probabilities are temperature-scaled (metrics/calibration.py) with T fitted on real
test digits 5,000-9,999: the classifier was trained with label smoothing, which caps its raw
confidence near 0.955 (raw, it is confident on only ~91 % of real digits; calibrated, ~98 %). The
raw fraction is reported too. Prints a table and the first time that holds; writes
bench/results/ttq_<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from ganforge.data import load_dataset
from ganforge.metrics.calibration import calibrated_proba, fit_temperature
from ganforge.metrics.features import extract, load_domain_extractor
from ganforge.metrics.fidelity import fid
from ganforge.sample import load

GOOD_CONFIDENT, GOOD_CLASS_SHARE = 0.90, 0.05


def judge(ckpt: Path, extractor, real_features: torch.Tensor, temperature: float) -> dict:
    gen = load(ckpt)
    images = gen.sample(1000, seed=0)
    features, logits = extract(extractor, images)
    conf, cls = calibrated_proba(logits, temperature).max(dim=1)
    share = torch.bincount(cls, minlength=10).double() / len(cls)
    confident = float((conf >= 0.9).double().mean())
    return {
        "confident": confident,
        "confident_raw": float((torch.softmax(logits.float(), dim=1).max(dim=1).values >= 0.9).double().mean()),
        "min_class_share": float(share.min()),
        "classes": int((share > 0).sum()),
        "fid_1k": float(fid(features, real_features)),
        "good": confident >= GOOD_CONFIDENT and float(share.min()) >= GOOD_CLASS_SHARE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist-fast")
    parser.add_argument("--seconds", type=float, default=240, help="train.time_limit of the run")
    parser.add_argument("--every", type=int, default=50, help="snapshot every this many steps")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, as for ganforge train --set")
    parser.add_argument("--threads", type=int, help="torch threads of the training process (default: all)")
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args()
    if not os.environ.get("GANFORGE_DATA"):
        sys.exit("set GANFORGE_DATA to a folder holding mnist/")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "ttq"
        cmd = [sys.executable, "-m", "ganforge", "train", "--preset", args.preset, "--data", "mnist", "--no-progress",
               "--runs-dir", tmp, "--name", "ttq", "--steps", "1000000000", "--set",
               f"train.time_limit={args.seconds}", f"train.checkpoint_every={args.every}", "train.keep_checkpoints=100000",
               "train.epochs=null", "train.sample_every=1000000000", *args.set]  # fmt: skip
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        start = time.time()
        subprocess.run(cmd, check=True, env=env)
        total = time.time() - start
        snaps = sorted((run / "checkpoints").glob("step_*.pt"))
        extractor = load_domain_extractor("mnist")
        test = load_dataset("mnist", split="test", download=False)
        real_features, real_logits = extract(extractor, test.images[:1000])
        temperature = fit_temperature(extract(extractor, test.images[5000:])[1], test.labels[5000:])
        real_confident = float((calibrated_proba(real_logits, temperature).max(dim=1).values >= 0.9).double().mean())
        rows = []
        for snap in snaps:
            row = {"step": int(snap.stem.split("_")[1]), "seconds": snap.stat().st_mtime - start,
                   **judge(snap, extractor, real_features, temperature)}  # fmt: skip
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    first = next((r for r in rows if r["good"]), None)
    machine = platform.processor() or platform.machine()
    header = (f"{date.today()}, {machine}, {os.cpu_count()} CPUs, torch {torch.__version__}, preset {args.preset}"
              f"{' ' + ' '.join(args.set) if args.set else ''}; whole run {total:.0f} s; the same classifier "
              f"(temperature-scaled, T = {temperature:.3f}) is confident on {real_confident:.1%} of 1,000 real test "
              "digits")  # fmt: skip
    lines = ["| step | wall time from start | confident | (raw) | smallest class share | classes | FID (1k vs 1k) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        mark = " **good**" if r is first else ""
        lines.append(f"| {r['step']} | {r['seconds']:.0f} s{mark} | {r['confident']:.3f} | {r['confident_raw']:.3f} "
                     f"| {r['min_class_share']:.3f} "
                     f"| {r['classes']} | {r['fid_1k']:.2f} |")  # fmt: skip
    verdict = (f"good digits first at step {first['step']}, {first['seconds']:.0f} s after process start"
               if first else "never reached good digits in this run")  # fmt: skip
    print(f"\n{header}\n\n" + "\n".join(lines) + f"\n\n{verdict}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ttq_{args.preset}.json").write_text(json.dumps({"header": header, "rows": rows, "verdict": verdict,
                                                             "real_confident": real_confident,
                                                             "temperature": temperature, "command": cmd},
                                                            indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
