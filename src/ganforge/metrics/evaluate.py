"""`ganforge eval`: generate samples, extract features, compute metrics, report each with its protocol.

Reference features are cached on disk, keyed by dataset, split, extractor (and its weights hash)
and sample count, so a second evaluation against the same reference only extracts the samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ganforge.checkpoint import atomic_write_bytes
from ganforge.config import MAX_SEED
from ganforge.data import (
    DATASETS,
    DatasetError,
    ImageDataset,
    cache_dir,
    first,
    load_dataset,
    to_uint8,
)
from ganforge.metrics import fidelity, memorization, modes
from ganforge.metrics.features import (
    DOMAIN_EXTRACTORS,
    EXTRACTOR_FOR_DATASET,
    extract,
    load_domain_extractor,
    register_with_torch_fidelity,
)
from ganforge.metrics.inception import load_inception
from ganforge.sample import TrainedGenerator, load, save_grid

register_with_torch_fidelity()  # the domain extractors become torch-fidelity's "ganforge-<name>" too


class EvalError(ValueError):
    """A bad evaluation request (unknown metric, reference, extractor); the message lists the choices."""


@dataclass
class MetricInputs:
    """What the metrics of one evaluation share, made once by `evaluate` before any metric runs."""

    gen: TrainedGenerator
    path: str | Path  # the run folder or checkpoint as given (memorization writes its PNG next to it)
    run_data: dict[str, Any]  # the run's config["data"]
    ext: Any  # the feature extractor: uint8 images -> (features, logits)
    ext_name: str
    n: int  # generated samples
    n_ref: int  # reference images
    ref_set: ImageDataset
    protocol: dict[str, Any]  # carried by every result
    seed: int
    cas_per_class: int
    # None unless some requested metric has features=True (below); generated images only with images=True
    ref_feats: Optional[dict[str, torch.Tensor]] = None  # {"features": [n_ref, D], "logits": [n_ref, K]}
    gen_f: Optional[torch.Tensor] = None  # [n, D] float64
    gen_logits: Optional[torch.Tensor] = None  # [n, K] float64
    gen_images: Optional[torch.Tensor] = None  # [n, C, H, W] uint8

    def row(self, metric: str, value: float, **extra: Any) -> dict[str, Any]:
        """One result of the report: the metric, its value, its own fields, then the protocol."""
        return {"metric": metric, "value": value, **extra, **self.protocol}


@dataclass(frozen=True)
class MetricSpec:
    compute: Callable[[MetricInputs], list[dict[str, Any]]]  # the shared inputs -> the report's rows
    default: bool  # in `ganforge eval`'s default list
    conditional: bool  # for class-conditional generators only (`compare` adds it by default, n/a elsewhere)
    features: bool  # reads the shared generated and reference features
    images: bool  # reads the generated images too (uint8)


# name -> spec, in registration order: the order of `--metrics`' help and of the default lists
METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str, default: bool = True, conditional: bool = False, features: bool = True, images: bool = False
) -> Callable:
    """Register the decorated function as metric `name` (what `--metrics NAME` asks for)."""

    def wrap(fn: Callable[[MetricInputs], list[dict[str, Any]]]):
        METRICS[name] = MetricSpec(fn, default, conditional, features, images)
        return fn

    return wrap


def is_valid_metric(name: str) -> bool:
    return name in METRICS


def default_metrics(conditional: bool = False) -> list[str]:
    """The metrics computed when none are named; with `conditional`, also the ones for class-conditional
    generators only (`compare`'s default: it reports those as n/a for the other runs instead of failing)."""
    return [name for name, spec in METRICS.items() if spec.default or (conditional and spec.conditional)]


def check_metrics(names: list[str]) -> None:
    bad = [m for m in names if not is_valid_metric(m)]
    if bad:
        raise EvalError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}.")


def parse_metrics(text: Optional[str]) -> list[str]:
    """`--metrics fid,kid`: the names, checked (None or empty: the default list)."""
    if not text:
        return default_metrics()
    names = [m.strip() for m in text.split(",") if m.strip()]
    check_metrics(names)
    return names


def pick_extractor(name: str, dataset: str) -> str:
    if name == "auto":
        return EXTRACTOR_FOR_DATASET.get(dataset, "inception")
    if name != "inception" and name not in DOMAIN_EXTRACTORS:
        raise EvalError(
            f"unknown extractor '{name}'; choose auto, inception or {', '.join(DOMAIN_EXTRACTORS)}."
        )
    return name


