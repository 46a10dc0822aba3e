"""`ganforge eval` of a translation run: its test split translated, then scored against the targets.

Paired runs (pix2pix): MAE, PSNR, SSIM of each output against its own target; the domain FID of the
outputs against the real test targets (beside it the FID of real training images against the same
targets: the floor a perfect translator reaches at this sample count); the domain classifier's
accuracy on the outputs (pix2pix's FCN-score analogue), on the real targets and on the inputs; and
for colour targets the colourfulness of outputs and targets. Unpaired runs (CycleGAN, a2b): the
domain FID of the translated domain-A test images against domain B's test images (and its floor);
the classifier's accuracy on the outputs (does the digit keep its label?); label preservation
(PixelDA's protocol, metrics.translation.label_preservation). Every row carries the protocol.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from ganforge.data import ImageDataset, convert_channels, first
from ganforge.metrics import fidelity
from ganforge.metrics import translation as tm
from ganforge.metrics.features import (
    DOMAIN_EXTRACTORS,
    EXTRACTOR_FOR_TARGETS,
    extract,
    load_domain_extractor,
)
from ganforge.sample import TrainedGenerator

# translated source training images the label-preservation classifier learns from (at most: a run with
# data.limit uses the images it trained on)
LABEL_TRAIN_N = 30_000  # all of mnist2mnistm's domain A


def pick_target_extractor(extractor: str, dataset: str, channels: int) -> Optional[str]:
    """The domain extractor that judges a translation dataset's outputs (None: none fits)."""
    from ganforge.metrics.evaluate import EvalError

    if extractor == "auto":
        return EXTRACTOR_FOR_TARGETS.get(dataset)
    if extractor not in DOMAIN_EXTRACTORS:
        raise EvalError(f"--extractor {extractor}: a translation run is judged by a domain extractor "
                        f"({', '.join(DOMAIN_EXTRACTORS)}) or auto.")  # fmt: skip
    if DOMAIN_EXTRACTORS[extractor].channels != channels:
        raise EvalError(f"--extractor {extractor} reads {DOMAIN_EXTRACTORS[extractor].channels}-channel images; "
                        f"this run's outputs have {channels}.")  # fmt: skip
    return extractor


def evaluate_translation(gen: TrainedGenerator, n: int, extractor: str, seed: int,
                         versions: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """The report (protocol, results) of a translation run on the first `n` test images."""
    start = time.perf_counter()
    dataset = gen.config["data"]["name"]
    test = gen.dataset("test", n)
    ext_name = pick_target_extractor(extractor, dataset, gen.channels_of("a2b")[1])
    ext = load_domain_extractor(ext_name) if ext_name is not None else None
    sources = test.inputs
    outputs = gen.translate(sources)
    targets = test.images  # paired: each output's own target; unpaired: domain B's test images
    # the training split, loaded once: as many real targets as test targets for the FID's floor, and the
    # label-preservation classifier's source images
    label_n = _label_train_n(gen) if gen.unpaired and len(test.class_names) > 1 else 0
    train = gen.dataset("train", max(len(targets), label_n))
    protocol = {
        "task": "unpaired translation a2b" if gen.unpaired else "paired translation",
        "n_generated": len(outputs),
        "reference": {"dataset": dataset, "split": "test", "n": len(targets)},
        **(ext.describe() if ext is not None else {"extractor": "none", "weights_sha256": "-"}),
        "checkpoint": str(gen.path),
        "versions": versions,
    }
    row = lambda metric, value, **extra: {"metric": metric, "value": value, **extra, **protocol}  # noqa: E731
    results = []
    if not gen.unpaired:
        results += [row(m, getattr(tm, m)(outputs, targets), definition=tm.PROTOCOL[m]) for m in ("mae", "psnr", "ssim")]
    if ext is not None:
        results += _domain_rows(gen, ext, ext_name, outputs, targets, sources, test, train.images[: len(targets)], row)
    if targets.shape[1] == 3 and not gen.unpaired:
        real, made = tm.colourfulness(targets), tm.colourfulness(outputs)
        results.append(row("colourfulness", made, real_value=real, ratio=made / real if real else float("nan"),
                           definition=tm.PROTOCOL["colourfulness"]))  # fmt: skip
    if label_n:
        results.append(_label_preservation(gen, test, first(train, label_n), seed, row))
    return {"protocol": protocol, "results": results, "seconds": time.perf_counter() - start}


def _domain_rows(gen, ext, ext_name, outputs, targets, sources, test, train_targets, row) -> list[dict[str, Any]]:
    """FID of the outputs against the real targets (and its floor: `train_targets`, as many real training
    targets), and the classifier's accuracy."""
    out_f, out_logits = extract(ext, outputs)
    tgt_f, tgt_logits = extract(ext, targets)
    floor = fidelity.fid(extract(ext, train_targets)[0], tgt_f)
    rows = [row("fid", fidelity.fid(out_f, tgt_f), floor=floor,
                floor_is=f"FID of {len(train_targets)} real training targets against the same test targets")]  # fmt: skip
    labels = test.input_labels if gen.unpaired else test.labels
    if labels is not None and len(test.class_names) > 1:
        wide = ext.spec.channels
        src_logits = extract(ext, convert_channels(sources, wide))[1]
        rows.append(row("class_accuracy", tm.class_accuracy(out_logits, labels),
                        on_targets=tm.class_accuracy(tgt_logits, test.labels),
                        on_inputs=tm.class_accuracy(src_logits, labels),
                        definition=tm.PROTOCOL["class_accuracy"] + f"; extractor {ext_name}"))  # fmt: skip
    return rows


def _label_train_n(gen: TrainedGenerator) -> int:
    limit = gen.config["data"].get("limit")
    return min(LABEL_TRAIN_N, limit or LABEL_TRAIN_N)


def _label_preservation(gen: TrainedGenerator, test: ImageDataset, train: ImageDataset, seed: int,
                        row) -> dict[str, Any]:  # fmt: skip
    out = tm.label_preservation(gen.translate, train.inputs, train.input_labels, test.images, test.labels,
                                train.images, train.labels, seed=seed)  # fmt: skip
    value = out.pop("adapted")
    return row("label_preservation", value, **out, definition=tm.PROTOCOL["label_preservation"])


def format_rows(report: dict[str, Any]) -> list[str]:
    """The table lines of a translation report (after format_table's header)."""
    lines = []
    for r in report["results"]:
        m, note = r["metric"], ""
        if m == "fid":
            note = f"floor {r['floor']:.4g} ({r['floor_is']})"
        elif m == "class_accuracy":
            note = f"real targets {r['on_targets']:.4f}, inputs {r['on_inputs']:.4f}"
        elif m == "colourfulness":
            note = f"real {r['real_value']:.4g} (ratio {r['ratio']:.3f})"
        elif m == "label_preservation":
            note = (f"source only {r['source_only']:.4f}" + (f", target only {r['target_only']:.4f}" if "target_only" in r
                    else "") + f"; {r['train_n']} translated train / {r['test_n']} real target test images")  # fmt: skip
        elif m in ("mae", "psnr", "ssim"):
            note = {"mae": "lower is better", "psnr": "dB, higher is better", "ssim": "higher is better"}[m]
        lines.append(f"  {m:<22}{r['value']:>12.5g}  {note}")
    return lines


def write_report(report: dict[str, Any], out_path: Path) -> None:
    import json

    from ganforge.checkpoint import atomic_write_bytes

    atomic_write_bytes(out_path, json.dumps(report, indent=2, default=float).encode())
    report["path"] = str(out_path)

