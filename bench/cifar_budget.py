"""CIFAR-10 quality per CPU-minute (issue #27): domain FID against images seen and wall time, per arm.

    GANFORGE_DATA=../shared/data python bench/cifar_budget.py --minutes 10 \
        --arms seed-cifar "cond-lr1e-3=seed-cifar:model.conditional=true,..." [--marks 1 2.5 5 10]
    GANFORGE_DATA=../shared/data python bench/cifar_budget.py --floors      # the yardstick's floor and scale

Each arm (PRESET or NAME=PRESET:key=value,...) trains on all 50,000 CIFAR-10 training images, one arm
at a time, in segments that end at the --marks (minutes of training, cumulative; each segment a resume
with train.time_limit, so the run is the same as one that never stopped: the snapshots cost only the
data loading between them, which is not training time). At each mark the checkpoint is kept and, after
all arms, scored by the literature's protocol with the domain extractor in place of Inception:
--n generated (10,000) against all 50,000 training images for FID, KID and the class histogram; precision
and recall (k = 3) against the first --n training images (equal sizes, as Kynkaenniemi et al. score
them). Intermediate marks use --n-curve generated images (5,000) for the curve. Writes
bench/results/cifar_budget/<arm>.json, the final sample grids, and one PNG (cifar_budget.png) with FID
against images seen and against minutes for every arm, with each arm's throughput in the legend.
--floors: FID/KID/PR of 10,000 real training images and of the 1,000 test images against the 50,000,
and their class histogram: what a perfect generator scores on this yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from equal_budget import parse_run  # noqa: E402

from ganforge import build_config, evaluate, train  # noqa: E402
from ganforge.checkpoint import load_checkpoint  # noqa: E402

OUT = Path("bench/results/cifar_budget")  # --out


def train_arm(spec: str, marks: list[float], runs_dir: Path, device: str) -> dict:
    """Train one arm to each mark (minutes); returns its snapshots (checkpoint, steps, images, seconds)."""
    name, preset, overrides = parse_run(spec)
    own = overrides.setdefault("train", {})
    own.update(steps=own.get("steps", 10**9), epochs=None, device=device, sample_every=10**9,
               checkpoint_every=10**9, time_limit=marks[0] * 60)  # fmt: skip
    overrides["run"] = {"runs_dir": str(runs_dir), "name": name}
    overrides.setdefault("data", {})["name"] = "cifar10"
    cfg = build_config(preset=preset, overrides=overrides)
    snapshots, done = [], 0.0
    wall_start = time.perf_counter()
    for k, mark in enumerate(marks):
        if k == 0:
            run = train(cfg, progress=False)
        else:
            train(resume=run, overrides={"train": {"time_limit": (mark - done) * 60}}, progress=False)
        ckpt = run / "checkpoints" / "last.pt"
        state = load_checkpoint(ckpt)
        done = state["train_seconds"] / 60
        keep = run / f"mark_{mark:g}min.pt"
        shutil.copy(ckpt, keep)
        snapshots.append({"mark_min": mark, "checkpoint": str(keep), "step": state["step"], "nimg": state["nimg"],
                          "train_seconds": state["train_seconds"]})  # fmt: skip
        print(json.dumps({"arm": name, **{k: v for k, v in snapshots[-1].items() if k != "checkpoint"}}), flush=True)
    grid = OUT / f"{name}_samples.png"
    grid.write_bytes((run / "samples.png").read_bytes())
    return {"arm": name, "preset": preset, "overrides": overrides, "config": cfg.to_dict(), "snapshots": snapshots,
            "wall_seconds": time.perf_counter() - wall_start, "samples_png": str(grid),
            "img_per_s": snapshots[-1]["nimg"] / snapshots[-1]["train_seconds"]}  # fmt: skip


def score(checkpoint: str, n: int, final: bool, device: str) -> dict:
    """The yardstick: FID/KID/classes against all 50k training images; PR against as many as generated."""
    out = Path(tempfile.mkdtemp()) / "eval.json"
    a = evaluate(checkpoint, metrics=["fid", "kid", "modes"], n=n, ref="cifar10:train", n_ref="all", out=out,
                 device=device)  # fmt: skip
    values = {r["metric"]: r["value"] for r in a["results"]}
    row = {"n": n, **values, "kid_std": next(r["std"] for r in a["results"] if r["metric"] == "kid"),
           "protocol": a["protocol"]}  # fmt: skip
    if final:
        b = evaluate(checkpoint, metrics=["pr"], n=n, ref="cifar10:train", out=out, device=device)
        row.update({r["metric"]: r["value"] for r in b["results"]}, pr_reference=b["protocol"]["reference"])
        row["class_histogram"] = class_histogram(checkpoint, n)
    return row


def class_histogram(checkpoint: str, n: int) -> list[float]:
    """The share of each CIFAR-10 class among n samples, by the cifar10 extractor's argmax."""
    from ganforge.metrics.features import extract, load_domain_extractor
    from ganforge.sample import load

    images = load(checkpoint).sample(n, seed=10_000)  # uint8; a conditional G makes every class in turn
    logits = extract(load_domain_extractor("cifar10"), images)[1]
    counts = torch.bincount(logits.argmax(1), minlength=10).double()
    return (counts / counts.sum()).tolist()