def domain_note(ext_name: str, dataset: str) -> Optional[str]:
    """A warning when domain extractor `ext_name` was not trained on the run's `dataset`: its features then
    describe images outside the domain it knows, and its numbers compare with nothing. None when it was
    (and for Inception, the general-purpose extractor)."""
    if ext_name == "inception" or EXTRACTOR_FOR_DATASET.get(dataset) == ext_name:
        return None
    own = EXTRACTOR_FOR_DATASET.get(dataset)
    return (f"the {ext_name} extractor was trained on {DOMAIN_EXTRACTORS[ext_name].dataset}, but this run's dataset "
            f"is {dataset}" + (f" (whose extractor is {own})" if own else "") + ": its numbers measure images "
            "outside the extractor's domain and compare with no published figure; use --extractor auto "
            f"({own or 'inception'}) to compare.")  # fmt: skip


def parse_ref(ref: Optional[str], run_data: dict[str, Any]) -> tuple[str, str]:
    """`DATASET:SPLIT` (default: the run's dataset, its test split if it has one, else train)."""
    if ref:
        dataset, _, split = ref.partition(":")
        split = split or "test"
    else:
        dataset = run_data["name"]
        split = "test" if dataset in DATASETS else "train"
    if split not in ("train", "test"):
        raise EvalError(f"--ref: split must be train or test, got '{split}'.")
    return dataset, split


def load_reference(dataset: str, split: str, run_data: dict[str, Any]) -> ImageDataset:
    root = run_data.get("root") if dataset == run_data["name"] else None
    return load_dataset(
        dataset, root=root, split=split, resolution=run_data["resolution"], channels=run_data["channels"],
        download=run_data.get("download", True),
    )  # fmt: skip


def reference_count(n_ref: Optional[int | str], n: int, available: int, name: str) -> int:
    """How many reference images `n_ref` asks for (see `evaluate`), checked against what `name` holds."""
    if n_ref is None:
        return min(n, available)
    if n_ref == "all":
        return available
    if isinstance(n_ref, str):
        if not n_ref.isdigit():
            raise EvalError(f"--n-ref must be a whole number or 'all', got '{n_ref}'.")
        n_ref = int(n_ref)
    if n_ref < 2:
        raise EvalError(f"--n-ref must be at least 2, got {n_ref}.")
    if n_ref > available:
        raise EvalError(f"--n-ref {n_ref}: {name} holds {available} images; use at most {available}, or 'all'.")
    return n_ref


def _cached_features(key: str, compute) -> dict[str, torch.Tensor]:
    path = cache_dir() / "stats" / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass  # a damaged cache entry is recomputed
    out = compute()
    buffer = io.BytesIO()
    torch.save(out, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return out


def _stats_key(dataset: str, split: str, ext_name: str, weights_sha256: str, n: str | int) -> str:
    """Cache key of a reference's features: dataset, split, extractor and its weights, sample count."""
    name = dataset.replace(":", "_").replace("/", "_")
    return f"{name}-{split}-{ext_name}-{weights_sha256[:12]}-n{n}"


def _progress(total: int, what: str) -> Any:
    """A progress bar (images/s and time left) on a terminal for work over `total` images; None elsewhere
    (logs and tests stay clean) or for work too small to watch."""
    if total < 2000 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"ganforge: {what}", unit="img", unit_scale=True, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0, leave=False)  # fmt: skip


