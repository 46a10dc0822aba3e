"""Benchmark the README's first command: wall time of `ganforge train` and how recognisable its digits are.

    python bench/quickstart.py [--data auto|mnist] [-- extra ganforge train args]

Runs `ganforge train` in a temporary folder exactly as a newcomer would (offline: no GANFORGE_DATA
and an empty cache give the embedded mnist-5k; --data mnist leaves GANFORGE_DATA set, so the same
command finds full MNIST there), times it, then
judges 1,000 samples of the final generator with a small CNN trained on real MNIST (2 epochs on the
60k training digits): the fraction classified with p >= 0.9 and the classes those cover, next to
the same numbers for 1,000 real MNIST test digits. Prints a markdown table row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
from ganforge.metrics.classifier import fit_classifier, recognisability
from ganforge.sample import load


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default="auto",
        choices=("auto", "mnist"),
        help="auto: offline newcomer (embedded mnist-5k); mnist: full MNIST from GANFORGE_DATA",
    )
    parser.add_argument("extra", nargs="*", help="extra arguments for ganforge train (after --)")
    args = parser.parse_args()
    if not os.environ.get("GANFORGE_DATA"):
        sys.exit(
            "set GANFORGE_DATA to a folder holding mnist/ (the judge is trained on real MNIST)"
        )
    data_root = os.environ["GANFORGE_DATA"]

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if args.data == "auto":
            env.pop("GANFORGE_DATA")
            env["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        cmd = [
            "ganforge",
            "train",
            "--no-progress",
            "--name",
            "bench",
            "--runs-dir",
            str(Path(tmp) / "runs"),
        ]
        cmd += args.extra  # --data mnist: the same command, which finds full MNIST through GANFORGE_DATA
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=tmp)
        wall = time.perf_counter() - start
        gen = load(Path(tmp) / "runs" / "bench")
        samples = gen.sample(1000, seed=2026)
        dataset = gen.config["data"]["name"]

    train = load_dataset("mnist", root=data_root)
    test = load_dataset("mnist", root=data_root, split="test")
    judge = fit_classifier(train.images, train.labels, epochs=2)
    fake = recognisability(judge, samples)
    real = recognisability(judge, test.images[:1000])
    print(f"samples: {fake}\nreal:    {real}", file=sys.stderr)
    cpu = platform.processor() or platform.machine()
    print(
        f"| {date.today()} | `{' '.join(['ganforge', 'train', *cmd[7:]])}` | {dataset} | {wall / 60:.1f} min "
        f"| {fake['confident_fraction']:.1%} ({fake['classes_covered']}/10 classes) "
        f"| {real['confident_fraction']:.1%} ({real['classes_covered']}/10) "
        f"| {os.cpu_count()} cores {cpu}, torch {torch.__version__} |"
    )


if __name__ == "__main__":
    main()
