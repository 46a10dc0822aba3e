"""Where a Stacked MNIST generator's KL comes from: rescore a run (or the real triples) by PacGAN's
protocol and split the KL into the three channels' digit histograms, with the share of confident digits.

    GANFORGE_DATA=../shared/data python bench/stacked_diagnose.py RUN_DIR [RUN_DIR ...]
    GANFORGE_DATA=../shared/data python bench/stacked_diagnose.py real     # the floor: 26,000 real triples

Per run: 26,000 samples of the final checkpoint's G (its own BN running statistics) and of G_ema (the
checkpoint's statistics, then recomputed from 8 x 256 and 32 x 1,024 latents); each channel classified
by the shipped MNIST extractor. Reports modes of 1000, KL to uniform, each channel's digit-histogram KL
to uniform (their sum is the part of the KL that uneven digit classes explain), and the share of digits
classified with confidence >= 0.9; per channel, each digit's share (digit_pct) and the confident share among
the images classified as it (confident_pct_by_digit). `--bn-variants`: G also with BN batch statistics and
with recomputed statistics. `--truncation T [T ...]`: also G (and G_ema) from latents truncated at each |z| <= T
(BigGAN's truncation trick, `ganforge sample --truncation`), the same seed. Prints one JSON line per generator.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ganforge import load
from ganforge.checkpoint import load_checkpoint
from ganforge.data import load_dataset, to_uint8
from ganforge.ema import recalibrate_bn
from ganforge.metrics.features import extract, load_domain_extractor
from ganforge.metrics.modes import kl_divergence, stacked_modes

N = 26_000  # PacGAN's sample count


def score(extractor: torch.nn.Module, images: torch.Tensor) -> dict:
    """uint8 [N, 3, 28, 28] -> modes, KL, per-channel digit KLs, confident share; per channel, the share
    of each digit (%) and the confident share among the images classified as each digit (%)."""
    logits = [extract(extractor, images[:, k : k + 1])[1] for k in range(3)]
    m = stacked_modes(logits)
    digits = [lg.argmax(1).numpy() for lg in logits]
    sure = [torch.softmax(lg, 1).amax(1).ge(0.9).numpy() for lg in logits]
    channel_kl = [kl_divergence(np.bincount(d, minlength=10), np.ones(10)) for d in digits]
    confident = float(np.mean([c.mean() for c in sure]))
    share = [np.round(100 * np.bincount(d, minlength=10) / len(d), 1).tolist() for d in digits]
    sure_by = [[round(100 * float(c[d == k].mean()), 0) if (d == k).any() else None for k in range(10)]
               for d, c in zip(digits, sure)]  # fmt: skip
    return {"modes": m["modes_covered"], "kl": round(m["kl_to_uniform"], 4),
            "channel_kls": [round(v, 4) for v in channel_kl], "channel_kl_sum": round(sum(channel_kl), 4),
            "confident": round(confident, 3), "digit_pct": share, "confident_pct_by_digit": sure_by}  # fmt: skip


def batch_statistics(G: torch.nn.Module, z: torch.Tensor, size: int) -> torch.Tensor:
    """G's images with BN in training mode (each batch of `size` normalised by its own statistics), as uint8;
    G's running statistics are put back afterwards."""
    saved = {k: v.clone() for k, v in G.state_dict().items()}
    G.train()
    with torch.no_grad():
        x = torch.cat([G(z[i : i + size]).float() for i in range(0, len(z), size)])
    G.load_state_dict(saved)
    G.eval()
    return to_uint8(x)


def truncated(extractor: torch.nn.Module, gen, run: str, name: str, thresholds: list[float]) -> None:
    """Score `gen` (its G as loaded) from latents truncated at each threshold, the same seed as the untruncated draw."""
    for t in thresholds:
        z = gen.latents(N, seed=10_000, truncation=t)
        print(json.dumps({"run": run, "generator": f"{name}, truncation {t}", **score(extractor, gen.generate(z))}),
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders of stacked-mnist trainings, or `real`")
    parser.add_argument("--bn-variants", action="store_true",
                        help="also score G with BN batch statistics (batches of 64, 1024) and recomputed statistics")
    parser.add_argument("--truncation", type=float, nargs="+", default=[], metavar="T",
                        help="also score G and G_ema from latents truncated at each threshold T (e.g. 1.0 1.5 2.0)")
    args = parser.parse_args()
    extractor = load_domain_extractor("mnist")
    for run in args.runs:
        if run == "real":
            images = load_dataset("stacked-mnist").images[:N]
            print(json.dumps({"run": "real (train split, first 26,000)", **score(extractor, images)}), flush=True)
            continue
        gen = load(run)
        saved = load_checkpoint(Path(run) / "checkpoints" / "final.pt")
        z = gen.latents(N, seed=10_000)

        G = gen.G  # in eval mode; gen.generate(z) draws its images
        G.load_state_dict(saved["G"])
        print(json.dumps({"run": run, "generator": "G", **score(extractor, gen.generate(z))}), flush=True)
        truncated(extractor, gen, run, "G", args.truncation)
        if args.bn_variants:  # does G's BN normalisation at sampling time matter?
            for size in (64, 1024):
                print(json.dumps({"run": run, "generator": f"G, batch statistics (batches of {size})",
                                  **score(extractor, batch_statistics(G, z, size))}), flush=True)  # fmt: skip
            recalibrate_bn(G, gen.z_dim, torch.device("cpu"), batches=32, batch_size=1024, seed=1)
            print(json.dumps({"run": run, "generator": "G, BN statistics of 32 x 1024 latents",
                              **score(extractor, gen.generate(z))}), flush=True)  # fmt: skip
        if "G_ema" not in saved:
            continue
        G.load_state_dict(saved["G_ema"])
        print(json.dumps({"run": run, "generator": "G_ema, checkpoint's BN statistics",
                          **score(extractor, gen.generate(z))}), flush=True)  # fmt: skip
        truncated(extractor, gen, run, "G_ema, checkpoint's BN statistics", args.truncation)
        for batches, size in ((8, 256), (32, 1024)):
            recalibrate_bn(G, gen.z_dim, torch.device("cpu"), batches=batches, batch_size=size, seed=1)
            print(json.dumps({"run": run, "generator": f"G_ema, BN statistics of {batches} x {size} latents",
                              **score(extractor, gen.generate(z))}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