@torch.no_grad()
def generated_features(
    G: torch.nn.Module, z: torch.Tensor, extractor, device: torch.device, batch: int = 500,
    keep_images: bool = False, c: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:  # fmt: skip
    """G's images for latents z [n, z_dim] (and labels c [n] for a conditional G), made in batches in
    eval mode (G's mode is restored after) and extracted; returns (features, logits, uint8 images or None)."""
    was_training = G.training
    G.eval()
    feats, logits, images = [], [], []
    bar = _progress(len(z), "sampling + features")
    for start in range(0, len(z), batch):
        c_b = None if c is None else c[start : start + batch].to(device)
        img = to_uint8(G(z[start : start + batch].to(device), c_b).float().cpu())
        f, lg = extractor(img)
        feats.append(f.double())
        logits.append(lg.double())
        if keep_images:
            images.append(img)
        if bar is not None:
            bar.update(len(img))
    if bar is not None:
        bar.close()
    G.train(was_training)
    return torch.cat(feats), torch.cat(logits), (torch.cat(images) if keep_images else None)


def evaluate(
    path: str | Path,
    metrics: Optional[list[str]] = None,
    n: Optional[int] = None,
    ref: Optional[str] = None,
    n_ref: Optional[int | str] = None,
    extractor: str = "auto",
    seed: int = 0,
    inception_weights: Optional[str] = None,
    out: Optional[str | Path] = None,
    device: str = "cpu",
    cas_per_class: int = 1000,
) -> dict[str, Any]:
    """Evaluate a run folder or checkpoint; writes eval.json (next to the run, or `out`) and returns it.

    `n`: generated samples; None: DEFAULT_N, or the paper's count for PacGAN's benchmarks (PAPER_N).
    `n_ref`: real reference images, the reference split's first; None: as many as generated (or all
    the split holds, if fewer); "all": the whole split (the literature's CIFAR-10 protocol: 10k or 50k
    generated against the 50k training images).
    `cas_per_class`: generated (and real) training images per class for the CAS classifiers."""
    import torch_fidelity

    from ganforge import __version__

    start_time = time.perf_counter()
    if n is not None and n < 2:
        raise EvalError(f"--n must be at least 2, got {n}.")
    if not 0 <= seed <= MAX_SEED:
        raise EvalError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed}.")
    metrics = list(metrics) if metrics else default_metrics()
    check_metrics(metrics)
    gen = load(path, device=device)
    run_data = gen.config["data"]
    if n is None and run_data["name"] not in MODE_BENCHMARKS:
        n = DEFAULT_N
    if gen.translation:  # its own metrics, on its test split (metrics.translation_eval)
        from ganforge.metrics.translation_eval import evaluate_translation, write_report

        versions = {"ganforge": __version__, "torch": torch.__version__, "scikit-image": _skimage_version()}
        report = evaluate_translation(gen, n, extractor, seed, versions)
        write_report(report, Path(out) if out else _default_out(path))
        return report
    if run_data["name"] in MODE_BENCHMARKS:
        report = mode_benchmark(gen, run_data["name"], n, seed)
        report["seconds"] = time.perf_counter() - start_time
        out_path = Path(out) if out else _default_out(path)
        atomic_write_bytes(out_path, json.dumps(report, indent=2, default=float).encode())
        report["path"] = str(out_path)
        return report
    if "cas" in metrics:
        from ganforge.metrics.cas import NOT_APPLICABLE

        if gen.num_classes is None:
            raise EvalError(f"metric 'cas': {gen.path} is an unconditional generator. {NOT_APPLICABLE}")
        if run_data["name"] not in DATASETS or cas_per_class < 1:
            raise EvalError("metric 'cas' needs a named dataset with a test split (a folder has none) and "
                            f"--cas-per-class of at least 1 (got {cas_per_class}).")  # fmt: skip
    ref_dataset, ref_split = parse_ref(ref, run_data)
    ext_name = pick_extractor(extractor, run_data["name"])
    if ext_name == "inception":
        ext = load_inception(inception_weights)
    else:
        ext = load_domain_extractor(ext_name)
    if ext_name == "inception" and "modes" in metrics:
        raise EvalError(
            "metric 'modes' needs a domain extractor (its classes); use --extractor mnist|fashion-mnist|cifar10."
        )
    ext_info = ext.describe()
    note = domain_note(ext_name, run_data["name"])
    if note:
        print(f"ganforge: warning: {note}", file=sys.stderr)

    ref_set = load_reference(ref_dataset, ref_split, run_data)
    n_ref = reference_count(n_ref, n, len(ref_set), f"{ref_dataset}:{ref_split}")
    key = _stats_key(ref_dataset, ref_split, ext_name, ext_info["weights_sha256"], n_ref)
    needs_features = any(METRICS[metric].features for metric in metrics)  # CAS makes its own samples
    ref_feats = gen_f = gen_logits = gen_images = None
    if needs_features:
        ref_feats = _cached_features(
            key, lambda: dict(zip(("features", "logits"), extract(ext, ref_set.images[:n_ref])))
        )
        z_gen = torch.Generator().manual_seed(seed)  # drawn batch by batch, as the published figures were
        z = torch.cat(
            [torch.randn(min(500, n - s), gen.z_dim, generator=z_gen) for s in range(0, n, 500)]
        )
        gen_f, gen_logits, gen_images = generated_features(
            gen.G, z, ext, gen.device, keep_images=any(METRICS[metric].images for metric in metrics),
            c=gen.labels(n),
        )

    versions = {
        "ganforge": __version__,
        "torch_fidelity": torch_fidelity.__version__,
        "torch": torch.__version__,
    }
    protocol = {
        "n_generated": n,
        "sample_seed": seed,
        "reference": {"dataset": ref_dataset, "split": ref_split, "n": n_ref},
        **ext_info,
        "resize": "none"
        if ext_name != "inception"
        else "bilinear to 299x299 (TF1-compatible), grayscale repeated to RGB",
        "checkpoint": str(gen.path),
        "versions": versions,
        **({"extractor_domain_warning": note} if note else {}),
    }
    inputs = MetricInputs(
        gen=gen, path=path, run_data=run_data, ext=ext, ext_name=ext_name, n=n, n_ref=n_ref, ref_set=ref_set,
        protocol=protocol, seed=seed, cas_per_class=cas_per_class, ref_feats=ref_feats, gen_f=gen_f,
        gen_logits=gen_logits, gen_images=gen_images,
    )  # fmt: skip
    results = [row for metric in metrics for row in METRICS[metric].compute(inputs)]
    if needs_features:
        _add_real_vs_real(inputs, results, metrics, ref_dataset, ref_split)
    report = {"protocol": protocol, "results": results, "seconds": time.perf_counter() - start_time}
    out_path = Path(out) if out else _default_out(path)
    atomic_write_bytes(out_path, json.dumps(report, indent=2, default=float).encode())
    report["path"] = str(out_path)
    return report


