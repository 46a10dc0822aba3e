"""Memorisation benchmark (issue #28 items 1-2): does `--metrics memorization` see copies, against
what the run trained on?

    GANFORGE_DATA=../shared/data python bench/memorization.py [--seen 500] [--steps 2000]

1. Planted copies: for the first --seen MNIST training images (a run with data.limit = --seen saw
   exactly those), exact copies, copies moved by 1 and 2 pixels, and copies with sigma-10 pixel noise;
   honest = as many MNIST test images. Each scored in pixels (instance level, best of shifts up to
   2 px) and in the mnist extractor's features (class level), against the --seen images and against
   all 60,000, with --seen other test images as the held-out set.
2. Real runs: the quick-start recipe (mnist-fast) on all of MNIST, and on only the first --seen images
   (data.limit), each `ganforge eval --metrics fid,memorization --n 5000`.
Prints Markdown tables; writes bench/results/memorization.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from ganforge.config import build_config
from ganforge.data import load_dataset
from ganforge.metrics import memorization
from ganforge.metrics.evaluate import evaluate
from ganforge.metrics.features import extract, load_domain_extractor
from ganforge.train import train


def planted(seen_n: int) -> list[dict]:
    train_set = load_dataset("mnist", split="train", download=False)
    test_set = load_dataset("mnist", split="test", download=False)
    seen = train_set.images[:seen_n]
    held, honest = test_set.images[:seen_n], test_set.images[seen_n : 2 * seen_n]
    noise = 10 * torch.randn(seen.shape, generator=torch.Generator().manual_seed(0))
    fakes = {
        "exact copies": seen,
        "copies moved 1 px": torch.roll(seen, 1, dims=2),
        "copies moved (2, -1) px": torch.roll(seen, (2, -1), dims=(2, 3)),
        "copies + noise sigma 10": (seen.float() + noise).round().clamp(0, 255).to(torch.uint8),
        "honest (test images)": honest,
    }
    ext = load_domain_extractor("mnist")
    feats = {name: extract(ext, x)[0] for name, x in fakes.items()}
    held_f = extract(ext, held)[0]
    rows = []
    for ref_name, ref in ((f"the {seen_n} seen", seen), ("all 60,000", train_set.images)):
        ref_f = extract(ext, ref)[0]
        for name, x in fakes.items():
            px = memorization.pixel_memorization(x, held, ref)
            ft = memorization.memorization(feats[name], held_f, ref_f)
            rows.append({"reference": ref_name, "samples": name, "pixel_ratio": px["ratio"],
                         "pixel_near_copies": px["near_copy_fraction"], "feature_ratio": ft["ratio"],
                         "feature_near_copies": ft["near_copy_fraction"]})  # fmt: skip
    return rows


def real_runs(seen_n: int, steps: int, n: int, tmp: str) -> list[dict]:
    rows = []
    for label, limit in (("all 60,000", None), (f"first {seen_n}", seen_n)):
        cfg = build_config("mnist-fast", overrides={"data": {"name": "mnist", "limit": limit}, "train": {"steps": steps},
                                                    "run": {"runs_dir": tmp, "name": f"limit{limit}"}})  # fmt: skip
        start = time.perf_counter()
        run = train(cfg, progress=False)
        seconds = time.perf_counter() - start
        report = evaluate(run, metrics=["fid", "memorization"], n=n)
        by = {r["metric"]: r for r in report["results"]}
        rows.append({"trained on": label, "steps": steps, "train_seconds": seconds,
                     **{k: by[k]["value"] for k in ("fid", "memorization_ratio", "near_copy_fraction",
                                                    "memorization_ratio_features", "near_copy_fraction_features")},
                     "train_reference": by["memorization_ratio"]["train_reference"], "n_generated": n,
                     "heldout_n": by["memorization_ratio"]["heldout_n"]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seen", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", default="bench/results/memorization.json")
    args = parser.parse_args()
    if not os.environ.get("GANFORGE_DATA"):
        raise SystemExit("set GANFORGE_DATA to a folder holding mnist/")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = planted(args.seen)
    print("| samples | reference | pixels: ratio | pixels: near copies | features: ratio | features: near copies |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['samples']} | {r['reference']} | {r['pixel_ratio']:.3f} | {100 * r['pixel_near_copies']:.1f} % | "
              f"{r['feature_ratio']:.3f} | {100 * r['feature_near_copies']:.1f} % |")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        runs = real_runs(args.seen, args.steps, args.n, tmp)
    print("\n| trained on | steps | train s | FID | pixels: ratio | pixels: near copies | features: ratio | features: near copies |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['trained on']} | {r['steps']} | {r['train_seconds']:.0f} | {r['fid']:.2f} | {r['memorization_ratio']:.3f} | "
              f"{100 * r['near_copy_fraction']:.2f} % | {r['memorization_ratio_features']:.3f} | "
              f"{100 * r['near_copy_fraction_features']:.2f} % |")  # fmt: skip
    Path(args.out).write_text(json.dumps({"uptime": load, "torch": torch.__version__, "planted": rows, "runs": runs},
                                         indent=2))  # fmt: skip
    print(f"\n{load}\nwrote {args.out}")


if __name__ == "__main__":
    main()
