"""Generation from a trained generator, and writing images (grids, individual PNGs) to disk."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

from ganforge.checkpoint import WriteError, atomic_write_bytes, find_checkpoint, load_checkpoint
from ganforge.config import TRANSLATION_FAMILIES, from_dict
from ganforge.data import convert_channels, fit_note, resize_square, to_float, to_uint8
from ganforge.models import MODELS, build_models


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 image [H', W', C] with the images in rows of `nrow`."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = arr[i]
    return grid


# The formats a grid is written in, named by the file's extension: (Pillow's format, its save options).
# JPEG at quality 95 (Pillow's default 75 blurs small digits); WebP lossless, as PNG is.
GRID_FORMATS: dict[str, tuple[str, dict]] = {
    ".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}), ".bmp": ("BMP", {}), ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}),
}  # fmt: skip
# A scatter plot (2D point data) is drawn by matplotlib, which also writes vector formats.
PLOT_FORMATS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".pdf", ".svg")


class ImageFormatError(WriteError, ValueError):
    """A file name whose extension names no format ganforge writes images in; nothing was written."""


def image_format(path: str | Path, plot: bool = False) -> str:
    """The extension of `path` (lowercased) when ganforge writes images (`plot`: scatter plots) in that format;
    else ImageFormatError, before anything is computed or written."""
    suffix = Path(path).suffix.lower()
    formats = PLOT_FORMATS if plot else tuple(GRID_FORMATS)
    if suffix not in formats:
        named = f"'{suffix}' is not an image format ganforge writes" if suffix else "it has no extension"
        raise ImageFormatError(f"cannot write {path}: {named}; the extension picks the format, one of "
                               f"{', '.join(formats)} (e.g. {Path(path).with_suffix('.png').name}).")  # fmt: skip
    return suffix


def encode_image(array: np.ndarray, suffix: str = ".png") -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) -> the bytes of an image file in the format of `suffix` (GRID_FORMATS)."""
    from PIL import Image

    fmt, options = GRID_FORMATS[suffix]
    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG bytes."""
    return encode_image(array, ".png")


def save_grid(images: torch.Tensor, path: str | Path, nrow: Optional[int] = None) -> Path:
    """Write a grid of images (float in [-1, 1] or uint8, [N, C, H, W]) atomically, in the format its
    extension names (PNG, JPEG, WebP, ...: GRID_FORMATS; another extension raises ImageFormatError)."""
    suffix = image_format(path)
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    scale = max(1, 128 // images.shape[-1])  # small images are enlarged so the grid is legible
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    atomic_write_bytes(Path(path), encode_image(make_grid(images, nrow), suffix))
    return Path(path)


def save_scatter(
    points: torch.Tensor, path: str | Path, real: Optional[torch.Tensor] = None, title: str = "",
    label: str = "generated",
) -> Path:  # fmt: skip
    """Scatter plot of 2D points [N, 2] (generated in blue, real ones in grey when given), atomically, in the
    format its extension names (PLOT_FORMATS)."""
    suffix = image_format(path, plot=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    if real is not None:
        r = real.float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="real")
    p = points.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, c="tab:blue", label=label)
    ax.set_aspect("equal")
    ax.set_title(title or f"{len(p)} samples")
    # below the axes: inside, it hid a corner mode of grid25
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, markerscale=4, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=suffix[1:], dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


PAIR_COLUMNS = 16  # a translation grid: this many test pairs per group of input | output | target rows


def pair_rows(inputs: torch.Tensor, outputs: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Images for a grid of PAIR_COLUMNS columns: per group of pairs, a row of inputs, one of outputs and
    one of targets (when given); gray rows are shown in colour beside colour ones."""
    wide = max(t.shape[1] for t in (inputs, outputs, targets) if t is not None)
    shown, outputs, targets = (t if t is None or t.shape[1] == wide else t.expand(-1, wide, -1, -1)
                               for t in (inputs, outputs, targets))  # fmt: skip
    rows = []
    for start in range(0, len(outputs), PAIR_COLUMNS):
        part = slice(start, start + PAIR_COLUMNS)
        group = [shown[part], outputs[part]] + ([targets[part]] if targets is not None else [])
        width = len(outputs[part])
        pad = PAIR_COLUMNS - width if len(outputs) > PAIR_COLUMNS else 0  # a short last group: blank cells
        for row in group:
            rows.append(torch.cat([row, torch.zeros(pad, *row.shape[1:], dtype=row.dtype)]) if pad else row)
    return torch.cat(rows)