# The metrics, in the order `--metrics` lists them. Each returns its rows of the report.


@register_metric("fid")
def _fid(x: MetricInputs) -> list[dict[str, Any]]:
    return [x.row("fid", fidelity.fid(x.gen_f, x.ref_feats["features"]))]


@register_metric("kid")
def _kid(x: MetricInputs) -> list[dict[str, Any]]:
    if min(x.n, x.n_ref) < 2048:
        ref = x.protocol["reference"]
        print(f"ganforge: note: KID from {x.n} generated and {x.n_ref} reference images ({ref['dataset']}:"
              f"{ref['split']}, which holds {len(x.ref_set)}): fewer than 2,048 is noisy, and its subset size is "
              f"clamped to {min(x.n, x.n_ref)}. Compare only KIDs with the same subset size.", file=sys.stderr)  # fmt: skip
    size = min(fidelity.KID_DEFAULT_SUBSET, x.n, x.n_ref)
    mean, std, size = fidelity.kid(x.gen_f, x.ref_feats["features"], subset_size=size)
    return [x.row("kid", mean, std=std, subset_size=size, subsets=100)]


@register_metric("is")
def _inception_score(x: MetricInputs) -> list[dict[str, Any]]:
    mean, std = fidelity.inception_score(x.gen_logits)
    return [x.row("is", mean, std=std, splits=10, max_value=x.gen_logits.shape[1])]


@register_metric("pr")
def _precision_recall(x: MetricInputs) -> list[dict[str, Any]]:
    precision, recall = fidelity.precision_recall(x.gen_f, x.ref_feats["features"], k=3)
    return [x.row("precision", precision, k=3), x.row("recall", recall, k=3)]


@register_metric("modes")
def _modes(x: MetricInputs) -> list[dict[str, Any]]:
    real_counts = np.bincount(x.ref_set.labels[: x.n_ref].numpy(), minlength=x.gen_logits.shape[1])
    m = modes.class_modes(x.gen_logits, real_counts)
    return [
        x.row("classes_covered", m["classes_covered"], n_classes=m["n_classes"], histogram=m["histogram"]),
        x.row("class_kl_to_real", m["kl_to_real"]),
        x.row("confident_fraction", m["confident_fraction"], threshold=0.9),
    ]


@register_metric("sharpness", images=True)
def _sharpness(x: MetricInputs) -> list[dict[str, Any]]:
    from ganforge.metrics.sharpness import sharpness_ratio

    return [x.row("sharpness_ratio", sharpness_ratio(x.gen_images, x.ref_set.images[: x.n_ref]), ideal=1.0,
                  measure="variance of the Laplacian, generated / real")]  # fmt: skip