def floors(n: int) -> dict:
    """What real images score on the yardstick (the floor) and how far the test split lies (the scale)."""
    from ganforge.data import load_dataset
    from ganforge.metrics import fidelity
    from ganforge.metrics.features import extract, load_domain_extractor

    ext = load_domain_extractor("cifar10")
    train_set = load_dataset("cifar10", split="train", download=False)
    test_set = load_dataset("cifar10", split="test", download=False)
    f_train, logits_train = extract(ext, train_set.images)
    f_test, logits_test = extract(ext, test_set.images)
    out = {"extractor_sha256": ext.describe()["weights_sha256"], "train_n": len(f_train), "test_n": len(f_test),
           "class_counts_train": torch.bincount(train_set.labels, minlength=10).tolist()}  # fmt: skip
    perm = torch.randperm(len(f_train), generator=torch.Generator().manual_seed(0))
    for label, feats, logits in ((f"{n} real train images (random)", f_train[perm[:n]], logits_train[perm[:n]]),
                                 (f"{len(f_test)} real test images", f_test, logits_test)):  # fmt: skip
        kid, kid_std, _ = fidelity.kid(feats, f_train)
        p, r = fidelity.precision_recall(feats, f_train[perm[n : 2 * n]] if len(feats) == n else f_train[: len(feats)])
        hist = torch.bincount(logits.argmax(1), minlength=10).double()
        out[label] = {"fid": fidelity.fid(feats, f_train), "kid": kid, "kid_std": kid_std,
                      "precision": p, "recall": r, "max_class_share": float(hist.max() / hist.sum())}  # fmt: skip
        print(json.dumps({label: out[label]}), flush=True)
    return out


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        xs_img = [s["nimg"] / 1000 for s in r["snapshots"]]
        xs_min = [s["train_seconds"] / 60 for s in r["snapshots"]]
        ys = [s["score"]["fid"] for s in r["snapshots"]]
        label = f"{r['arm']} ({r['img_per_s']:.0f} img/s)"
        ax1.plot(xs_img, ys, "o-", label=label)
        ax2.plot(xs_min, ys, "o-", label=label)
    for ax, xl in ((ax1, "images seen (thousands)"), (ax2, "training minutes")):
        ax.set_xlabel(xl)
        ax.set_ylabel("domain FID (cifar10 extractor) vs 50k train")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    ax1.set_xscale("log")
    fig.suptitle("CIFAR-10 on this CPU: FID against images seen and against time")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="*", default=[], help="PRESET or NAME=PRESET:key=value,...")
    parser.add_argument("--minutes", type=float, default=10, help="training budget per arm (the last mark)")
    parser.add_argument("--marks", nargs="*", type=float, help="snapshot times in minutes (default: 10%%, 25%%, 50%%, 100%%)")
    parser.add_argument("--n", type=int, default=10000, help="generated images for the final score")
    parser.add_argument("--n-curve", type=int, default=5000, help="generated images for the earlier marks")
    parser.add_argument("--floors", action="store_true", help="score real images on the yardstick")
    parser.add_argument("--keep", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/cifar_budget", help="results folder (default %(default)s)")
    args = parser.parse_args()
    OUT = Path(args.out)
    if not os.environ.get("GANFORGE_DATA"):
        raise SystemExit("set GANFORGE_DATA to a folder holding cifar10/ (all 50,000 training images)")
    OUT.mkdir(parents=True, exist_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    meta = {"date": str(date.today()), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "uptime_before": load}  # fmt: skip
    if args.floors:
        (OUT / "floors.json").write_text(json.dumps({**meta, **floors(args.n)}, indent=1))
    if not args.arms:
        return
    marks = args.marks or [args.minutes * f for f in (0.1, 0.25, 0.5, 1.0)]
    runs_dir = Path(args.keep or tempfile.mkdtemp())
    trained = [train_arm(spec, marks, runs_dir, args.device) for spec in args.arms]  # one arm at a time, training only
    meta["uptime_after_training"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for r in trained:
        for k, snap in enumerate(r["snapshots"]):
            final = k == len(r["snapshots"]) - 1
            snap["score"] = score(snap["checkpoint"], args.n if final else args.n_curve, final, args.device)
        (OUT / f"{r['arm']}.json").write_text(json.dumps({**meta, **r}, indent=1, default=str))
        last = r["snapshots"][-1]["score"]
        print(json.dumps({"arm": r["arm"], "img_per_s": round(r["img_per_s"], 1),
                          **{k: round(last[k], 4) for k in ("fid", "kid", "precision", "recall")},
                          "max_class_share": round(max(last["class_histogram"]), 3)}), flush=True)  # fmt: skip
    plot(trained, OUT / "cifar_budget.png")
    print("| arm | img/s | images seen | FID (10k vs 50k) | KID | precision | recall | classes | largest class |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in trained:
        s = r["snapshots"][-1]
        sc = s["score"]
        hist = np.array(sc["class_histogram"])
        print(f"| {r['arm']} | {r['img_per_s']:.0f} | {s['nimg']:,} | {sc['fid']:.3f} | {sc['kid']:.4f} ± {sc['kid_std']:.4f} | "
              f"{sc['precision']:.3f} | {sc['recall']:.3f} | {int((hist > 0.01).sum())} | {100 * hist.max():.1f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
