"""Memory layout A/B: ganforge's training step in NCHW vs channels_last (NHWC), interleaved in one
process, on the CPU (fp32 unless --precision says otherwise).

    python bench/layout_ab.py --model dcgan28 --width 64 --pairs 6

Each measurement builds the run `ganforge train` builds for the config (bench/throughput.py's
`bench_run`: train.build_run's nets, make_adam's Adam, the precision and autocast train.precision
resolves to, the GAN objective with its defaults: non-saturating loss, one D update and a G update
reusing its fakes) on random uint8 images, and times `objective.step(run)` as train.loop calls it.
The one thing set by hand is the layout under test: training takes it from the precision and device
(`Precision.memory_format`: channels_last on CPUs), so this script puts the nets, the precision and the
real batches (`Feed.memory_format`) into the layout of the arm before the first step.

Prints img/s of each pair and the ratio of the medians (channels_last / NCHW).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import bench_run, train_step

from ganforge import build_config
from ganforge.models import MODELS


def img_per_s(model: str, channels: int, width: int, layout: torch.memory_format, batch: int, steps: int,
              precision: str) -> float:  # fmt: skip
    torch.manual_seed(0)
    cfg = build_config(overrides={
        "model": {"name": model, "g_channels": width, "d_channels": width},
        "train": {"batch_size": batch, "precision": precision, "device": "cpu"},
        "monitor": {"every": None},
    })  # fmt: skip
    res = MODELS[model].resolution
    run, objective = bench_run(cfg, torch.randint(0, 256, (max(batch * 8, 2048), channels, res, res), dtype=torch.uint8))
    # the arm's layout, before the first step (Adam's state does not exist yet)
    for net in (run.G, run.D, run.G_ema):
        if net is not None:
            net.to(memory_format=layout)
    run.precision.memory_format = objective.feed.memory_format = layout

    for _ in range(3):
        train_step(run, objective)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(run, objective)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dcgan28")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--precision", default="fp32", help="train.precision (fp32, bf16 or auto)")
    args = parser.parse_args()
    nchw, nhwc = [], []
    for _ in range(args.pairs):
        for layout, out in ((torch.contiguous_format, nchw), (torch.channels_last, nhwc)):
            out.append(img_per_s(args.model, args.channels, args.width, layout, args.batch, args.steps, args.precision))
    print(f"{args.model} width {args.width} batch {args.batch} {args.precision}, {torch.get_num_threads()} threads")
    print("NCHW          ", [round(x) for x in nchw])
    print("channels_last ", [round(x) for x in nhwc])
    print(f"median ratio channels_last / NCHW: {statistics.median(nhwc) / statistics.median(nchw):.3f}")


if __name__ == "__main__":
    main()
