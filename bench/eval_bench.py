"""Evaluation benchmark: the cost of `ganforge eval` on 10,000 samples, and whether the numbers move
the right way between an early and a late checkpoint of the quick-start run.

    GANFORGE_DATA=../shared/data python bench/eval_bench.py [--early 300] [--late 3000]

Trains the default MNIST recipe for --early steps, copies that checkpoint, resumes to --late steps,
then evaluates both with the default metric set and n = 10,000 (mnist extractor, MNIST test split as
reference). The first evaluation fills the reference cache; the timings of the later ones are with
the cache warm. Prints markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ganforge.config import build_config
from ganforge.metrics.evaluate import evaluate
from ganforge.train import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--early", type=int, default=300)
    parser.add_argument("--late", type=int, default=3000)
    parser.add_argument("--n", type=int, default=10000)
    args = parser.parse_args()
    if not os.environ.get("GANFORGE_DATA"):
        raise SystemExit("set GANFORGE_DATA to a folder holding mnist/")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # a cold reference cache
        cfg = build_config(overrides={"data": {"name": "mnist"}, "train": {"steps": args.early},
                                      "run": {"runs_dir": tmp, "name": "bench"}})  # fmt: skip
        run = train(cfg, progress=False)
        early = Path(tmp) / "early.pt"
        shutil.copy(run / "checkpoints" / "last.pt", early)
        train(resume=run, overrides={"train": {"steps": args.late}}, progress=False)
        late = run / "checkpoints" / "final.pt"
        rows, times = {}, []
        for label, ckpt in (("early", early), ("late", late), ("late (again)", late)):
            start = time.perf_counter()
            report = evaluate(ckpt, n=args.n, out=Path(tmp) / f"{label}.json")
            times.append((label, time.perf_counter() - start))
            rows[label] = {r["metric"]: r["value"] for r in report["results"]}
        p = report["protocol"]
    print(
        f"protocol: {p['n_generated']} generated vs {p['reference']['n']} {p['reference']['dataset']}:"
        f"{p['reference']['split']}, extractor {p['extractor']} ({p['weights_sha256'][:12]}), "
        f"torch-fidelity {p['versions']['torch_fidelity']}, torch {torch.__version__}, {os.cpu_count()} cores\n"
    )
    metrics = list(rows["early"])
    print(f"| metric | step {args.early} | step {args.late} | better |")
    print("|---|---|---|---|")
    lower_better = {"fid", "kid", "class_kl_to_real"}
    for m in metrics:
        a, b = rows["early"][m], rows["late"][m]
        ok = (b < a) if m in lower_better else (b > a) if b != a else True
        print(f"| {m} | {a:.4g} | {b:.4g} | {'yes' if ok else 'no'} |")
    print("\n| evaluation | seconds |\n|---|---|")
    for label, sec in times:
        print(f"| {label} | {sec:.1f} |")


if __name__ == "__main__":
    main()
