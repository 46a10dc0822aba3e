"""Discriminator rejection sampling (Azadi et al. 2019) on a finished Stacked MNIST run: does D's logit,
used as a density-ratio estimate at sampling time, flatten the mode histogram?

    GANFORGE_DATA=../shared/data python bench/stacked_drs.py RUN_DIR [--pool 120000] [--threads 2]

Draws a pool of G's samples (G_ema when kept) and D's logit for each (the final checkpoint's D, BN in eval
mode). A sample is accepted with probability min(1, exp(logit - M)), where M is the q-quantile of the pool's
logits (exact rejection sampling of p_G * exp(logit), the data density for an optimal D, with the ratio
capped at M so that enough samples pass). The first 26,000 accepted samples are scored by PacGAN's protocol
(each channel classified by the shipped MNIST extractor), next to the first 26,000 of the pool unfiltered.
Prints one JSON line per rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ganforge import load
from ganforge.checkpoint import load_checkpoint
from ganforge.config import from_dict
from ganforge.data import to_uint8
from ganforge.metrics.features import extract, load_domain_extractor
from ganforge.metrics.modes import stacked_modes
from ganforge.models import build_models

N = 26_000  # PacGAN's sample count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished stacked-mnist run folder")
    parser.add_argument("--pool", type=int, default=120_000, help="samples drawn before rejection")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.5, 0.8, 0.95, 0.99])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = load(args.run)
    ckpt = load_checkpoint(Path(args.run) / "checkpoints" / "final.pt")
    m = from_dict(ckpt["config"]).model
    if m.conditional or m.clusters or m.pack > 1:
        raise SystemExit(f"{args.run}: an unconditional D of one image per logit is needed (this run has "
                         f"conditional={m.conditional}, clusters={m.clusters}, pack={m.pack}).")  # fmt: skip
    _, D = build_models(m.name, m.z_dim, m.channels, m.g_channels, m.d_channels, m.dropout,
                        spectral_norm=m.spectral_norm, mbstd=m.mbstd, latent_codes=m.latent_codes)  # fmt: skip
    D.load_state_dict(ckpt["D"])
    D.eval()  # BN with its running statistics (training used batch statistics: see docs/benchmarks.md)
    noise = torch.Generator().manual_seed(123)
    images, logits = [], []
    with torch.no_grad():
        for _ in range(0, args.pool, 2000):
            x = gen.G(torch.randn(2000, m.z_dim, generator=noise)).float()
            logits.append(D(x).float().flatten())
            images.append(to_uint8(x))
    images, logits = torch.cat(images), torch.cat(logits)
    extractor = load_domain_extractor("mnist")

    def score(index: torch.Tensor) -> dict:
        channel_logits = [extract(extractor, images[index][:N, k : k + 1])[1] for k in range(3)]
        modes = stacked_modes(channel_logits)
        confident = np.mean([torch.softmax(lg, 1).amax(1).ge(0.9).float().mean().item() for lg in channel_logits])
        return {"modes": modes["modes_covered"], "kl": round(modes["kl_to_uniform"], 4), "confident": round(float(confident), 3)}

    head = {"run": args.run, "pool": args.pool, "logit_mean": round(logits.mean().item(), 3),
            "logit_std": round(logits.std().item(), 3)}  # fmt: skip
    print(json.dumps({**head, "rule": "none", **score(torch.arange(N))}), flush=True)
    u = torch.rand(len(logits), generator=torch.Generator().manual_seed(7))
    for q in args.quantiles:
        cap = torch.quantile(logits, q)
        accepted = torch.nonzero(u < torch.exp((logits - cap).clamp(max=0))).flatten()
        row = {**head, "rule": f"min(1, exp(logit - q{q}))", "accept_rate": round(len(accepted) / len(logits), 3)}
        if len(accepted) < N:
            print(json.dumps({**row, "error": f"only {len(accepted)} accepted; draw a larger --pool"}), flush=True)
            continue
        print(json.dumps({**row, **score(accepted)}), flush=True)


if __name__ == "__main__":
    main()
