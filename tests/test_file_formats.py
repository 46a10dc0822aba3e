"""Every file format ganforge reads, against the two things a hostile or damaged file can do: run code,
and exhaust memory (a header that claims gigabytes, a compressed bomb).

Code execution: a payload that would create a marker file, which must not appear. Memory: the peak that
tracemalloc sees (numpy's and Python's allocations, touched or not) stays small while the file claims
gigabytes. The formats: YAML (presets, --set values), IDX (MNIST), .npz and .npy (CIFAR-10, derived
caches), CIFAR-10's python batches (pickle), .safetensors exports, and images (folder:, pairs:, unpaired:).
IDX has no code path to test: its payload is raw bytes, read as uint8 and nothing else.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ganforge.config as config_module
from ganforge.checkpoint import CheckpointError
from ganforge.config import ConfigError, load_preset, parse_overrides
from ganforge.data import DatasetError, load_dataset, read_idx

MB = 1 << 20
SMALL = 16  # MB: what reading a refused file may cost at most


class Payload:
    """Unpickled, it creates `marker` (any call could be made the same way: os.system, exec, ...)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def refused_cheaply(error: type, match: str, fn) -> None:
    """fn() raises `error` (its message matching `match`), and the traced allocations' peak while it runs stays
    under SMALL MB."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match):
            fn()
        peak = tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()
    assert peak < SMALL, f"{peak:.0f} MB allocated to refuse the file"


# ----------------------------------------------------------------------------------------------
# YAML: presets and --set values.


@pytest.fixture
def preset_dir(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    monkeypatch.setattr(config_module, "PRESET_DIR", folder)
    return folder


def test_yaml_python_tags_do_not_run(preset_dir, tmp_path):
    marker = tmp_path / "ran"
    (preset_dir / "evil.yaml").write_text(f"train:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_preset("evil")
    with pytest.raises(ConfigError, match="is not a YAML scalar"):
        parse_overrides([f"train.seed=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def laughs(levels: int = 6, width: int = 10) -> str:
    """YAML of `levels` anchors, each a list of `width` aliases of the one before: width**levels leaves."""
    rows = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "{" + ", ".join(rows) + "}"


def test_yaml_aliases_are_refused_before_they_multiply(preset_dir):
    (preset_dir / "laughs.yaml").write_text(f"train:\n  seed: {laughs()}\n")
    with pytest.raises(ConfigError, match="do not use YAML aliases"):
        load_preset("laughs")
    with pytest.raises(ConfigError, match="do not use YAML aliases"):
        parse_overrides([f"train.seed={laughs()}"])


def test_a_huge_yaml_config_is_refused_unread(preset_dir):
    (preset_dir / "huge.yaml").write_text("# padding\n" * 110_000 + "train: {steps: 3}\n")  # 1.1 MB
    with pytest.raises(ConfigError, match="at most 1,000,000 bytes"):
        load_preset("huge")


def test_a_preset_is_a_name_not_a_path(tmp_path):
    (tmp_path / "mine.yaml").write_text("train: {steps: 3}\n")
    relative = os.path.relpath(tmp_path / "mine", config_module.PRESET_DIR)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset(relative)


# ----------------------------------------------------------------------------------------------
# IDX (MNIST).


def _idx_gz(path: Path, dims: tuple[int, ...], zeros: int) -> Path:
    """An IDX images file whose header claims `dims`, followed by `zeros` zero bytes, gzipped."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims))
        for _ in range(zeros // MB):
            f.write(bytes(MB))
    return path


def test_idx_header_claiming_terabytes_is_refused_unread(tmp_path):
    path = _idx_gz(tmp_path / "train-images-idx3-ubyte.gz", (2**31, 28, 28), 64 * MB)
    refused_cheaply(DatasetError, "more than ganforge reads from an IDX file", lambda: read_idx(path))


def test_idx_gzip_bomb_is_read_no_further_than_its_header_claims(tmp_path):
    path = _idx_gz(tmp_path / "train-images-idx3-ubyte.gz", (20, 28, 28), 64 * MB)  # 64 MB where 15,680 belong
    refused_cheaply(DatasetError, "the file holds more than 15680", lambda: read_idx(path))


# ----------------------------------------------------------------------------------------------
# .npz and .npy.


def _cifar_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar"
    folder.mkdir(exist_ok=True)
    return folder


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _labels_npy(n: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(n, np.int64))
    return buffer.getvalue()


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"
    folder = _cifar_folder(tmp_path)
    np.savez(folder / "train.npz", images=np.array([Payload(marker)], dtype=object), labels=np.zeros(1, np.int64))
    with pytest.raises(DatasetError, match="holds Python objects") as err:
        load_dataset("cifar10", root=str(folder), download=False)
    assert not marker.exists()
    assert "pickle.load" not in str(err.value) and "allow_pickle" not in str(err.value)  # numpy's advice is not ours


def test_npz_of_random_bytes_gets_ganforges_message(tmp_path):
    folder = _cifar_folder(tmp_path)
    (folder / "train.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DatasetError, match="is not a readable .npz file") as err:
        load_dataset("cifar10", root=str(folder), download=False)
    assert "pickle.load" not in str(err.value) and "unsafely" not in str(err.value)


def test_npz_member_claiming_a_huge_shape_is_refused_unread(tmp_path):
    folder = _cifar_folder(tmp_path)
    with zipfile.ZipFile(folder / "train.npz", "w") as zf:
        zf.writestr("images.npy", _npy_header((10**7, 32, 32, 3)) + bytes(100))  # claims 30 GB
        zf.writestr("labels.npy", _labels_npy(10**7)[:200])
    refused_cheaply(DatasetError, r"its header claims shape \(10000000, 32, 32, 3\)",
                    lambda: load_dataset("cifar10", root=str(folder), download=False))


def test_npz_zip_bomb_is_refused_unread(tmp_path):
    folder = _cifar_folder(tmp_path)
    n = 65 * MB // 3072 + 1  # zeros: 65 MB that deflate to about 65 KB
    with zipfile.ZipFile(folder / "train.npz", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((n, 32, 32, 3)))
            for _ in range(n * 3072 // MB):
                f.write(bytes(MB))
            f.write(bytes(n * 3072 % MB))
        zf.writestr("labels.npy", _labels_npy(n))
    refused_cheaply(DatasetError, "a zip bomb", lambda: load_dataset("cifar10", root=str(folder), download=False))


def test_damaged_derived_cache_claiming_a_huge_shape_is_remade_unread(isolated_env):
    from ganforge.data import _cached_derived, cache_dir

    path = cache_dir() / "derived" / "x-train-k.npy"
    path.parent.mkdir(parents=True)
    path.write_bytes(_npy_header((10**10,)) + bytes(100))
    tracemalloc.start()
    try:
        made = _cached_derived("x", "train", "k", lambda: torch.zeros(3, dtype=torch.uint8))
        peak = tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()
    assert made.tolist() == [0, 0, 0] and peak < SMALL


# ----------------------------------------------------------------------------------------------
# CIFAR-10's python batches (pickle).


def _batch(n: int = 3, seed: int = 0) -> dict:
    """A batch as the official files hold it: str keys, 'data' uint8 [N, 3072], lists of labels and names."""
    rng = np.random.default_rng(seed)
    return {"batch_label": "training batch 1 of 5", "labels": [int(x) for x in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"img_{i}.png" for i in range(n)]}  # fmt: skip


def test_cifar_batch_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    folder = _cifar_folder(tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps({**_batch(), "data": Payload(marker)}, protocol=2))
    with pytest.raises(DatasetError, match=r"refers to io\.open, which a CIFAR-10 batch never does: the file is not a "
                                           "genuine CIFAR-10 batch; refusing to load it"):  # fmt: skip
        load_dataset("cifar10", root=str(folder), download=False)
    assert not marker.exists()


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_a_genuine_cifar_batch_still_loads(tmp_path, numpy_module, keys):
    """numpy.core: how numpy 1 (the official files) names _reconstruct; numpy._core: numpy 2. Bytes keys: a batch
    re-saved by Python 3 from one read with encoding="bytes"."""
    folder = _cifar_folder(tmp_path)
    batches = [_batch(3, seed) for seed in range(2)]
    for i, batch in enumerate(batches, 1):
        if keys == "bytes":
            batch = {k.encode(): v for k, v in batch.items()}
        raw = pickle.dumps(batch, protocol=2)
        (folder / f"data_batch_{i}").write_bytes(raw.replace(b"cnumpy._core.multiarray\n", f"c{numpy_module}\n".encode()))
    (folder / "test_batch").write_bytes(pickle.dumps(_batch(2, 5), protocol=2))
    ds = load_dataset("cifar10", root=str(folder), download=False)
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[4].flatten(), torch.from_numpy(batches[1]["data"][1]))
    assert ds.labels.tolist() == batches[0]["labels"] + batches[1]["labels"]
    assert len(load_dataset("cifar10", root=str(folder), split="test", download=False)) == 2


def test_cifar_batch_claiming_a_huge_length_is_refused_unread(tmp_path):
    folder = _cifar_folder(tmp_path)
    (folder / "data_batch_1").write_bytes(b"\x80\x02\x8e" + struct.pack("<Q", 2**34) + b"abc")  # BINBYTES8 of 16 GB
    refused_cheaply(DatasetError, "damaged or not a CIFAR-10 batch",
                    lambda: load_dataset("cifar10", root=str(folder), download=False))


# ----------------------------------------------------------------------------------------------
# .safetensors exports.


def test_safetensors_holding_a_pickle_is_not_unpickled(tmp_path):
    from ganforge.sample import load

    marker = tmp_path / "ran"
    path = tmp_path / "g.safetensors"
    torch.save({"G": Payload(marker)}, path)  # a torch pickle under a .safetensors name
    with pytest.raises(CheckpointError, match="is not a readable .safetensors file"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("claimed, why", [(200_000_000, "more than a ganforge export's header ever needs"),
                                          (1000, "the file holds only 2 bytes after it")])  # fmt: skip
def test_safetensors_header_length_is_checked_before_parsing(tmp_path, claimed, why):
    from ganforge.sample import load

    path = tmp_path / "g.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b"{}")
    with pytest.raises(CheckpointError, match=f"its header claims {claimed:,} bytes, {why}"):
        load(path)


# ----------------------------------------------------------------------------------------------
# Images: folder:, pairs:, unpaired:.


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): the decompression-bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\nnewpath 0 0 moveto 64 64 lineto stroke\n"


def test_an_image_file_holding_postscript_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript is not run in this test")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "x.png").write_bytes(EPS)  # Pillow chooses a decoder by content: this would be PostScript
    Image.new("RGB", (16, 16)).save(folder / "ok.png")
    ds = load_dataset(f"folder:{folder}", resolution=16)
    assert ds.skipped == ["x.png"] and calls == []


def _bomb_data(tmp_path: Path, kind: str) -> str:
    bomb, ok = _png_header(30000, 30000), Image.new("RGB", (32, 16))
    root = tmp_path / kind
    for name in {"folder": ["huge.png"], "pairs-aligned": ["huge.png"], "pairs-ab": ["A/x.png", "B/x.png"],
                 "unpaired": ["A/huge.png", "B/ok.png"]}[kind]:  # fmt: skip
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bomb) if name != "B/ok.png" and name != "B/x.png" else ok.save(path)
    return {"folder": f"folder:{root}", "pairs-aligned": f"pairs:{root}", "pairs-ab": f"pairs:{root}",
            "unpaired": f"unpaired:{root / 'A'},{root / 'B'}"}[kind]  # fmt: skip


@pytest.mark.parametrize("kind", ["folder", "pairs-aligned", "pairs-ab", "unpaired"])
def test_decompression_bomb_is_refused_in_every_image_folder(tmp_path, kind):
    name = _bomb_data(tmp_path, kind)
    refused_cheaply(DatasetError, "refused by the decompression-bomb guard", lambda: load_dataset(name, resolution=16))
