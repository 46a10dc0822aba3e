"""Memory layout A/B: ganforge's training step (D update + G update reusing the fakes) in NCHW vs
channels_last (NHWC), interleaved in one process, fp32 on the CPU.

    python bench/layout_ab.py --model dcgan28 --width 64 --pairs 6

Prints img/s of each pair and the ratio of the medians (channels_last / NCHW).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ganforge.losses import LOSSES
from ganforge.models import build_models
from ganforge.precision import Precision
from ganforge.steps import d_step, g_step


def img_per_s(model: str, channels: int, width: int, layout: torch.memory_format, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    G, D = build_models(model, 100, channels, width, width, 0.3)
    amp = Precision("fp32", torch.device("cpu"))
    G, D = G.to(memory_format=layout), D.to(memory_format=layout)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), 1e-4), torch.optim.Adam(D.parameters(), 1e-4)
    res = 28 if "28" in model else 32
    real = (torch.rand(batch, channels, res, res) * 2 - 1).contiguous(memory_format=layout)
    loss = LOSSES["non-saturating"]

    def step() -> None:
        z = torch.randn(batch, 100)
        fakes = G(z, None)
        d_step(G, D, opt_D, loss, real, z, None, None, None, None, amp, fake_img=fakes)
        g_step(G, D, opt_G, loss, z, None, None, amp, fake_img=fakes)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dcgan28")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    nchw, nhwc = [], []
    for _ in range(args.pairs):
        nchw.append(img_per_s(args.model, args.channels, args.width, torch.contiguous_format, args.batch, args.steps))
        nhwc.append(img_per_s(args.model, args.channels, args.width, torch.channels_last, args.batch, args.steps))
    print(f"{args.model} width {args.width} batch {args.batch} fp32, {torch.get_num_threads()} threads")
    print("NCHW          ", [round(x) for x in nchw])
    print("channels_last ", [round(x) for x in nhwc])
    print(f"median ratio channels_last / NCHW: {statistics.median(nhwc) / statistics.median(nchw):.3f}")


if __name__ == "__main__":
    main()
