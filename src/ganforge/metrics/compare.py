"""`ganforge compare RUN_A RUN_B ...`: runs side by side under one evaluation protocol.

Every run is evaluated with the same sample count, reference split, extractor and seed (refused when
the runs were trained on different data, unless --ref names one reference for all), next to its
training cost (steps, images seen, wall time). Writes compare.md (the table), compare.json (every
number with its protocol) and compare.png (a sample grid per run, side by side).
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ganforge.checkpoint import atomic_write_bytes
from ganforge.data import DATASETS
from ganforge.metrics.evaluate import (
    HIGHER_IS_BETTER,
    MODE_BENCHMARKS,
    EvalError,
    default_metrics,
    evaluate,
)
from ganforge.models import MODELS
from ganforge.sample import load, make_grid

# metric -> row label; the table's rows, in this order (which way is better: evaluate.HIGHER_IS_BETTER)
LABELS = {
    "fid": "FID",
    "kid": "KID",
    "is": "IS",
    "precision": "precision (k=3)",
    "recall": "recall (k=3)",
    "classes_covered": "classes covered",
    "class_kl_to_real": "class KL to real",
    "confident_fraction": "confident (p >= 0.9)",
    "cas": "CAS",
    "sharpness_ratio": "sharpness (gen/real)",
    "memorization_ratio": "memorization ratio (pixels)",
    "near_copy_fraction": "near copies (pixels)",
    "memorization_ratio_features": "memorization ratio (features)",
    "near_copy_fraction_features": "near copies (features)",
}
ROWS = {metric: (label, HIGHER_IS_BETTER[metric]) for metric, label in LABELS.items()}
# eval's defaults and CAS: reported for the class-conditional runs, n/a for the others
DEFAULT_METRICS = tuple(default_metrics(conditional=True))


def _label(path: Path, taken: set[str]) -> str:
    p = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
    label, k = p.name or str(path), 2
    while label in taken:
        label, k = f"{p.name}-{k}", k + 1
    taken.add(label)
    return label


def compare(
    paths: list[str | Path],
    metrics: Optional[list[str]] = None,
    n: int = 10000,
    ref: Optional[str] = None,
    extractor: str = "auto",
    n_ref: Optional[int | str] = None,
    seed: int = 0,
    out_dir: str | Path = "compare",
    device: str = "cpu",
    cas_per_class: int = 1000,
) -> dict[str, Any]:
    """Evaluate every run under one protocol; write compare.md/.json/.png into `out_dir`; return the report."""
    if len(paths) < 2:
        raise EvalError(f"compare needs at least two runs, got {len(paths)}.")
    metrics = list(metrics or DEFAULT_METRICS)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"--out: '{out_dir}' is a file; compare writes a folder of results. Pick another --out.")
    gens, taken = [], set()
    for path in paths:
        gen = load(path, device=device)
        gens.append((_label(Path(path), taken), Path(path), gen))
    datasets = {g.config["data"]["name"] for _, _, g in gens}
    if len(datasets) > 1 and ref is None:
        raise EvalError(
            f"the runs were trained on different data ({', '.join(sorted(datasets))}); one protocol needs one "
            "reference: pass --ref DATASET:SPLIT, or compare runs of the same dataset."
        )
    benchmarks = sorted(datasets & set(MODE_BENCHMARKS))
    if benchmarks:
        raise EvalError(
            f"compare reports image metrics; {', '.join(benchmarks)} runs are scored with PacGAN's mode protocol "
            "instead: run `ganforge eval RUN` on each (bench/mixtures.py tabulates several)."
        )
    shapes = {(g.config["data"]["resolution"], g.config["data"]["channels"]) for _, _, g in gens}
    if len(shapes) > 1:
        raise EvalError(f"the runs make images of different sizes/channels {sorted(shapes)}; they cannot share "
                        "one feature extractor.")  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    print(f"ganforge compare: {len(gens)} runs, {n:,} generated samples each, metrics {','.join(metrics)}",
          file=sys.stderr)  # fmt: skip
    for i, (label, path, gen) in enumerate(gens, 1):
        print(f"ganforge compare: [{i}/{len(gens)}] evaluating {label} ...", file=sys.stderr)
        cas_ok = gen.num_classes is not None and gen.config["data"]["name"] in DATASETS
        run_metrics = [m for m in metrics if m != "cas" or cas_ok]
        report = evaluate(path, metrics=run_metrics, n=n, ref=ref, n_ref=n_ref, extractor=extractor, seed=seed,
                          out=out_dir / f"{label}.eval.json", device=device, cas_per_class=cas_per_class)  # fmt: skip
        model = gen.config["model"]
        runs.append({
            "label": label,
            "checkpoint": str(gen.path),
            "model": model["name"],
            "family": MODELS[model["name"]].family,
            "conditional": gen.num_classes is not None,
            "training": gen.training,
            "results": report["results"],
            "protocol": report["protocol"],
            "notes": ([] if cas_ok or "cas" not in metrics else
                      ["cas: n/a (unconditional generator)" if gen.num_classes is None
                       else "cas: n/a (an image folder has no test split to test on)"]),
        })  # fmt: skip
    protocols = {json.dumps({k: v for k, v in r["protocol"].items() if k not in ("checkpoint",)}, sort_keys=True,
                            default=str) for r in runs}  # fmt: skip
    if len(protocols) > 1:  # cannot happen with the checks above; a guard for future options
        raise EvalError("the runs ended up with different evaluation protocols; see the per-run eval.json files.")
    report = {"protocol": {k: v for k, v in runs[0]["protocol"].items() if k != "checkpoint"},
              "runs": runs, "metrics": metrics}  # fmt: skip
    table = format_table(report)
    png = out_dir / "compare.png"
    _grids_png(gens, report, png, seed)
    atomic_write_bytes(out_dir / "compare.md", (table + "\n").encode())
    report["seconds"] = time.perf_counter() - start
    atomic_write_bytes(out_dir / "compare.json", json.dumps(report, indent=2, default=float).encode())
    report.update(table=table, png=str(png), path=str(out_dir / "compare.json"))
    return report


def _value(run: dict[str, Any], metric: str) -> Optional[dict[str, Any]]:
    return next((r for r in run["results"] if r["metric"] == metric), None)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table: one column per run, rows of metrics (best value in bold), then the cost."""
    runs, p = report["runs"], report["protocol"]
    head = "| | " + " | ".join(r["label"] for r in runs) + " |"
    lines = [
        f"Protocol: {p['n_generated']} generated vs {p['reference']['n']} real "
        f"({p['reference']['dataset']}:{p['reference']['split']}), extractor {p['extractor']} "
        f"(sha256 {p['weights_sha256'][:12]}), sample seed {p['sample_seed']}, ganforge {p['versions']['ganforge']}, "
        f"torch-fidelity {p['versions']['torch_fidelity']}.",
        "",
        head,
        "|" + "---|" * (len(runs) + 1),
        "| model | " + " | ".join(f"{r['model']} ({r['family']}{', cond.' if r['conditional'] else ''})"
                                  for r in runs) + " |",  # fmt: skip
    ]
    for metric, (name, higher) in ROWS.items():
        cells = [_value(r, metric) for r in runs]
        if all(c is None for c in cells):
            continue
        values = [c["value"] for c in cells if c is not None]
        if higher is None:  # a ratio to the real data: closest to 1 is best
            best = min(values, key=lambda v: abs(v - 1.0))
        else:
            best = max(values) if higher else min(values)
        row = []
        for c in cells:
            if c is None:
                row.append("n/a")
                continue
            text = f"{c['value']:.4g}" + (f" ± {c['std']:.2g}" if "std" in c else "")
            if metric == "cas":
                text += f" (real {c['real_accuracy']:.3f})"
            row.append(f"**{text}**" if len(values) > 1 and c["value"] == best else text)
        arrow = "→1" if higher is None else "↑" if higher else "↓"
        lines.append(f"| {name} {arrow} | " + " | ".join(row) + " |")
    lines.append("| steps | " + " | ".join(str(r["training"].get("step", "n/a")) for r in runs) + " |")
    lines.append("| images seen | " + " | ".join(f"{r['training']['nimg']:,}" if "nimg" in r["training"] else "n/a"
                                               for r in runs) + " |")  # fmt: skip
    lines.append("| training wall time | " + " | ".join(_fmt_seconds(r["training"].get("train_seconds"))
                                                      for r in runs) + " |")  # fmt: skip
    notes = [f"{r['label']}: {note}" for r in runs for note in r["notes"]]
    if any(_value(r, "cas") for r in runs):
        cas = next(_value(r, "cas") for r in runs if _value(r, "cas"))
        notes.append(f"CAS: {cas['classifier']}, {cas['train_n']} generated training images ({cas['epochs']} "
                     f"epochs), tested on {cas['test_n']} real test images; 'real' = the same classifier trained "
                     f"on {cas['real_train_n']} real training images.")  # fmt: skip
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines)


