"""2D Gaussian mixtures, PacGAN protocol (Lin et al. 2018, Table 1): modes, % high quality, reverse KL.

    python bench/mixtures.py [--data grid25 ring8] [--seeds 0 1 ... 9] [--configs gan preset]

For each dataset, configuration and seed: train with the Python API, draw 2,500 samples from the
final generator (G_ema when the config keeps one) and score them with
`ganforge.metrics.modes.mixture_metrics` (a sample is high quality within 3 std of a centre; a mode is
covered when it has one; reverse KL of the high-quality mode histogram to uniform). Configurations:
  gan     PacGAN's plain GAN: the MLP pair (G 4x400 BN ReLU, D 3x200 maxout-5), z 2, Adam 1e-4, batch 100;
  preset  the dataset's ganforge preset (configs/grid25.yaml or ring8.yaml: a disconnected latent of 100
          codes, 3 (grid25) or 2 (ring8) critic steps, G EMA, linear lr decay over the second half).
`--set key=value ...` changes the preset config (e.g. `--set train.n_critic=5 train.ema_beta=0.999`).
Both train for the same number of steps. Prints a markdown table (mean ± std over seeds, and the
worst seed) and writes bench/results/mixtures.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Optional

import torch

from ganforge import build_config, load, train
from ganforge.config import parse_overrides
from ganforge.metrics.modes import mixture_metrics

PAPER = {  # PacGAN Table 1 (mean over 10 trials): modes, % high quality, reverse KL
    "grid25": {"GAN": (17.3, 94.8, 0.70), "PacGAN4": (24.8, 93.6, 0.04)},
    "ring8": {"GAN": (6.3, 98.2, 0.45), "PacGAN2": (7.9, 95.6, 0.07)},
}

GAN = {  # the plain GAN of PacGAN's experiments, on our MLP pair
    "model": {"name": "mlp", "z_dim": 2, "g_channels": 400, "d_channels": 200},
    "optim": {"g_lr": 1e-4, "d_lr": 1e-4, "beta1": 0.5, "beta2": 0.999},
    "train": {"batch_size": 100},
    "monitor": {"every": None},
}


def merge(base: dict, extra: dict) -> dict:
    """`base` with `extra`'s values laid over it, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_one(data: str, config: str, seed: int, steps: int, runs_dir: str, extra: Optional[dict] = None) -> dict:
    common = {"data": {"name": data}, "run": {"runs_dir": runs_dir, "name": f"{data}-{config}-{seed}"},
              "train": {"seed": seed, "steps": steps, "checkpoint_every": steps, "log_every": 500,
                        "sample_every": steps, "n_samples": 2500, "device": "cpu"}}  # fmt: skip
    if config == "gan":
        base = {**GAN, "data": common["data"], "run": common["run"],
                "train": {**GAN["train"], **common["train"]}}  # fmt: skip
        cfg = build_config(overrides=base)
    else:
        cfg = build_config(preset=data, overrides=merge(extra or {}, common))
    start = time.perf_counter()
    run_dir = train(cfg, progress=False)
    seconds = time.perf_counter() - start
    points = load(run_dir).sample(2500, seed=10_000 + seed).numpy()
    return {"data": data, "config": config, "seed": seed, "seconds": seconds, "steps": steps,
            **mixture_metrics(points, data)}  # fmt: skip


def summarise(rows: list[dict]) -> str:
    out = ["| data | config | modes (mean ± std) | worst seed | % high quality | reverse KL | s / run |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    keys = sorted({(r["data"], r["config"]) for r in rows}, key=lambda k: (k[0], k[1] != "gan"))
    for data, config in keys:
        sel = [r for r in rows if r["data"] == data and r["config"] == config]

        def ms(key: str, fmt: str, sel: list = sel) -> str:
            v = [r[key] for r in sel]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            return f"{format(statistics.mean(v), fmt)} ± {format(sd, fmt)}"

        worst = min(r["modes_covered"] for r in sel)
        out.append(f"| {data} | {config} ({len(sel)} seeds) | {ms('modes_covered', '.1f')} | {worst}/{sel[0]['n_modes']} "
                   f"| {ms('high_quality_pct', '.1f')} | {ms('reverse_kl', '.3f')} | {ms('seconds', '.0f')} |")  # fmt: skip
    for data in sorted({r["data"] for r in rows}):
        for name, (modes, hq, kl) in PAPER[data].items():
            out.append(f"| {data} | PacGAN paper: {name} | {modes} | | {hq} | {kl} | |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["grid25", "ring8"], choices=["grid25", "ring8"])
    parser.add_argument("--configs", nargs="+", default=["gan", "preset"], choices=["gan", "preset"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the preset's)")
    parser.add_argument("--out", default="bench/results/mixtures.json")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel, each with --threads torch threads (default 1 job)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the preset config, as for `ganforge train --set`; the benchmark's own "
                             "keys win (data, run, train.seed/device/n_samples/log_every/checkpoint_every/sample_every)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        extra = parse_overrides(args.set)
        todo = [(data, config, seed, args.steps or build_config(preset=data, overrides=extra).train.steps, tmp, extra)
                for data in args.data for config in args.configs for seed in args.seeds]  # fmt: skip
        if args.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads,
                                     initargs=(args.threads or 1,)) as pool:  # fmt: skip
                results = pool.map(run_one, *zip(*todo))
                for row in results:
                    rows.append(row)
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                          flush=True)  # fmt: skip
        else:
            for job in todo:
                row = run_one(*job)
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                      flush=True)  # fmt: skip
    table = summarise(rows)
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")  # fmt: skip
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "table": table, "date": str(date.today()), "set": args.set,
                                          "threads": torch.get_num_threads()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
