"""The cost of fresh latents for the G step after several critic updates (issue #28 item 8).

    python bench/reuse_fakes.py [--presets wgan-gp cifar10-sngan grid25] [--reps 5] [--steps 10]

With n_critic > 1, `train.reuse_fakes` now defaults to false (WGAN-GP's Algorithm 1 draws fresh latents
for the G step): one more G forward per step. For each preset, the run `ganforge train` builds for it
(bench/throughput.py's `bench_run`, on random uint8 images of the preset's size, monitor off) is timed
with reuse_fakes true and false, alternating (A B A B ...), `--steps` training iterations per timing,
median of `--reps`. Prints a Markdown table; writes bench/results/reuse_fakes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import bench_run, train_step  # noqa: E402

from ganforge.config import Config, build_config, resolve  # noqa: E402
from ganforge.data import ImageDataset  # noqa: E402
from ganforge.distributed import Dist  # noqa: E402
from ganforge.runlog import RunFiles  # noqa: E402
from ganforge.train import build_run  # noqa: E402

SIZES = {"wgan-gp": (3, 32), "cifar10-sngan": (3, 32), "grid25": (2, 0), "ring8": (2, 0)}


def make_run(cfg: Config, data: torch.Tensor, points: bool):
    """bench_run's run, also for 2D points (float vectors [N, 2] in place of images)."""
    if not points:
        return bench_run(cfg, data)
    ds = ImageDataset(data, torch.zeros(len(data), dtype=torch.long), name="random", source="bench: random points")
    run, setup = build_run(resolve(cfg, ds.name, data.shape[1], len(ds), points=True), ds, Dist(),
                           RunFiles(Path(tempfile.gettempdir()), main=False), None)  # fmt: skip
    run.G.train()
    run.D.train()
    return run, setup.objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["wgan-gp", "cifar10-sngan", "grid25"], choices=list(SIZES))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="bench/results/reuse_fakes.json")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for preset in args.presets:
        channels, res = SIZES[preset]
        runs = {}
        for reuse in (True, False):
            cfg = build_config(preset, overrides={"train": {"reuse_fakes": reuse, "device": "cpu"},
                                                  "monitor": {"every": None}})  # fmt: skip
            n = cfg.train.batch_size * cfg.train.n_critic * 4
            gen = torch.Generator().manual_seed(0)
            images = (torch.randint(0, 256, (n, channels, res, res), generator=gen, dtype=torch.uint8) if res
                      else torch.randn(n, channels, generator=gen))  # fmt: skip
            runs[reuse] = make_run(cfg, images, points=not res)
            for _ in range(3):  # warm-up
                train_step(*runs[reuse])
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.reps):
            for reuse in (True, False):
                start = time.perf_counter()
                for _ in range(args.steps):
                    train_step(*runs[reuse])
                times[reuse].append((time.perf_counter() - start) / args.steps)
        reused, fresh = statistics.median(times[True]), statistics.median(times[False])
        cfg = build_config(preset)
        rows.append({"preset": preset, "model": cfg.model.name, "batch": cfg.train.batch_size,
                     "n_critic": cfg.train.n_critic, "step_s_reused": reused, "step_s_fresh": fresh,
                     "cost": fresh / reused - 1, "times": {str(k): v for k, v in times.items()}})  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {load}\n")
    print("| preset | model | batch | n_critic | step, fakes reused | step, fresh latents | cost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['preset']}` | {r['model']} | {r['batch']} | {r['n_critic']} | {1000 * r['step_s_reused']:.1f} ms | "
              f"{1000 * r['step_s_fresh']:.1f} ms | {100 * r['cost']:+.1f} % |")  # fmt: skip
    Path(args.out).write_text(json.dumps({"uptime": load, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
