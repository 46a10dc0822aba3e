"""Image-to-image translation on this CPU: the issue's targets for pix2pix and CycleGAN.

    GANFORGE_DATA=../shared/data python bench/translation.py --arms edges2fashion colorize mnist2mnistm

Each arm trains from its preset for a fixed number of steps (sized to fit about 15 minutes of this
2-core CPU when idle), then `ganforge eval`'s translation metrics score it on the test split
(metrics/translation_eval.py):
    edges2fashion   pix2pix (adversarial + 100 L1) against the L1-only regression of the same G at the
                    same steps (the paper's ablation): domain FID of the outputs against the real test
                    items (Fashion-MNIST extractor), and the classifier's accuracy on the outputs
    colorize        pix2pix colourising CIFAR-10: the CIFAR-10 classifier's accuracy on the outputs
                    against the colour originals and the gray inputs; colourfulness against the real
    mnist2mnistm    CycleGAN MNIST -> MNIST-M-style: label preservation (PixelDA's protocol) against
                    source-only training, domain FID (mnistm extractor)
Writes bench/results/translation_<arm>.json (every arm's config, seconds, the eval report, uptime)
and the runs' sample grids as bench/results/translation_<arm>_<run>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from ganforge import build_config, train
from ganforge.metrics.evaluate import evaluate

ARMS = {  # arm -> [(run name, preset, overrides)]
    "edges2fashion": [
        ("pix2pix", "pix2pix-edges2fashion", {}),
        ("l1_only", "pix2pix-edges2fashion", {"loss": {"adv_weight": 0.0}}),
    ],
    "colorize": [("pix2pix", "colorize-cifar10", {})],
    "mnist2mnistm": [("cyclegan", "cyclegan-mnist2mnistm", {})],
}
STEPS = {"edges2fashion": 3000, "colorize": 3000, "mnist2mnistm": 2500}  # per run
EVAL_N = {"edges2fashion": 10_000, "colorize": 1_000, "mnist2mnistm": 5_000}  # the test split (all of it here)


def run_arm(arm: str, steps: int, runs_dir: Path, out_dir: Path, seed: int, extra_set: dict, tag: str) -> dict:
    record = {"arm": arm, "date": str(date.today()), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "set": extra_set,
              "runs": []}  # fmt: skip
    for name, preset, extra in ARMS[arm]:
        overrides = merge(merge({**extra}, extra_set), {
            "train": {"steps": steps, "epochs": None, "seed": seed, "sample_every": 10**9, "checkpoint_every": 10**9},
            "run": {"runs_dir": str(runs_dir), "name": f"{arm}{tag}-{name}"}})  # fmt: skip
        load_before = os.getloadavg()
        start = time.perf_counter()
        run_dir = train(build_config(preset=preset, overrides=overrides), progress=False)
        seconds = time.perf_counter() - start
        report = evaluate(run_dir, n=EVAL_N[arm], seed=seed)
        shutil.copy(run_dir / "samples.png", out_dir / f"translation_{arm}{tag}_{name}.png")
        record["runs"].append({"name": name, "preset": preset, "overrides": extra, "train_seconds": seconds,
                               "load_before": load_before, "load_after": os.getloadavg(),
                               "eval": {k: v for k, v in report.items() if k != "path"}})  # fmt: skip
        print(f"{arm}/{name}: {seconds:.0f} s of training; " + "; ".join(
            f"{r['metric']} {r['value']:.4g}" for r in report["results"]), flush=True)  # fmt: skip
    return record


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = merge(dict(base.get(key, {})), value) if isinstance(value, dict) else value
    return base


def parse_set(items: list[str]) -> dict:
    """--set model.g_channels=16 loss.pool_size=0 -> nested overrides (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in items:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, help="steps per run (default: each arm's, see STEPS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. _g16)")
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--keep", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            record = run_arm(arm, args.steps or STEPS[arm], Path(args.keep or tmp), out_dir, args.seed,
                             parse_set(args.set), args.tag)  # fmt: skip
            (out_dir / f"translation_{arm}{args.tag}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
