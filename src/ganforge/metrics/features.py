"""Feature extractors for metrics: domain classifiers that ship with ganforge, and the TF-FID Inception.

Domain extractors are small classifiers trained by ganforge itself (`ganforge train-classifier`),
shipped inside the package and SHA-256 checked on load. Each gives two feature layers: `features`
(the penultimate activations, for FID/KID/precision-recall/memorisation) and `logits` (for IS and
mode counting). They work offline; their numbers are comparable only with numbers computed with
the same extractor, whose name and weights hash every report carries.

Where the weights come from (`find_weights`): the user's own, rebuilt by `ganforge train-classifier`
into the user cache (~/.cache/ganforge/extractors/NAME.pt, or under $XDG_CACHE_HOME), when present;
else the shipped ones. The checksums: shipped weights must match the pinned SHA-256; weights in the
cache must match the SHA-256 that train-classifier recorded beside them (NAME.pt.sha256) when it wrote
them (or the pinned one); a file given by path is loaded as given, and its hash goes into the report.
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganforge.data import convert_channels, to_float

WEIGHTS_DIR = Path(__file__).parent / "weights"


class ExtractorError(RuntimeError):
    """An extractor's weights are missing, damaged or unavailable; the message says how to get them."""


# ----------------------------------------------------------------------------------------------
# Architectures.


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DigitNet(nn.Module):
    """28x28 grayscale classifier: 4 conv layers (32, 32, 64, 64) + 128-d features + logits."""

    feature_dim = 128

    def __init__(self, channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),  # [N, 32, 14, 14]
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),  # [N, 64, 7, 7]
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, self.feature_dim), nn.BatchNorm1d(self.feature_dim), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float [N, C, 28, 28] in [-1, 1] -> (features [N, 128], logits [N, K])."""
        feats = self.body(x)
        return feats, self.head(self.dropout(feats))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class CifarResNet(nn.Module):
    """A ResNet-20-style classifier for 32x32 colour images (He et al. 2016, CIFAR variant)."""

    feature_dim = 128

    def __init__(self, channels: int = 3, n_classes: int = 10, width: int = 32, blocks: int = 2):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(channels, width)]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # [N, 4w]
        self.body = nn.Sequential(*layers)
        self.feature_dim = 4 * width
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return feats, self.head(feats)


# ----------------------------------------------------------------------------------------------
# Registry of domain extractors: what they read, and the shipped weights' checksum.


@dataclass
class DomainSpec:
    build: Callable[[], nn.Module]
    dataset: str  # the ganforge dataset it was trained on
    channels: int
    resolution: int
    sha256: Optional[str]  # of the shipped weights file; None until trained
    test_accuracy: Optional[
        float
    ]  # measured on the test images available here (see docs/benchmarks.md)


DOMAIN_EXTRACTORS: dict[str, DomainSpec] = {
    "mnist": DomainSpec(
        lambda: DigitNet(1),
        "mnist",
        1,
        28,
        "8f78118337ada6c783a6386a96431a2ea92842ebceab4b3f87fda6c0fd571972",
        0.9956,
    ),
    "fashion-mnist": DomainSpec(
        lambda: DigitNet(1),
        "fashion-mnist",
        1,
        28,
        "16f0ddf074aaf85a7f192e0e24fa957b1c9260324cf8dbfd9e91dec75a4af9bd",
        0.9393,
    ),
    "cifar10": DomainSpec(
        lambda: CifarResNet(3),
        "cifar10",
        3,
        32,
        # trained on all 50,000 training images (2026-12-07); the one before, on 20,000: 40bfdf7aa22cebd5..., 90.70 %
        "cc379b09d4c9adc299aec89ca1a19ac6bcaf94c224c1416284bc60439b1746fb",
        0.9090,
    ),
    # MNIST-M-style digits (mnist2mnistm's domain B): the judge of CycleGAN's MNIST -> MNIST-M outputs
    "mnistm": DomainSpec(
        lambda: DigitNet(3),
        "mnist2mnistm",
        3,
        28,
        "11f726c04335950b4a9460ecbb2d3def507ab5d80aba9c12392f86cb90acaa65",
        0.9920,
    ),
}
# Datasets whose samples a domain extractor can judge.
EXTRACTOR_FOR_DATASET = {
    "mnist": "mnist",
    "mnist-5k": "mnist",
    "fashion-mnist": "fashion-mnist",
    "cifar10": "cifar10",
}
# Translation datasets: the extractor of their target domain (domain B), which judges the outputs.
EXTRACTOR_FOR_TARGETS = {
    "edges2fashion": "fashion-mnist",
    "cifar10-colorize": "cifar10",
    "mnist2mnistm": "mnistm",
}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_path(name: str) -> Path:
    """The shipped weights of extractor `name`, inside the package."""
    return WEIGHTS_DIR / f"{name}.pt"


def user_weights_path(name: str) -> Path:
    """Where `ganforge train-classifier` writes extractor `name` by default: the user cache, not the
    package (which may be read-only, or, installed in editable mode, the clone's tracked files)."""
    from ganforge.data import cache_dir

    return cache_dir() / "extractors" / f"{name}.pt"


def recorded_sha256_path(path: Path) -> Path:
    """The SHA-256 train-classifier recorded for weights it wrote outside the package."""
    return path.with_name(path.name + ".sha256")


def find_weights(name: str) -> Path:
    """The weights `load_domain_extractor(name)` uses: the user's (user_weights_path) when present, else
    the shipped ones."""
    user = user_weights_path(name)
    return user if user.is_file() else weights_path(name)


_USER_WEIGHTS_SAID: set[str] = set()  # extractors whose user weights were announced in this process


class DomainExtractor(nn.Module):
    """A domain classifier used as a feature extractor: uint8 images in, (features, logits) out."""

    def __init__(self, name: str, net: nn.Module, spec: DomainSpec, weights_sha256: str):
        super().__init__()
        self.name = name
        self.net = net.eval().requires_grad_(False)
        self.spec = spec
        self.weights_sha256 = weights_sha256

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, C, H, W] -> (features [N, D], logits [N, K]); channels and size are adapted."""
        if images.dtype != torch.uint8:
            raise TypeError(f"extractor '{self.name}' expects uint8 images, got {images.dtype}")
        x = convert_channels(images, self.spec.channels)
        x = to_float(x)
        if x.shape[-1] != self.spec.resolution or x.shape[-2] != self.spec.resolution:
            x = F.interpolate(x, size=(self.spec.resolution,) * 2, mode="bilinear", antialias=True)
        return self.net(x)

    def describe(self) -> dict:
        return {"extractor": self.name, "weights_sha256": self.weights_sha256,
                "input": f"{self.spec.channels}x{self.spec.resolution}x{self.spec.resolution}"}  # fmt: skip


def load_domain_extractor(name: str, path: Optional[Path] = None) -> DomainExtractor:
    """Domain extractor `name` from the given weights, else the user's or the shipped ones (find_weights),
    checksum-verified."""
    if name not in DOMAIN_EXTRACTORS:
        raise ExtractorError(
            f"unknown extractor '{name}'; choose one of {', '.join(DOMAIN_EXTRACTORS)}, inception."
        )
    spec = DOMAIN_EXTRACTORS[name]
    given = path is not None
    path = Path(path) if given else find_weights(name)
    if not path.is_file():
        raise ExtractorError(
            f"weights of the '{name}' extractor not found at {path}; rebuild them with "
            f"'ganforge train-classifier {spec.dataset}'."
        )
    digest = file_sha256(path)
    if path == weights_path(name) and spec.sha256 is not None and digest != spec.sha256:
        raise ExtractorError(
            f"the '{name}' extractor weights at {path} fail their SHA-256 check (got {digest[:12]}..., "
            f"expected {spec.sha256[:12]}...); reinstall ganforge or rebuild them with "
            f"'ganforge train-classifier {spec.dataset}'."
        )
    if path == user_weights_path(name) and digest != spec.sha256:
        _check_user_weights(name, path, digest, announce=not given)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ExtractorError(
            f"cannot load extractor weights {path}: {type(e).__name__}: {e}"
        ) from None
    with torch.random.fork_rng(devices=[]):  # building the net must not move a training run's RNG
        net = spec.build()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return DomainExtractor(name, net, spec, digest)


def _check_user_weights(name: str, path: Path, digest: str, announce: bool) -> None:
    """The user's weights must be those train-classifier wrote (their recorded SHA-256). Used in place of
    the shipped ones, they are said (`announce`) once per process: their numbers compare only with
    numbers from the same weights."""
    spec = DOMAIN_EXTRACTORS[name]
    record = recorded_sha256_path(path)
    text = record.read_text().split() if record.is_file() else []
    recorded = text[0] if text else None
    if recorded != digest:
        why = (f"no SHA-256 was recorded for them ({record} is missing or empty)" if recorded is None
               else f"they fail the SHA-256 recorded when they were written (got {digest[:12]}..., "
                    f"recorded {recorded[:12]}...)")  # fmt: skip
        raise ExtractorError(
            f"the '{name}' extractor weights at {path} are not used: {why}. Rebuild them with "
            f"'ganforge train-classifier {spec.dataset}', delete {path} to use the shipped weights, or, "
            f"for weights you trust, write their SHA-256 into {record.name}."
        )
    if announce and name not in _USER_WEIGHTS_SAID:
        _USER_WEIGHTS_SAID.add(name)
        print(f"ganforge: note: the '{name}' extractor uses your weights {path} (sha256 {digest[:12]}...), not "
              "the shipped ones: its numbers compare only with numbers from the same weights (each report "
              "names them); delete the file to use the shipped weights.", file=sys.stderr)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Training a domain classifier (what `ganforge train-classifier` runs).


def train_domain_classifier(
    name: str,
    root: Optional[str] = None,
    epochs: Optional[int] = None,
    seed: int = 0,
    out: Optional[Path] = None,
    progress: bool = True,
) -> tuple[Path, float]:
    """Train extractor `name` on its dataset's train split; returns (weights path, test accuracy).

    Weights are saved as float16 (they stay under 3 MB); accuracy is measured after that rounding.
    `out` defaults to the user cache (user_weights_path), which load_domain_extractor then prefers to
    the shipped weights; outside the package their SHA-256 is recorded beside them (OUT.sha256).
    Rebuilding the shipped weights: out=weights_path(name), then pin the printed SHA-256 in
    DOMAIN_EXTRACTORS.
    """
    from ganforge.checkpoint import atomic_write_bytes
    from ganforge.data import load_dataset

    spec = DOMAIN_EXTRACTORS[name]
    train_set = load_dataset(spec.dataset, root=root, split="train")
    test_set = load_dataset(spec.dataset, root=root, split="test")
    # cifar10: 10 epochs of the 50,000 training images (the shipped weights; 30 epochs of 20,000 before)
    epochs = epochs or {"mnist": 4, "fashion-mnist": 12, "mnistm": 8, "cifar10": 10}.get(name, 30)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = spec.build()
    batch = 128
    steps = epochs * (len(train_set) // batch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    use_bf16 = torch.backends.mkldnn.is_available() and _cpu_has_bf16()
    images, labels = train_set.images, train_set.labels
    colour = spec.dataset == "cifar10"  # (not digits: a flipped digit is another digit or none)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=steps * batch,
            unit="img",
            unit_scale=True,
            desc=f"train-classifier {name}",
            file=sys.stderr,
        )
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(len(images) // batch):
            idx = order[i * batch : (i + 1) * batch]
            x = to_float(images[idx])
            if (
                colour
            ):  # standard CIFAR augmentation: random crop with 4-pixel padding, horizontal flip
                x = _augment(x, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                _, logits = net(x)
                loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(batch)
    if bar is not None:
        bar.close()
    net.eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out = Path(out) if out else user_weights_path(name)
    data = buffer.getvalue()
    if out.resolve() != weights_path(name).resolve():  # (the shipped ones are pinned in DOMAIN_EXTRACTORS)
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(recorded_sha256_path(out), f"{digest}  {out.name}\n".encode())  # sha256sum's format
    atomic_write_bytes(out, data)
    extractor = load_domain_extractor(name, out)
    accuracy = classifier_accuracy(extractor, test_set.images, test_set.labels)
    return out, accuracy


def _cpu_has_bf16() -> bool:
    if sys.platform != "linux":
        return False
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image random 32x32 crop of the 4-pixel reflect-padded image, and a random horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [N, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [N, 1, W]
    x = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [N, C, H, W]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def extract(
    extractor: nn.Module, images: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an extractor over uint8 images in batches -> (features [N, D], logits [N, K]) as float64."""
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        f, lg = extractor(images[start : start + batch_size])
        feats.append(f.double())
        logits.append(lg.double())
    return torch.cat(feats), torch.cat(logits)


def classifier_accuracy(extractor: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, logits = extract(extractor, images)
    return (logits.argmax(1) == labels).double().mean().item()


def register_with_torch_fidelity() -> list[str]:
    """Register each domain extractor with torch-fidelity as `ganforge-<name>`, so that
    `torch_fidelity.calculate_metrics(..., feature_extractor="ganforge-mnist")` uses it."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    registered = []
    for ext_name in DOMAIN_EXTRACTORS:
        tf_name = f"ganforge-{ext_name}"
        registered.append(tf_name)
        if tf_name in FEATURE_EXTRACTORS_REGISTRY:
            continue

        class _Registered(FeatureExtractorBase):
            _ext_name = ext_name

            def __init__(self, name, features_list, **kwargs):
                super().__init__(name, features_list)
                self.extractor = load_domain_extractor(self._ext_name)

            @staticmethod
            def get_provided_features_list():
                return ("features", "logits")

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return "logits" if metric == "isc" else "features"

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return None

            def forward(self, x):
                feats, logits = self.extractor(x)
                out = {"features": feats.double(), "logits": logits.double()}
                return tuple(out[f] for f in self.features_list)

        register_feature_extractor(tf_name, _Registered)
    return registered