@register_metric("memorization", default=False, images=True)
def _memorization_metric(x: MetricInputs) -> list[dict[str, Any]]:
    return _memorization(x.gen_f, x.gen_images, x.ext, x.ext_name, x.run_data, x.protocol, x.path)


@register_metric("cas", default=False, conditional=True, features=False)  # it makes its own samples
def _cas_metric(x: MetricInputs) -> list[dict[str, Any]]:
    return [_cas(x.gen, x.run_data, x.cas_per_class, x.seed, x.protocol)]


MODE_BENCHMARKS = ("ring8", "grid25", "stacked-mnist")
# PacGAN's sample counts (Lin et al. 2018, sec. 5): its numbers move with n (real Stacked MNIST scores KL
# 0.228 at 2,500 samples, 0.058 at 10,000, 0.024 at 26,000), so another count is not comparable with them
PAPER_N = {"ring8": 2500, "grid25": 2500, "stacked-mnist": 26000}
DEFAULT_N = 10000
PIXEL_SHIFT = 2  # memorization: a copy moved by up to this many pixels is still found


def mode_benchmark(gen, dataset: str, n: int, seed: int) -> dict[str, Any]:
    """PacGAN's mode-collapse protocols for its benchmark datasets (Lin et al. 2018, sec. 5):
    2D mixtures (modes with a high-quality sample, % high quality, reverse KL; 2,500 samples in the
    paper) and Stacked MNIST (each channel classified by the MNIST domain extractor: modes of 1000
    and KL to uniform; 26,000 samples in the paper)."""
    from ganforge import __version__

    paper_n = PAPER_N[dataset]
    n = paper_n if n is None else n
    samples = gen.sample(n, seed=seed)
    protocol: dict[str, Any] = {"n_generated": n, "paper_n": paper_n, "sample_seed": seed,
                                "checkpoint": str(gen.path), "benchmark": f"PacGAN {dataset}",
                                "versions": {"ganforge": __version__, "torch": torch.__version__}}  # fmt: skip
    if n != paper_n:
        protocol["n_warning"] = (f"{n:,} samples, not PacGAN's {paper_n:,}: mode counts and KL depend on the "
                                 f"sample count, so these numbers are not comparable with the paper's (--n {paper_n})")  # fmt: skip
        print(f"ganforge: warning: {protocol['n_warning']}", file=sys.stderr)
    if dataset in ("ring8", "grid25"):
        m = modes.mixture_metrics(samples.numpy(), dataset)
        protocol["high_quality"] = "within 3 std of a mixture centre"
        results = [
            {"metric": "modes_covered", "value": m["modes_covered"], "n_modes": m["n_modes"]},
            {"metric": "high_quality_pct", "value": m["high_quality_pct"]},
            {"metric": "reverse_kl", "value": m["reverse_kl"]},
        ]
    else:
        ext = load_domain_extractor("mnist")
        info = ext.describe()
        protocol.update(extractor="mnist, per channel", weights_sha256=info["weights_sha256"])
        channel_logits = [extract(ext, samples[:, k : k + 1])[1] for k in range(3)]
        m = modes.stacked_modes(channel_logits)
        results = [
            {"metric": "modes_covered", "value": m["modes_covered"], "n_modes": 1000},
            {"metric": "kl_to_uniform", "value": m["kl_to_uniform"]},
        ]
    return {"protocol": protocol, "results": [{**r, **protocol} for r in results]}


def _cas(gen, run_data: dict[str, Any], per_class: int, seed: int, protocol: dict[str, Any]) -> dict[str, Any]:
    """CAS of a conditional generator against its dataset's real test split (see metrics/cas.py)."""
    from ganforge.metrics.cas import classification_accuracy_score

    train_set = load_reference(run_data["name"], "train", run_data)
    test_set = load_reference(run_data["name"], "test", run_data)
    try:
        out = classification_accuracy_score(
            lambda c: gen.sample(len(c), seed=seed + 1, classes=c),
            train_set.images, train_set.labels, test_set.images, test_set.labels,
            num_classes=gen.num_classes, per_class=per_class, seed=seed,
        )  # fmt: skip
    except ValueError as e:
        raise EvalError(f"metric 'cas': {e}") from None
    value = out.pop("cas")
    # CAS has its own protocol: its sample count and the test split replace the FID reference
    cas_protocol = {**protocol, "n_generated": out["train_n"],
                    "reference": {"dataset": run_data["name"], "split": "test", "n": out["test_n"]}}  # fmt: skip
    return {"metric": "cas", "value": value, **out, **cas_protocol}


