"""The bad-input catalogue: every case a specific, helpful message from the CLI, never a traceback.

Each case builds its input in a temporary folder, runs `ganforge ...` in-process (an exception that
escaped the CLI's handlers would fail the test with a traceback), and checks the exit status and the
message. Cases that must *work* (odd but valid images) check that too. At the end, property-based
tests (hypothesis) throw random config text and random file bytes at the parsers and loaders.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ganforge.cli import main
from ganforge.config import ConfigError, build_config, parse_overrides
from ganforge.data import DatasetError, load_dataset

from .conftest import tiny

# ----------------------------------------------------------------------------------------------
# Input makers: each writes files under `tmp` and returns what the command line needs.


def _rgb(size=(40, 40), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def _folder(tmp: Path, files: dict[str, Callable[[Path], None]]) -> str:
    root = tmp / "imgs"
    root.mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    return f"folder:{root}"


def _save(img: Image.Image, **kw) -> Callable[[Path], None]:
    return lambda p: img.save(p, **kw)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _truncated_png(p: Path) -> None:
    buffer = io.BytesIO()
    _rgb((64, 64)).save(buffer, format="PNG")
    p.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): the decompression-bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    kind = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic if magic is not None else kind) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _mnist_root(tmp: Path, n_img=20, n_lbl=20, magic=None, cut=0, label_max=9) -> str:
    root = tmp / "mnistdata" / "mnist"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_img, 28, 28)), magic)
    _idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, label_max + 1, (n_lbl,)))
    if cut:
        raw = gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes())
        (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-cut]))
    return str(root)


def _cifar_root(tmp: Path, images: np.ndarray, labels: np.ndarray | None = None, **extra) -> str:
    root = tmp / "cifar"
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images, **({"labels": labels} if labels is not None else {}), **extra}
    np.savez(root / "train.npz", **arrays)
    return str(root)


def _cifar_file(tmp: Path, name: str, data: bytes) -> str:
    root = tmp / "cifar"
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
    return str(root)


class _Payload:
    """Unpickled, it would create the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _huge_npz(tmp: Path) -> str:
    """A CIFAR-10 .npz whose images claim (10**7, 32, 32, 3) (30 GB) and hold 100 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 32, 32, 3)})
    labels = io.BytesIO()
    np.save(labels, np.zeros(4, np.int64))
    root = tmp / "cifar"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "train.npz", "w") as zf:
        zf.writestr("images.npy", header.getvalue() + bytes(100))
        zf.writestr("labels.npy", labels.getvalue())
    return str(root)


def _idx_claiming(tmp: Path, dims: tuple[int, ...]) -> str:
    root = tmp / "mnistdata" / "mnist"
    root.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(1000)))
    _idx(root / "train-labels-idx1-ubyte.gz", np.zeros(20))
    return str(root)


def _broken_link(p: Path) -> None:
    p.symlink_to(p.parent / "deleted.png")


def _gif(p: Path) -> None:
    _rgb((30, 30)).save(p, save_all=True, append_images=[_rgb((30, 30), seed=1)])


def _pairs(tmp: Path, files: dict[str, Callable[[Path], None]]) -> str:
    return "pairs:" + _folder(tmp, files)[len("folder:"):]


def _unpaired_bomb(tmp: Path) -> str:
    a = _folder(tmp / "a", {"huge.png": _bytes(_png_header(30000, 30000))})[len("folder:"):]
    b = _folder(tmp / "b", {"ok.png": _save(_rgb())})[len("folder:"):]
    return f"unpaired:{a},{b}"


def _laughs(levels: int = 4, width: int = 10) -> str:
    rows = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "{" + ", ".join(rows) + "}"


def _run(tmp: Path, **kw) -> Path:
    """A finished tiny run (mnist-5k, offline)."""
    from ganforge.train import train

    overrides = tiny(tmp, **kw)
    return train(build_config(overrides=overrides), progress=False)


def _truncate(run: Path) -> None:
    for name in ("last.pt", "final.pt"):
        path = run / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])


def _data_changed(t: Path) -> list[str]:
    """A folder run whose images changed between the run and its resume."""
    from ganforge.train import train

    data = _folder(t, {f"{i}.png": _save(_rgb(seed=i)) for i in range(8)})
    overrides = tiny(t)
    overrides["data"] = {"name": data, "resolution": 64}
    overrides["model"]["name"] = "dcgan64"
    run = train(build_config(overrides=overrides), progress=False)
    (Path(data[len("folder:"):]) / "0.png").unlink()
    return ["train", "--resume", str(run), "--steps", "8"]


def _without_last(run: Path) -> None:
    for name in ("last.pt", "final.pt"):
        (run / "checkpoints" / name).unlink()


def _config_only(t: Path) -> None:
    """A run folder that stopped before its first checkpoint: config.yaml alone."""
    (t / "early").mkdir()
    (t / "early" / "config.yaml").write_text(build_config(overrides=tiny(t)).to_yaml())


DRY = ["train", "--dry-run", "--no-progress"]
DRY1 = [*DRY, "--batch-size", "1"]  # for folders of a single valid image
U8 = np.uint8
CASES: list[tuple[str, Callable[[Path], list[str]], int, str]] = [
    # --- image folders ----------------------------------------------------------------------
    ("folder-missing", lambda t: [*DRY, "--data", f"folder:{t}/nope"], 1, "does not exist or is not a folder"),
    ("folder-empty", lambda t: (t / "e").mkdir() or [*DRY, "--data", f"folder:{t}/e"], 1, "holds no images"),
    ("folder-is-a-file", lambda t: (t / "f.txt").write_text("x") and [*DRY, "--data", f"folder:{t}/f.txt"], 1,
     "is a file, not a folder"),
    ("folder-of-non-images", lambda t: [*DRY, "--data", _folder(t, {"a.txt": _bytes(b"x"), "b.csv": _bytes(b"1")})],
     1, "holds no images (looked recursively for .png"),
    ("folder-non-images-named", lambda t: [*DRY, "--data", _folder(t, {"notes.txt": _bytes(b"x")})], 1,
     "other file(s), e.g. notes.txt"),
    ("text-file-named-png", lambda t: [*DRY, "--data", _folder(t, {"x.png": _bytes(b"hello, not an image")})], 1,
     "x.png (not an image file, despite its .png name)"),
    ("zero-byte-jpeg", lambda t: [*DRY, "--data", _folder(t, {"z.jpg": _bytes(b"")})], 1,
     "z.jpg (empty file (0 bytes))"),
    ("truncated-png-alone", lambda t: [*DRY, "--data", _folder(t, {"t.png": _truncated_png})], 1,
     "t.png (truncated (the file ends early))"),
    ("truncated-png-skipped", lambda t: [*DRY1, "--data", _folder(t, {"t.png": _truncated_png, "ok.png": _save(_rgb())})],
     0, "skipped 1 unreadable file(s)"),
    ("truncated-png-strict", lambda t: [*DRY, "--strict", "--data",
                                        _folder(t, {"t.png": _truncated_png, "ok.png": _save(_rgb())})], 1,
     "unreadable image"),
    ("one-pixel-image", lambda t: [*DRY, "--data", _folder(t, {"dot.png": _save(Image.new("RGB", (1, 1)))})], 1,
     "dot.png (too small (1x1 pixels; at least 8x8 needed))"),
    ("decompression-bomb", lambda t: [*DRY, "--data", _folder(t, {"huge.png": _bytes(_png_header(20000, 20000))})], 1,
     "decompression-bomb guard"),
    ("cmyk-jpeg-works", lambda t: [*DRY1, "--data", _folder(t, {"c.jpg": _save(Image.new("CMYK", (30, 30), (0, 9, 0, 0)))})],
     0, "channels: 3"),
    ("16-bit-png-works", lambda t: [*DRY1, "--data", _folder(t, {"d.png": _save(Image.new("I;16", (30, 30), 40000))})],
     0, "channels: 1"),
    ("palette-png-works", lambda t: [*DRY1, "--data", _folder(t, {"p.png": _save(Image.new("P", (30, 30), 3))})], 0,
     "channels: 3"),
    ("alpha-png-works", lambda t: [*DRY1, "--data", _folder(t, {"a.png": _save(Image.new("RGBA", (30, 30), (9, 9, 9, 0)))})],
     0, "channels: 3"),
    ("folder-broken-symlink-skipped", lambda t: [*DRY1, "--data", _folder(t, {"ok.png": _save(_rgb()), "gone.png": _broken_link})],
     0, "gone.png (broken symlink (it points to"),
    ("folder-broken-symlink-strict", lambda t: [*DRY, "--strict", "--data",
                                                _folder(t, {"ok.png": _save(_rgb()), "gone.png": _broken_link})], 1,
     "gone.png: broken symlink"),
    ("gif-works", lambda t: [*DRY1, "--data", _folder(t, {"anim.gif": _gif})], 0, "channels: 3"),
    ("pairs-decompression-bomb", lambda t: [*DRY, "--data", _pairs(t, {"huge.png": _bytes(_png_header(30000, 30000))})],
     1, "huge.png (refused by the decompression-bomb guard"),
    ("pairs-ab-decompression-bomb", lambda t: [*DRY, "--data", _pairs(t, {"A/x.png": _bytes(_png_header(30000, 30000)),
                                                                          "B/x.png": _save(_rgb())})], 1,
     "A/x.png (refused by the decompression-bomb guard"),
    ("unpaired-decompression-bomb", lambda t: [*DRY, "--data", _unpaired_bomb(t)], 1,
     "huge.png (refused by the decompression-bomb guard"),
    ("channels-flag-invalid", lambda t: [*DRY, "--data", _folder(t, {"ok.png": _save(_rgb())}), "--channels", "2"],
     2, "data.channels: must be 1 or 3"),
    # --- MNIST IDX files ----------------------------------------------------------------------
    ("idx-wrong-magic", lambda t: [*DRY, "--data", "mnist", "--data-root", _mnist_root(t, magic=1234)], 1,
     "wrong magic number 1234 (expected 2049 for labels or 2051 for images)"),
    ("idx-truncated", lambda t: [*DRY, "--data", "mnist", "--data-root", _mnist_root(t, cut=100)], 1,
     "the file is truncated or damaged"),
    ("idx-count-mismatch", lambda t: [*DRY, "--data", "mnist", "--data-root", _mnist_root(t, n_lbl=19)], 1,
     "holds 20 images but"),
    ("idx-header-claims-terabytes", lambda t: [*DRY, "--data", "mnist", "--data-root", _idx_claiming(t, (2**31, 28, 28))],
     1, "more than ganforge reads from an IDX file"),
    ("idx-label-out-of-range", lambda t: [*DRY, "--data", "mnist", "--data-root", _mnist_root(t, label_max=60)], 1,
     "is out of range for mnist's 10 classes"),
    # --- CIFAR-10 npz -------------------------------------------------------------------------
    ("cifar-wrong-shape", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                     _cifar_root(t, np.zeros((4, 3, 32, 32), U8), np.zeros(4, np.int64))], 1,
     "'images' must be uint8 of shape (N, 32, 32, 3)"),
    ("cifar-wrong-dtype", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                     _cifar_root(t, np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64))], 1,
     "got float32"),
    ("cifar-missing-labels", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                        _cifar_root(t, np.zeros((4, 32, 32, 3), U8), other=np.zeros(4))], 1,
     "must hold arrays 'images' and 'labels'"),
    ("cifar-bad-labels", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                    _cifar_root(t, np.zeros((4, 32, 32, 3), U8), np.array([0, 1, 2, 11]))], 1,
     "'labels' must be integers 0..9"),
    ("cifar-batch-pickle-runs-code", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                                _cifar_file(t, "data_batch_1", pickle.dumps({"data": _Payload(t / "ran"),
                                                                                             "labels": [0]}, protocol=2))],
     1, "refers to io.open, which a CIFAR-10 batch never does"),
    ("cifar-batch-damaged", lambda t: [*DRY, "--data", "cifar10", "--data-root", _cifar_file(t, "data_batch_1", b"\x80\x02junk")],
     1, "damaged or not a CIFAR-10 batch"),
    ("cifar-npz-random-bytes", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                          _cifar_file(t, "train.npz", np.random.default_rng(0).bytes(2000))], 1,
     "is not a readable .npz file"),
    ("cifar-npz-object-array", lambda t: [*DRY, "--data", "cifar10", "--data-root",
                                          _cifar_root(t, np.array([None, 1], dtype=object), np.zeros(2, np.int64))], 1,
     "holds Python objects"),
    ("cifar-npz-claims-30-gb", lambda t: [*DRY, "--data", "cifar10", "--data-root", _huge_npz(t)], 1,
     "its header claims shape (10000000, 32, 32, 3)"),
    # --- config -------------------------------------------------------------------------------
    ("unknown-key", lambda t: [*DRY, "--set", "train.batch_sise=3"], 2, "Did you mean 'batch_size'"),
    ("unknown-section", lambda t: [*DRY, "--set", "trian.steps=3"], 2, "unknown config key 'trian'"),
    ("wrong-type", lambda t: [*DRY, "--set", "train.batch_size=big"], 2, "train.batch_size: expected int, got str"),
    ("negative-lr", lambda t: [*DRY, "--set", "optim.g_lr=-1"], 2, "optim.g_lr: must be greater than zero"),
    ("zero-batch", lambda t: [*DRY, "--batch-size", "0"], 2, "train.batch_size: must be greater than zero"),
    ("zero-epochs", lambda t: [*DRY, "--epochs", "0"], 2, "train.epochs: must be greater than zero"),
    ("negative-steps", lambda t: [*DRY, "--steps", "-5"], 2, "train.steps: must be greater than zero"),
    ("batch-larger-than-data", lambda t: [*DRY, "--data", "mnist-5k", "--batch-size", "5000"], 2,
     "larger than the dataset"),
    ("unknown-model", lambda t: [*DRY, "--model", "dcgan23"], 2, "unknown model 'dcgan23'"),
    ("unknown-loss", lambda t: [*DRY, "--set", "loss.name=hinj"], 2, "Did you mean 'hinge'"),
    ("unknown-preset", lambda t: [*DRY, "--preset", "mnist-fsat"], 2, "Did you mean 'mnist-fast'"),
    ("unknown-dataset", lambda t: [*DRY, "--data", "minst"], 2, "Did you mean 'mnist'"),
    ("unmakeable-resolution", lambda t: [*DRY, "--model", "dcgan28", "--resolution", "64"], 2,
     "dcgan28 makes 28x28 images, not 64"),
    ("override-without-value", lambda t: [*DRY, "--set", "train.batch_size"], 2, "expected KEY=VALUE"),
    ("points-with-image-model", lambda t: [*DRY, "--data", "grid25", "--model", "dcgan32"], 2,
     "holds 2D points, not images"),
    ("images-with-point-model", lambda t: [*DRY, "--data", "mnist-5k", "--model", "mlp"], 2, "is for 2D point data"),
    ("conditional-with-pack", lambda t: [*DRY, "--set", "model.conditional=true", "model.pack=2"], 2,
     "does not combine with model.conditional"),
    ("misspelt-choice", lambda t: [*DRY, "--set", "monitor.on_collapse=rollbak"], 2, "Did you mean 'rollback'"),
    ("diffaugment-on-points", lambda t: [*DRY, "--data", "grid25", "--set", "reg.diffaugment=translation"], 2,
     "does not apply to 2D point data"),
    ("vae-with-adversarial-loss", lambda t: [*DRY, "--model", "vae28"], 2, "set loss.name=elbo"),
    ("runs-dir-not-writable", lambda t: (t / "afile").write_text("x") and
     ["train", "--data", "mnist-5k", "--steps", "1", "--no-progress", "--runs-dir", str(t / "afile" / "runs")], 1,
     "cannot create the run folder"),
    ("seed-out-of-range", lambda t: [*DRY, "--seed", "99999999999999999999"], 2,
     "train.seed: must be a whole number from 0 to 4294967295"),
    ("negative-seed", lambda t: [*DRY, "--seed", "-1"], 2, "train.seed: must be a whole number from 0"),
    ("preset-given-as-a-path", lambda t: [*DRY, "--preset", "../../../../etc/passwd"], 2, "unknown preset"),
    ("yaml-aliases-in-set", lambda t: [*DRY, "--set", f"train.seed={_laughs()}"], 2, "do not use YAML aliases"),
    ("cuda-without-gpu", lambda t: [*DRY, "--device", "cuda", "--data", "mnist-5k"], 2, "no CUDA GPU is visible"),
    # --- runs and checkpoints -----------------------------------------------------------------
    ("sample-no-checkpoint", lambda t: (t / "r").mkdir() or ["sample", str(t / "r")], 1, "holds no checkpoint"),
    ("eval-no-checkpoint", lambda t: (t / "r").mkdir() or ["eval", str(t / "r")], 1, "holds no checkpoint"),
    ("resume-not-a-run", lambda t: (t / "r").mkdir() or ["train", "--resume", str(t / "r")], 1,
     "Is it a ganforge run folder?"),
    ("resume-incompatible-change", lambda t: ["train", "--resume", str(_run(t)), "--set", "model.g_channels=8"], 2,
     "cannot change model.g_channels when resuming"),
    ("resume-channels-mismatch", lambda t: ["train", "--resume", str(_run(t)), "--channels", "3"], 2,
     "cannot change data.channels when resuming"),
    ("resume-data-changed", _data_changed, 2, "it was trained on 8 images"),
    ("sample-class-unconditional", lambda t: ["sample", str(_run(t)), "--class", "3", "--out", str(t / "g.png")], 2,
     "this generator is unconditional"),
    ("sample-unknown-extension", lambda t: ["sample", str(_run(t)), "--out", str(t / "g.gaf")], 1,
     "'.gaf' is not an image format ganforge writes"),
    ("sample-jpg-works", lambda t: ["sample", str(_run(t)), "--out", str(t / "g.jpg")], 0, "wrote"),
    ("sample-safetensors-header-too-long", lambda t: (t / "g.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
     and ["sample", str(t / "g.safetensors")], 1, "its header claims 1,000,000,000,000 bytes"),
    ("eval-extractor-of-another-domain", lambda t: ["eval", str(_run(t)), "--extractor", "cifar10", "--n", "20",
                                                    "--metrics", "fid"], 0,
     "warning: the cifar10 extractor was trained on cifar10, but this run's dataset is mnist-5k"),
    ("eval-seed-out-of-range", lambda t: ["eval", str(_run(t)), "--seed", "99999999999999999999"], 2,
     "--seed must be a whole number from 0 to 4294967295"),
    ("sample-zero-images", lambda t: ["sample", str(_run(t)), "--n", "0"], 2, "--n must be at least 1"),
    ("eval-unknown-metric", lambda t: ["eval", str(_run(t)), "--metrics", "fid,fidd"], 2, "unknown metric(s) fidd"),
    ("eval-bad-split", lambda t: ["eval", str(_run(t)), "--ref", "mnist-5k:val"], 2, "split must be train or test"),
    ("truncated-checkpoint", lambda t: _truncate(_run(t)) or ["sample", str(t / "runs" / "tiny")], 1,
     "damaged"),
    ("compare-one-run", lambda t: ["compare", str(_run(t)), "--out", str(t / "c")], 2, "at least two runs"),
    # --- recovery advice (#29 item 3): what resume finds, and what it may change ---------------
    ("resume-without-last-pt", lambda t: _without_last(_run(t)) or ["train", "--resume", str(t / "runs" / "tiny")], 1,
     "Continue from the newest with: ganforge train --resume"),
    ("resume-before-first-checkpoint", lambda t: _config_only(t) or ["train", "--resume", str(t / "early")], 1,
     "start it again with: ganforge train --config"),
    ("resume-with-config", lambda t: ["train", "--resume", str(_run(t)), "--config", "x.yaml"], 2,
     "--config cannot be combined with --resume"),
    ("resume-repoint-builtin-dataset", lambda t: ["train", "--resume", str(_run(t)), "--data", "mnist"], 2,
     "only a folder dataset may be re-pointed"),
    ("config-file-missing", lambda t: [*DRY, "--config", str(t / "nope.yaml")], 2, "is not a file"),
    ("config-file-not-a-mapping", lambda t: (t / "c.yaml").write_text("- 1\n- 2\n") and
     [*DRY, "--config", str(t / "c.yaml")], 2, "must hold a mapping of sections"),
    ("sample-seed-out-of-range", lambda t: ["sample", str(_run(t)), "--seed", "99999999999999999999"], 2,
     "--seed must be a whole number from 0 to"),
]


def test_the_catalogue_holds_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("make, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(make, code, message, tmp_path, isolated_env, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path)
    capsys.readouterr()  # drop what building the input printed
    assert main(argv) == code
    out = capsys.readouterr()
    text = out.err + out.out
    assert message in text, text
    assert "Traceback" not in text


def test_unreadable_folder(tmp_path, monkeypatch, capsys):
    # root ignores permission bits, so the refusal is simulated where the listing happens
    root = tmp_path / "locked"
    root.mkdir()

    def refuse(self, pattern):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "rglob", refuse)
    assert main([*DRY, "--data", f"folder:{root}"]) == 1
    err = capsys.readouterr().err
    assert "cannot read image folder" in err and "Permission denied" in err and "Check its permissions" in err


# ----------------------------------------------------------------------------------------------
# Property-based: random input never escapes as anything but the documented errors.

KEYS = ["train.batch_size", "train.steps", "train.epochs", "optim.g_lr", "optim.beta1", "model.name", "loss.name",
        "model.pack", "data.channels", "train.ema_beta", "monitor.on_collapse", "reg.diffaugment", "model.z_dim"]  # fmt: skip
VALUES = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.booleans(), st.none())  # fmt: skip


@pytest.mark.parametrize("text", ["'abc", "!0", "a\x1fb", "[1, 2", "{a: 1", "!!int x", "!!float abc", "!!timestamp x"])
def test_override_value_that_is_not_yaml_is_a_config_error(text):
    with pytest.raises(ConfigError, match="is not a YAML scalar"):
        parse_overrides([f"train.seed={text}"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=4))
def test_override_text_parses_or_fails_cleanly(items):
    try:
        parse_overrides(items)
    except ConfigError as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_any_config_values_validate_or_fail_naming_the_key(values):
    overrides: dict = {}
    for key, value in values.items():
        section, name = key.split(".")
        overrides.setdefault(section, {})[name] = value
    try:
        cfg = build_config(overrides=overrides)
    except ConfigError as e:
        assert any(key.split(".")[0] in str(e) or key.split(".")[1] in str(e) for key in values), str(e)
    else:
        assert cfg.train.batch_size > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from([".png", ".jpg", ".bmp", ".webp"]),
       st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF"]))  # fmt: skip
def test_random_bytes_in_an_image_folder_are_skipped_or_refused_cleanly(tmp_path, data, suffix, magic):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / f"junk{suffix}").write_bytes(magic + data)
    try:
        ds = load_dataset(f"folder:{folder}", resolution=16)
    except DatasetError as e:
        assert "junk" in str(e)
    else:  # the bytes happened to decode: then it is a proper image
        assert ds.images.shape[1:] in ((1, 16, 16), (3, 16, 16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]), st.integers(1, 70),
       st.integers(1, 70), st.sampled_from([1, 3, None]))  # fmt: skip
def test_images_of_any_mode_and_size_load_or_are_skipped_with_a_reason(tmp_path, mode, w, h, channels):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    suffix = {"CMYK": ".jpg", "I": ".tiff", "F": ".tiff"}.get(mode, ".png")  # what each mode can be saved as
    Image.new(mode, (w, h)).save(folder / f"a{suffix}")
    try:
        ds = load_dataset(f"folder:{folder}", resolution=16, channels=channels)
    except DatasetError as e:
        assert min(w, h) < 8 and "too small" in str(e)
    else:
        assert min(w, h) >= 8
        assert ds.images.shape[1:] == ((channels or ds.images.shape[1]), 16, 16)
        assert ds.images.dtype.is_floating_point is False


def test_read_only_runs_folder(tmp_path, isolated_env, monkeypatch, capsys):
    # root ignores permission bits: simulate the refusal where the run folder is first written
    real_write = Path.write_bytes

    def refuse(self, data):
        if self.name == ".write-test":
            raise PermissionError(13, "Permission denied")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    argv = ["train", "--data", "mnist-5k", "--steps", "1", "--no-progress", "--runs-dir", str(tmp_path / "ro")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot create the run folder" in err and "Permission denied" in err and "--runs-dir" in err
