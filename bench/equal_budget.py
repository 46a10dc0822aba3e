"""Presets compared at an equal wall-clock budget: train each for the same seconds, evaluate all alike.

    python bench/equal_budget.py --seconds 600 --runs seed-mnist mnist-fast
    python bench/equal_budget.py --seconds 120 --device cuda --runs seed-cifar cifar10-sngan
    python bench/equal_budget.py --seconds 1500 --n 26000 \
        --runs "dcgan=stacked-mnist:reg.r1_gamma=0" stacked-mnist

A run is PRESET or NAME=PRESET:key=value,... (overrides as for --set). Each trains with
train.time_limit=SECONDS (the steps are set out of reach, unless the run sets train.steps: a learning-rate
schedule follows the steps), then `ganforge.evaluate` scores it with the
same protocol for all: the dataset's domain extractor (FID, KID, precision/recall, modes) against its
test split, or PacGAN's protocol for stacked-mnist/ring8/grid25. Prints a markdown table, writes
bench/results/equal_budget_<dataset>.json and a PNG with every run's sample grid side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from ganforge import build_config, evaluate, train
from ganforge.config import parse_overrides


def parse_run(spec: str) -> tuple[str, str, dict]:
    head, _, items = spec.partition(":")
    name, _, preset = head.rpartition("=")  # no "=": name is "" and the preset names the run
    overrides = parse_overrides([i for i in items.split(",") if i]) if items else {}
    return name or preset, preset, overrides


def side_by_side(grids: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(grids), figsize=(4.5 * len(grids), 4.8), squeeze=False)
    for ax, (name, path) in zip(axes[0], grids.items()):
        ax.imshow(Image.open(path), cmap="gray")
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="PRESET or NAME=PRESET:key=value,...")
    parser.add_argument("--seconds", type=float, default=600, help="training budget per run")
    parser.add_argument("--n", type=int, help="samples per evaluation (default: ganforge eval's, PacGAN's count for its benchmarks)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", help="override every run's data.name (e.g. mnist instead of auto)")
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--keep", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, grids = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = args.keep or tmp
        for spec in args.runs:
            name, preset, overrides = parse_run(spec)
            own = overrides.setdefault("train", {})
            own.update(time_limit=args.seconds, steps=own.get("steps", 10**9), epochs=None, device=args.device,
                       sample_every=10**9, checkpoint_every=10**9)  # fmt: skip
            overrides["run"] = {"runs_dir": runs_dir, "name": name}
            if args.data:
                overrides.setdefault("data", {})["name"] = args.data
            cfg = build_config(preset=preset, overrides=overrides)
            start = time.perf_counter()
            run = train(cfg, progress=False)
            seconds = time.perf_counter() - start
            end = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
            report = evaluate(run, n=args.n, device=args.device)
            values = {r["metric"]: r["value"] for r in report["results"]}
            grid = out_dir / f"equal_budget_{name}.png"
            grid.write_bytes((run / "samples.png").read_bytes())
            grids[name] = grid
            rows.append({"run": name, "preset": preset, "overrides": overrides, "dataset": cfg.data.name,
                         "steps": end["step"], "nimg": end["nimg"], "train_seconds": seconds,
                         "img_per_s": end["nimg"] / seconds, "metrics": values,
                         "protocol": report["protocol"]})  # fmt: skip
            print(json.dumps({"run": name, "steps": end["step"], **{k: round(v, 4) for k, v in values.items()}}),
                  flush=True)  # fmt: skip
    dataset = rows[0]["protocol"].get("reference", {}).get("dataset") or rows[0]["dataset"]
    keys = [k for k in rows[0]["metrics"]]
    lines = ["| run | steps | train s | images seen | img/s | " + " | ".join(keys) + " |",
             "|---|---|---|---|---|" + "---|" * len(keys)]  # fmt: skip
    for r in rows:  # train s: under the budget when the run's own train.steps ended it first
        lines.append(f"| {r['run']} | {r['steps']} | {r['train_seconds']:.0f} | {r['nimg']} | {r['img_per_s']:.0f} | "
                     + " | ".join(f"{r['metrics'][k]:.4g}" for k in keys) + " |")  # fmt: skip
    p = rows[0]["protocol"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    header = (f"{date.today()}, {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
              f"a budget of {args.seconds:g} s of training per run, {p['n_generated']} samples, "
              + (f"extractor {p['extractor']} vs {p['reference']['dataset']}:{p['reference']['split']} ({p['reference']['n']})"
                 if "reference" in p else p["benchmark"]))  # fmt: skip
    table = header + "\n\n" + "\n".join(lines)
    print("\n" + table)
    side_by_side(grids, out_dir / f"equal_budget_{dataset}.png")
    (out_dir / f"equal_budget_{dataset}.json").write_text(json.dumps({"rows": rows, "table": table}, indent=1, default=str))


if __name__ == "__main__":
    main()