def format_terminal(table: str) -> str:
    """compare.md's Markdown table as aligned plain-text columns for the terminal (bold as the cell
    between asterisks: `*x*`), the protocol line and notes as they are."""
    lines, rows = [], []

    def flush() -> None:
        if rows:
            widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
            lines.extend("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
            rows.clear()

    for line in table.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("**", "*") for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):  # (the Markdown header rule)
                rows.append(cells)
            continue
        flush()
        lines.append(line)
    flush()
    return "\n".join(lines)


def _grids_png(gens: list, report: dict[str, Any], path: Path, seed: int) -> None:
    """One sample grid per run (same latent seed), side by side, titled with the run and its FID: every
    grid has the same rows and columns, so all are drawn at one scale, and every title has two lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = {g.num_classes for _, _, g in gens}
    one = classes.pop() if len(classes) == 1 else None
    nrow = one if one and one <= 16 else 8  # one class per column where all runs share the classes
    fig, axes = plt.subplots(1, len(gens), figsize=(4 * len(gens), 4.4), squeeze=False)
    for ax, (label, _, gen), run in zip(axes[0], gens, report["runs"]):
        if gen.points:
            pts = gen.sample(1000, seed=seed).numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=2)
        else:
            grid = make_grid(gen.sample(nrow * 8, seed=seed), nrow=nrow)  # uint8 [H, W, C]
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        fid = _value(run, "fid")
        ax.set_title(f"{label}\n{run['model']}" + (f", FID {fid['value']:.3g}" if fid else ""), fontsize=9, loc="center")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