def write_pngs(images: torch.Tensor, folder: str | Path) -> list[Path]:
    """uint8 images [N, C, H, W] as folder/000000.png, 000001.png, ... (each written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, img in enumerate(images):
        path = folder / f"{i:06d}.png"
        atomic_write_bytes(path, encode_png(img.permute(1, 2, 0).numpy()))
        written.append(path)
    return written


def _write_translations(gen: TrainedGenerator, n: int, out: Optional[str | Path],
                        individual: Optional[str | Path], direction: str = "a2b") -> list[Path]:  # fmt: skip
    """Paired: input | output | target rows. Unpaired: input | output | the output translated back."""
    inputs, targets, _ = gen.test_pairs(n, direction)
    outputs = gen.translate(inputs, direction=direction)
    if targets is None:
        targets = gen.translate(outputs, direction="b2a" if direction == "a2b" else "a2b")
    written = []
    if out is not None:
        written.append(save_grid(pair_rows(inputs, outputs, targets), out, min(len(outputs), PAIR_COLUMNS)))
    if individual is not None:
        written += write_pngs(outputs, individual)
    return written


def read_images(paths: list[str | Path], channels: int) -> list[tuple[Path, torch.Tensor]]:
    """Image files, and the image files of folders (sorted), as uint8 [channels, H, W] at their own size.
    An unreadable file raises ValueError naming it and why."""
    from ganforge.data import IMAGE_EXTENSIONS, open_image, pil_to_array, why_unreadable

    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"'{given}' holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
            files += found
        elif given.is_file():
            files.append(given)
        else:
            raise ValueError(f"'{given}' is neither an image file nor a folder.")
    images = []
    for path in files:
        try:
            arr = pil_to_array(open_image(path), channels)
        except Exception as e:
            raise ValueError(f"cannot read '{path}': {why_unreadable(path, e)}.") from None
        images.append((path, torch.from_numpy(arr.copy()).permute(2, 0, 1)))
    return images


def translate_files(gen: TrainedGenerator, paths: list[str | Path], out_dir: str | Path,
                    direction: str = "a2b") -> list[tuple[Path, Path, str]]:  # fmt: skip
    """Translate image files (or folders of them) with a translation model into out_dir/<name>.png;
    returns (source, written, what was done to fit the model's input) per image."""
    out_dir = Path(out_dir)
    done = []
    for path, image in read_images(paths, gen.channels_of(direction)[0]):
        fitted = fit_note(*image.shape[1:], gen.resolution)
        y = gen.translate(image[None], direction=direction)[0]
        target = out_dir / f"{path.stem}.png"
        atomic_write_bytes(target, encode_png(y.permute(1, 2, 0).numpy()))
        done.append((path, target, fitted))
    return done


class TrainedGenerator:
    """A generator loaded from a checkpoint, ready to sample. Build it with `ganforge.load(path)`."""

    def __init__(self, G: nn.Module, z_dim: int, config: dict, device: torch.device, path: Path,
                 training: Optional[dict] = None):  # fmt: skip
        self.G = G.eval()
        # what training cost: step, nimg (images seen), train_seconds (wall time), where recorded
        self.training = training or {}
        self.z_dim = z_dim
        self.config = config
        self.device = device
        self.path = path
        model = config["model"]
        self.num_classes: Optional[int] = model["num_classes"] if model.get("conditional") else None
        self.points = MODELS[model["name"]].resolution == 0  # a point model (2D data), not images
        # an image-to-image translation model (pix2pix, CycleGAN): G(x) -> y, no latents; see translate()
        self.translation = MODELS[model["name"]].family in TRANSLATION_FAMILIES
        # CycleGAN: two directions, a2b (domain A -> B, the default) and b2a
        self.unpaired = MODELS[model["name"]].family == "cyclegan"
        self.resolution = MODELS[model["name"]].resolution
        self.in_channels: Optional[int] = model.get("in_channels")

    def _need_latents(self) -> None:
        if self.translation:
            raise ValueError(f"{self.config['model']['name']} translates images and has no latents to sample "
                             "from; use translate(images) (the CLI: `ganforge translate RUN IMAGE...`).")  # fmt: skip

    def channels_of(self, direction: str = "a2b") -> tuple[int, int]:
        """(input channels, output channels) of a translation in `direction` (b2a: CycleGAN's way back)."""
        a, b = self.in_channels or 1, self.config["model"]["channels"]
        if direction not in ("a2b", "b2a") or (direction == "b2a" and not self.unpaired):
            raise ValueError(f"direction: {self.config['model']['name']} translates "
                             + ("a2b or b2a" if self.unpaired else "a2b only (a paired model has one direction)")
                             + f", not '{direction}'.")  # fmt: skip
        return (a, b) if direction == "a2b" else (b, a)

    def adapt(self, images: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        """Images uint8 [N, C, H, W] (any size, 1 or 3 channels) as this translation model's input: its
        channels (RGB -> gray by luma), resized and centre-cropped to its resolution, as training did."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"translate() takes uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}.")
        return resize_square(convert_channels(images, self.channels_of(direction)[0]), self.resolution)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, batch_size: int = 256, output: Literal["uint8", "float"] = "uint8",
                  direction: Literal["a2b", "b2a"] = "a2b") -> torch.Tensor:  # fmt: skip
        """A translation model's outputs [N, C, H, W] (uint8, or float in [-1, 1]) for input images
        uint8 [N, C_in, H, W] (other sizes and channel counts are adapted: see `adapt`). `direction`:
        a CycleGAN's b2a runs its second generator (domain B -> A)."""
        if not self.translation:
            raise ValueError(f"{self.config['model']['name']} is a generator of latents, not a translation "
                             "model; use sample(n).")  # fmt: skip
        x = self.adapt(images, direction)
        G = (self.G.G_ab if direction == "a2b" else self.G.G_ba) if self.unpaired else self.G
        out = []
        for start in range(0, len(x), batch_size):
            y = G(to_float(x[start : start + batch_size]).to(self.device)).float().cpu()
            out.append(to_uint8(y) if output == "uint8" else y)
        return torch.cat(out) if out else torch.zeros(0, self.channels_of(direction)[1], self.resolution,
                                                      self.resolution, dtype=torch.uint8)  # fmt: skip

    def dataset(self, split: str, limit: Optional[int] = None):
        """A split of the run's dataset (its first `limit` images), loaded as the run trained on it."""
        from ganforge.data import load_dataset

        d = self.config["data"]
        return load_dataset(d["name"], root=d.get("root"), split=split, resolution=d.get("resolution"),
                            channels=d.get("channels"), download=d.get("download", True), limit=limit)  # fmt: skip

    def test_pairs(self, n: int, direction: str = "a2b") -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """The first `n` (inputs, targets, labels) of the run's dataset's test split, uint8 as trained on.
        Unpaired (CycleGAN): the test images of the direction's source domain, no targets (None)."""
        self.channels_of(direction)
        ds = self.dataset("test", n)
        if not ds.unpaired:
            return ds.inputs, ds.images, ds.labels
        return (ds.inputs, None, ds.input_labels) if direction == "a2b" else (ds.images, None, ds.labels)

    def labels(self, n: int, classes: Optional[int | list[int] | torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Class labels [n] for a conditional G: `classes` repeated, or all classes in turn; None otherwise."""
        if self.num_classes is None:
            if classes is not None:
                raise ValueError(
                    "this generator is unconditional: it cannot make a requested class. Train one with "
                    "--set model.conditional=true."
                )
            return None
        if classes is None:
            return torch.arange(n) % self.num_classes
        c = torch.as_tensor(classes, dtype=torch.long).view(-1)
        if c.numel() == 0 or int(c.min()) < 0 or int(c.max()) >= self.num_classes:
            raise ValueError(
                f"class {c.tolist()} is out of range: this generator makes classes 0..{self.num_classes - 1}."
            )
        return c.repeat((n + c.numel() - 1) // c.numel())[:n]

    def latents(self, n: int, seed: Optional[int] = None, truncation: Optional[float] = None) -> torch.Tensor:
        """Latents [n, z_dim] ~ N(0, I), drawn on the CPU. With `truncation` t, BigGAN's truncation
        trick (Brock et al. 2019, sec. 3.1): every entry with |z| > t is redrawn until none is left,
        trading variety for fidelity (smaller t: more typical, less varied images). With latent codes
        (model.latent_codes) or clusters (model.clusters) the first coordinate, which picks the code or the
        cluster, is left untruncated: truncating it would drop the outer codes or clusters altogether."""
        self._need_latents()
        if truncation is not None and not truncation > 0:
            raise ValueError(f"truncation must be a positive threshold (e.g. 0.5 to 2), got {truncation}.")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if truncation is None:
            return torch.randn(n, self.z_dim, generator=gen)
        # the truncated normal by its inverse CDF: the same law as redrawing entries beyond the
        # threshold, in one pass whatever the threshold (a redraw loop never ends for a tiny one)
        t = torch.tensor(float(truncation), dtype=torch.float64)
        low = torch.special.ndtr(-t)
        u = torch.rand(n, self.z_dim, generator=gen, dtype=torch.float64)
        z = torch.special.ndtri(low + u * (1 - 2 * low)).clamp(-t, t).float()
        model = self.config["model"]
        if model.get("latent_codes", 0) > 1 or model.get("clusters", 0) > 1:  # z_0 picks the code or cluster:
            z[:, 0] = torch.special.ndtri(u[:, 0]).float()  # untruncated, or the outer codes (modes) vanish
        return z

    @torch.no_grad()
    def generate(
        self,
        z: torch.Tensor,
        c: Optional[torch.Tensor] = None,
        batch_size: int = 256,
        output: Literal["uint8", "float"] = "uint8",
    ) -> torch.Tensor:
        """Images [N, C, H, W] (uint8, or float in [-1, 1]) for latents `z` [N, z_dim] and, for a
        conditional G, labels `c` [N]."""
        out = []
        for start in range(0, len(z), batch_size):
            c_b = None if c is None else c[start : start + batch_size].to(self.device)
            img = self.G(z[start : start + batch_size].to(self.device), c_b).float().cpu()
            out.append(to_uint8(img) if output == "uint8" and not self.points else img)
        return torch.cat(out)

    def interpolate(
        self,
        seed_a: int,
        seed_b: int,
        frames: int = 8,
        classes: Optional[int | list[int]] = None,
        truncation: Optional[float] = None,
    ) -> torch.Tensor:
        """`frames` uint8 images [frames, C, H, W] on the great circle from seed_a's latent to
        seed_b's (slerp: Gaussian latents keep their typical norm along the way, unlike a straight
        line, whose midpoint is atypically short; White 2016). A conditional G keeps one class along
        the strip: `classes`, else class 0."""
        if frames < 2:
            raise ValueError(f"an interpolation needs at least 2 frames, got {frames}.")
        a, b = self.latents(1, seed_a, truncation)[0], self.latents(1, seed_b, truncation)[0]
        omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
        t = torch.linspace(0, 1, frames).view(-1, 1)
        if omega.abs() < 1e-6:  # the same direction: slerp degenerates to the straight line
            z = (1 - t) * a + t * b
        else:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
        if self.num_classes is not None and classes is None:
            classes = 0
        return self.generate(z, self.labels(frames, classes))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: Optional[int] = None,
        output: Literal["uint8", "float"] = "uint8",
        batch_size: int = 256,
        classes: Optional[int | list[int] | torch.Tensor] = None,
        truncation: Optional[float] = None,
    ) -> torch.Tensor:
        """`n` images [n, C, H, W]: uint8 in [0, 255], or float in [-1, 1] with output="float".

        Conditional generators make `classes` (an int or a list, repeated), or every class in turn.
        Point generators (2D data) always return float points [n, D]. The same seed gives the same
        samples on any device (latents are drawn on the CPU). `truncation`: see `latents`.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        return self.generate(self.latents(n, seed, truncation), self.labels(n, classes), batch_size, output)


def export_safetensors(path: str | Path, out: str | Path) -> Path:
    """Write a run's generator (G_ema when kept) as one .safetensors file: its weights, and its
    resolved config as JSON in the file's metadata. No pickle: safe to share and to load anywhere."""
    import json

    from safetensors.torch import save

    ckpt_path = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    weights = {k: v.contiguous() for k, v in ckpt.get("G_ema", ckpt["G"]).items()}
    from ganforge import __version__

    metadata = {"format": "ganforge-generator", "ganforge_version": __version__,
                "config": json.dumps(ckpt["config"]), "step": str(ckpt["step"]),
                "source": str(ckpt_path), "weights": "G_ema" if "G_ema" in ckpt else "G"}  # fmt: skip
    out = Path(out)
    atomic_write_bytes(out, save(weights, metadata=metadata))
    return out


class _TranslatorForExport(nn.Module):
    """A translation G with a fixed signature for tracing: (x) -> images; `G` is CycleGAN's G_ab or G_ba."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.G(x)


class _GeneratorForExport(nn.Module):
    """G with a fixed signature for tracing: (z) or (z, c)."""

    def __init__(self, G: nn.Module, conditional: bool):
        super().__init__()
        self.G, self.conditional = G, conditional

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.G(z, c if self.conditional else None)


def export_onnx(path: str | Path, out: str | Path, opset: int = 18, direction: str = "a2b") -> Path:
    """Write a run's generator (G_ema when kept) as an ONNX model for use outside PyTorch.

    Inputs: `z` float32 [N, z_dim] (and `c` int64 [N] for class-conditional models); output `images`
    float32 [N, C, H, W] in [-1, 1] ([N, 2] points for 2D models); N is dynamic. A translation model
    takes `x` float32 [N, C_in, H, W] in [-1, 1] instead (CycleGAN: the generator of `direction`). The
    resolved config is stored as JSON in the model's metadata ("ganforge_config"). Needs the onnx and
    onnxscript packages.
    """
    import json

    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter is built on it)
    except ImportError:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install 'ganforge[onnx]'") from None
    import warnings

    from ganforge import __version__

    gen = load(path)
    conditional = gen.num_classes is not None
    if gen.translation:
        c_in = gen.channels_of(direction)[0]
        G = (gen.G.G_ab if direction == "a2b" else gen.G.G_ba) if gen.unpaired else gen.G
        module = _TranslatorForExport(G.cpu().eval()).eval()
        args = (torch.zeros(2, c_in, gen.resolution, gen.resolution),)
        names = ["x"]
    else:
        module = _GeneratorForExport(gen.G.cpu().eval(), conditional).eval()
        z = torch.randn(2, gen.z_dim, generator=torch.Generator().manual_seed(0))
        args = (z, torch.zeros(2, dtype=torch.long)) if conditional else (z,)
        names = ["z", "c"] if conditional else ["z"]
    out = Path(out)
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names
        tmp_file = Path(tmp) / "g.onnx"
        torch.onnx.export(module, args, str(tmp_file), input_names=names, output_names=["images"],
                          dynamic_shapes={n: {0: batch} for n in names}, opset_version=opset, dynamo=True,
                          verbose=False)  # fmt: skip
        model = onnx.load(str(tmp_file))
    for key, value in {"ganforge_config": json.dumps(gen.config), "ganforge_version": __version__,
                       "source": str(gen.path), **({"direction": direction} if gen.translation else {})}.items():  # fmt: skip
        model.metadata_props.add(key=key, value=value)
    atomic_write_bytes(out, model.SerializeToString())
    return out


MAX_SAFETENSORS_HEADER = 16 << 20  # a ganforge export's header (its tensor table and config) is a few KB


def _check_safetensors_header(path: Path) -> None:
    """A .safetensors file opens with the length of its JSON header (8 bytes, little-endian): one that claims more
    than the file holds, or more than an export ever needs, is refused before anything is parsed."""
    from ganforge.checkpoint import CheckpointError

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"'{path}' is not a readable .safetensors file: {size} bytes, too short for its header.")
    claimed = int.from_bytes(head, "little")
    if claimed > size - 8 or claimed > MAX_SAFETENSORS_HEADER:
        why = (f"more than a ganforge export's header ever needs ({MAX_SAFETENSORS_HEADER:,})"
               if claimed > MAX_SAFETENSORS_HEADER else f"the file holds only {size - 8:,} bytes after it")  # fmt: skip
        raise CheckpointError(f"'{path}' is not a readable .safetensors file: its header claims {claimed:,} bytes, {why}; "
                              "it is damaged or not a safetensors file. Export it again with `ganforge export RUN_DIR`.")  # fmt: skip


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from ganforge.checkpoint import CheckpointError

    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        weights = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"'{path}' is not a readable .safetensors file ({type(e).__name__}: {e}).") from None
    if metadata.get("format") != "ganforge-generator" or "config" not in metadata:
        raise CheckpointError(
            f"'{path}' is a .safetensors file but not a ganforge generator export (no ganforge config in "
            "its metadata); make one with `ganforge export RUN_DIR`."
        )
    try:
        config = json.loads(metadata["config"])
    except ValueError as e:
        raise CheckpointError(f"'{path}': the ganforge config in its metadata is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path}': the ganforge config in its metadata is not a mapping.")
    return weights, config


def load(path: str | Path, device: str = "cpu") -> TrainedGenerator:
    """Load the generator of a run folder (its newest checkpoint: last.pt, else final.pt), a checkpoint file, or
    a `ganforge export` .safetensors file."""
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        weights, config = _load_safetensors(Path(path))
        ckpt_path, ckpt = Path(path), {"config": config, "G": weights}
    else:
        ckpt_path = find_checkpoint(path)
        ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    m = cfg.model
    nc = (m.num_classes or 0) if m.conditional else 0
    G, _ = build_models(m.name, m.z_dim, m.channels, m.g_channels, m.d_channels, m.dropout, num_classes=nc,
                        mbstd=m.mbstd, latent_codes=m.latent_codes, clusters=m.clusters,
                        in_channels=m.in_channels or 0)  # fmt: skip
    G.load_state_dict(ckpt.get("G_ema", ckpt["G"]))  # the EMA generator when the run kept one
    dev = torch.device(device)
    training = {k: ckpt[k] for k in ("step", "nimg", "train_seconds") if k in ckpt}
    return TrainedGenerator(G.to(dev), m.z_dim, ckpt["config"], dev, ckpt_path, training)


def write_samples(
    gen: TrainedGenerator,
    n: int,
    out: Optional[str | Path],
    seed: Optional[int] = None,
    individual: Optional[str | Path] = None,
    nrow: Optional[int] = None,
    classes: Optional[int | list[int]] = None,
    truncation: Optional[float] = None,
    direction: str = "a2b",
) -> list[Path]:
    """Sample `n` images; write a grid to `out` and/or one PNG per image into `individual`.

    For 2D point generators `out` is a scatter plot and `individual` a file of points (.npy). For a
    translation model, the first `n` test inputs: `out` is a grid of input | output | target rows
    (PAIR_COLUMNS per row; a CycleGAN's third row is the output translated back), `individual` the
    outputs; `direction` (a2b, b2a) picks a CycleGAN's generator. The extension of `out` picks its format
    (a grid: GRID_FORMATS; a scatter plot: PLOT_FORMATS), checked before anything is generated."""
    if out is not None:
        image_format(out, plot=gen.points)
    if gen.translation:
        return _write_translations(gen, n, out, individual, direction)
    images = gen.sample(n, seed=seed, classes=classes, truncation=truncation)
    written = []
    if gen.points:
        if out is not None:
            written.append(save_scatter(images, out))
        if individual is not None:
            buffer = io.BytesIO()
            np.save(buffer, images.numpy())
            path = Path(individual)
            path = path if path.suffix == ".npy" else path.with_suffix(".npy")
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
        return written
    if nrow is None and gen.num_classes and classes is None and gen.num_classes <= 16:
        nrow = gen.num_classes  # all classes in turn: one class per column
    if out is not None:
        written.append(save_grid(images, out, nrow))
    if individual is not None:
        written += write_pngs(images, individual)
    return written