def _default_out(path: str | Path) -> Path:
    p = Path(path)
    run_dir = p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return run_dir / "eval.json"


def _memorization(
    gen_f, gen_images, ext, ext_name, run_data, protocol, path
) -> list[dict[str, Any]]:
    """Generated->train vs held-out->train nearest-neighbour distances, in pixels (instance level: the
    copy detector) and in the extractor's features (class level), against the images the run trained
    on (its split, cut to its data.limit); and a PNG of the closest pairs in pixels."""
    name, split, limit = run_data["name"], run_data.get("split", "train"), run_data.get("limit")
    if name not in DATASETS:
        raise EvalError("memorization needs a held-out split; folder datasets have none.")
    train_set = first(load_reference(name, split, run_data), limit)
    held = load_reference(name, "test" if split == "train" else "train", run_data)
    held_images = held.images[: len(gen_images)]
    pixels = memorization.pixel_memorization(gen_images, held_images, train_set.images, PIXEL_SHIFT)
    train_f = _cached_features(
        _stats_key(name, split, ext_name, protocol["weights_sha256"], "all" if limit is None else limit),
        lambda: {"features": extract(ext, train_set.images)[0]},
    )["features"]
    feats = memorization.memorization(gen_f, extract(ext, held_images)[0], train_f)
    order = pixels["gen_distances"].argsort()[:16]
    nearest = pixels["gen_nearest"]
    pairs = torch.stack([torch.stack([gen_images[i], train_set.images[nearest[i]]]) for i in order.tolist()])
    png = _default_out(path).with_name("memorization_pairs.png")
    save_grid(pairs.flatten(0, 1), png, nrow=8)  # each generated image followed by its nearest training image
    extra = {"train_reference": {"dataset": name, "split": split, "n": len(train_set), "limit": limit},
             "heldout_n": len(held_images), "pairs_png": str(png)}  # fmt: skip
    pixel_space = {"space": f"pixels (RMS, 0..1), best of shifts up to {PIXEL_SHIFT} px"}
    feature_space = {"space": f"{ext_name} features (class level: a copy and another drawing of its class are alike)"}
    return [
        {"metric": "memorization_ratio", "value": pixels["ratio"], **pixel_space, **extra, **protocol},
        {"metric": "near_copy_fraction", "value": pixels["near_copy_fraction"], "copy_threshold": pixels["copy_threshold"], **pixel_space, **extra, **protocol},
        {"metric": "memorization_ratio_features", "value": feats["ratio"], **feature_space, **extra, **protocol},
        {"metric": "near_copy_fraction_features", "value": feats["near_copy_fraction"], "copy_threshold": feats["copy_threshold"], **feature_space, **extra, **protocol},
    ]  # fmt: skip


def _skimage_version() -> str:
    import skimage

    return skimage.__version__


# metric -> True when higher is better, False when lower, None when closest to 1 (the tables' arrows)
HIGHER_IS_BETTER = {
    "fid": False, "kid": False, "is": True, "precision": True, "recall": True, "classes_covered": True,
    "class_kl_to_real": False, "confident_fraction": True, "cas": True, "sharpness_ratio": None,
    "memorization_ratio": True, "near_copy_fraction": False, "memorization_ratio_features": True,
    "near_copy_fraction_features": False,
}  # fmt: skip


def arrow(metric: str) -> str:
    higher = HIGHER_IS_BETTER.get(metric, "")
    return "" if higher == "" else "→1" if higher is None else "↑" if higher else "↓"


