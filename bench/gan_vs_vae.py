"""GAN vs VAE at an equal CPU budget (issue: "GANs vs autoencoders"), with `ganforge compare`.

    python bench/gan_vs_vae.py --seconds 300 --data mnist fashion-mnist

For each dataset: a class-conditional GAN (preset mnist-fast) and a class-conditional VAE (preset
mnist-vae, the same G as decoder) each train for SECONDS of wall time (train.time_limit), then
`ganforge.metrics.compare.compare` evaluates both under one protocol: the dataset's domain extractor
(FID, KID, precision/recall, modes) against its test split, sharpness (variance of the Laplacian,
generated / real), and CAS (a classifier trained on 10,000 generated images, tested on the real
test split). Class-conditional, so that CAS applies to both.
Writes bench/results/gan_vs_vae_<dataset>/ (compare.md/.json/.png) and prints the tables.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch

from ganforge import build_config, compare, train

RUNS = {"gan": "mnist-fast", "vae": "mnist-vae"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--seconds", type=float, default=300, help="training budget per run")
    parser.add_argument("--n", type=int, default=10000, help="samples per evaluation")
    parser.add_argument("--cas-per-class", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--keep", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    machine = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.keep or tmp)
        for dataset in args.data:
            runs = []
            for family, preset in RUNS.items():
                name = f"{dataset}-{family}"
                overrides = {
                    "data": {"name": dataset},
                    "model": {"conditional": True},
                    "train": {"time_limit": args.seconds, "steps": 10**9, "epochs": None, "seed": args.seed,
                              "device": args.device, "sample_every": 10**9, "checkpoint_every": 10**9},
                    "run": {"runs_dir": str(runs_dir), "name": name},
                }  # fmt: skip
                runs.append(train(build_config(preset=preset, overrides=overrides), progress=False))
            out = Path(args.out_dir) / f"gan_vs_vae_{dataset}"
            report = compare(runs, metrics=["fid", "kid", "pr", "modes", "sharpness", "cas"], n=args.n, out_dir=out,
                             device=args.device, cas_per_class=args.cas_per_class)  # fmt: skip
            header = (f"{dataset}: {date.today()}, {machine}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads, {args.seconds:g} s of training per run, seed {args.seed}")  # fmt: skip
            (out / "header.txt").write_text(header + "\n")
            print(f"\n{header}\n\n{report['table']}\n", flush=True)


if __name__ == "__main__":
    main()