def _add_real_vs_real(x: MetricInputs, results: list[dict[str, Any]], metrics: list[str], dataset: str,
                      split: str) -> None:  # fmt: skip
    """What a good value is with this extractor: each feature metric's value for real images of the other
    split (as many as generated, where it holds them) against the same reference, set as `real_vs_real`
    on the rows; the images' source goes into the protocol. Skipped for a dataset without another split."""
    other = "train" if split == "test" else "test"
    try:
        real_set = load_reference(dataset, other, x.run_data)
    except DatasetError:
        return
    n_real = min(x.n, len(real_set))
    real = _cached_features(_stats_key(dataset, other, x.ext_name, x.protocol["weights_sha256"], n_real),
                            lambda: dict(zip(("features", "logits"), extract(x.ext, real_set.images[:n_real]))))  # fmt: skip
    as_real = dataclasses.replace(x, gen_f=real["features"], gen_logits=real["logits"], n=n_real, gen_images=None)
    values = {}
    with contextlib.redirect_stderr(io.StringIO()):  # (the KID note again, for the real images)
        for metric in metrics:
            spec = METRICS[metric]
            if spec.features and not spec.images:
                values.update({row["metric"]: row["value"] for row in spec.compute(as_real)})
    x.protocol["real_vs_real"] = {"dataset": dataset, "split": other, "n": n_real}
    for row in results:
        if row["metric"] in values:
            row["real_vs_real"] = values[row["metric"]]


def format_table(report: dict[str, Any]) -> str:
    p = report["protocol"]
    if "translation" in p.get("task", ""):
        from ganforge.metrics.translation_eval import format_rows

        lines = [f"ganforge eval: {p['checkpoint']}",
                 f"  {p['task']}: {p['n_generated']} test inputs of {p['reference']['dataset']}, extractor "
                 f"{p['extractor']} (sha256 {p['weights_sha256'][:12]})", "", f"  {'metric':<22}{'value':>12}  note"]  # fmt: skip
        lines += format_rows(report)
        lines += ["", f"  written: {report['path']}  ({report['seconds']:.1f} s)"]
        return "\n".join(lines)
    if "benchmark" in p:
        lines = [f"ganforge eval: {p['checkpoint']}",
                 f"  {p['benchmark']} protocol, {p['n_generated']:,} samples (the paper's: {p['paper_n']:,})", ""]
        lines += [f"  {r['metric']:<22}{r['value']:>12.5g}" + (f"  of {r['n_modes']}" if "n_modes" in r else "")
                  for r in report["results"]]  # fmt: skip
        lines += [""] + ([f"  warning: {p['n_warning']}"] if "n_warning" in p else [])
        lines += [f"  written: {report['path']}  ({report['seconds']:.1f} s)"]
        return "\n".join(lines)
    rr = p.get("real_vs_real")
    lines = [
        f"ganforge eval: {p['checkpoint']}",
        f"  {p['n_generated']} generated vs {p['reference']['n']} real ({p['reference']['dataset']}:{p['reference']['split']}), "
        f"extractor {p['extractor']} (sha256 {p['weights_sha256'][:12]}), torch-fidelity {p['versions']['torch_fidelity']}",
        *([f"  real vs real: {rr['n']} real {rr['dataset']}:{rr['split']} images against the same reference, "
           "scored as the generated ones (what a good value is with this extractor)"] if rr else []),
        "",
        f"  {'metric':<22}{'':<3}{'value':>12}{'real vs real':>14}  note",
    ]
    for r in report["results"]:
        note = ""
        if "std" in r:
            note = f"± {r['std']:.4g}"
        if r["metric"] == "classes_covered":
            note = f"of {r['n_classes']}"
        if r["metric"] == "is":
            note += f" (max {r['max_value']})"
        if r["metric"] == "sharpness_ratio":
            note = "1 = as sharp as the real images; < 1 blurrier, > 1 noisier"
        if r["metric"] == "cas":
            note = (f"real-data classifier {r['real_accuracy']:.4f}; trained on {r['train_n']} generated / "
                    f"{r['real_train_n']} real images, tested on {r['test_n']} real test images")  # fmt: skip
        if r["metric"] == "kid" and r.get("std", 0) > abs(r["value"]):
            note += " (the error bar exceeds the value: indistinguishable from 0)"
        real = f"{r['real_vs_real']:>14.5g}" if "real_vs_real" in r else f"{'':>14}"
        lines.append(f"  {r['metric']:<22}{arrow(r['metric']):<3}{r['value']:>12.5g}{real}  {note}".rstrip())
    lines.append("")
    if "extractor_domain_warning" in p:
        lines.append(f"  warning: {p['extractor_domain_warning']}")
    lines.append(f"  written: {report['path']}  ({report['seconds']:.1f} s)")
    return "\n".join(lines)
