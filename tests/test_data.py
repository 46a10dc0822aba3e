import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.data import (
    DatasetError,
    convert_channels,
    load_dataset,
    read_idx,
    resize_square,
    to_float,
    to_uint8,
)


def test_the_two_conversions_round_trip():
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_float(u8)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), u8)
    assert to_uint8(torch.tensor([[[[3.0, -7.0]]]])).tolist() == [[[[255, 0]]]]


def test_real_mnist_counts(data_root):
    train = load_dataset("mnist", root=str(data_root / "mnist"), download=False)
    test = load_dataset("mnist", root=str(data_root), split="test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert torch.bincount(test.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


def _write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_in_torchvision_layout_and_uncompressed(isolated_env):
    raw = isolated_env / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte.gz", np.full((5, 28, 28), 7), 2051)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(5), 2049)
    ds = load_dataset("mnist", root=str(isolated_env / "root"), download=False)
    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [0, 1, 2, 3, 4]


def test_idx_wrong_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.gz"
    _write_idx(bad, np.zeros((2, 28, 28)), 1234)
    with pytest.raises(DatasetError, match="wrong magic number"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">IIII", 2051, 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(short)


def test_missing_dataset_gives_helpful_error(isolated_env):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root=str(isolated_env / "nowhere"), download=False)
    msg = str(err.value)
    assert "not found" in msg and "Looked for" in msg and "nowhere" in msg
    assert "--data-root" in msg and "GANFORGE_DATA" in msg


def test_auto_falls_back_to_embedded_mnist5k(isolated_env, capsys):
    ds = load_dataset("auto", download=False)
    assert ds.name == "mnist-5k"
    assert ds.images.shape == (4500, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [450] * 10
    assert "mnist-5k" in capsys.readouterr().err


def test_cifar_npz(isolated_env):
    folder = isolated_env / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez_compressed(
        folder / "data_batch_1.npz", images=imgs, labels=np.arange(6, dtype=np.uint8)
    )
    np.savez_compressed(
        folder / "test_batch.npz", images=imgs[:2], labels=np.zeros(2, dtype=np.uint8)
    )
    ds = load_dataset("cifar10", root=str(folder), download=False)
    assert ds.images.shape == (6, 3, 32, 32)
    assert torch.equal(
        ds.images[3], torch.from_numpy(imgs[3]).permute(2, 0, 1)
    )  # HWC -> CHW, RGB kept
    assert ds.labels.tolist() == list(range(6))
    assert len(load_dataset("cifar10", root=str(folder), split="test", download=False)) == 2
    np.savez_compressed(folder / "data_batch_2.npz", images=imgs[:, :16], labels=np.arange(6))
    with pytest.raises(DatasetError, match=r"must be uint8 of shape \(N, 32, 32, 3\)"):
        load_dataset("cifar10", root=str(folder), download=False)


def test_real_cifar(data_root):
    ds = load_dataset("cifar10", root=str(data_root / "cifar10"), split="test", download=False)
    assert ds.images.shape == (1000, 3, 32, 32)
    assert ds.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_real_cifar_train_split_holds_all_50000_images(data_root):
    """The 50k yardstick (issue #27) needs every training batch: 5,000 images a class."""
    folder = data_root / "cifar10"
    if len(list(folder.glob("data_batch_*"))) < 5:
        pytest.skip(f"{folder} holds fewer than the five CIFAR-10 training batches (data_batch_1..5)")
    ds = load_dataset("cifar10", root=str(folder), split="train", download=False)
    assert ds.images.shape == (50000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels, minlength=10).tolist() == [5000] * 10


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "deep").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "cats" / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(
        root / "cats" / "b.jpg", quality=90
    )
    Image.new("CMYK", (30, 30), (0, 255, 0, 0)).save(root / "dogs" / "cmyk.jpg")
    Image.new("P", (20, 20), 5).save(root / "dogs" / "deep" / "palette.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(root / "dogs" / "alpha.webp")
    Image.new("L", (33, 33), 128).save(root / "dogs" / "gray.bmp")
    (root / "dogs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_folder_of_mixed_images(mixed_folder, capsys):
    ds = load_dataset(f"folder:{mixed_folder}", resolution=16)
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.class_names == ["cats", "dogs"]
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1, 1, 1]
    assert ds.skipped == ["dogs/corrupt.png"]
    assert "skipped 1 unreadable" in capsys.readouterr().err
    gray = load_dataset(f"folder:{mixed_folder}", resolution=8, channels=1)
    assert gray.images.shape == (6, 1, 8, 8)
    # transparent pixels are composited over white
    alpha = [i for i, p in enumerate(sorted(mixed_folder.rglob("*"))) if p.name == "alpha.webp"]
    assert alpha and (ds.images == 255).all(dim=(1, 2, 3)).any()


def test_folder_strict_and_empty(mixed_folder, tmp_path):
    with pytest.raises(DatasetError, match="corrupt.png"):
        load_dataset(f"folder:{mixed_folder}", resolution=16, strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_grayscale_folder_stays_one_channel(tmp_path):
    for i in range(3):
        Image.new("L", (28, 28), i * 50).save(tmp_path / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}", resolution=28)
    assert ds.images.shape == (3, 1, 28, 28)
    assert ds.images[:, 0, 0, 0].tolist() == [0, 50, 100]


def test_channel_conversion_and_resize():
    rgb = torch.zeros(2, 3, 10, 20, dtype=torch.uint8)
    rgb[:, 0] = 255
    gray = convert_channels(rgb, 1)
    assert gray.shape == (2, 1, 10, 20) and gray.unique().tolist() == [76]  # 0.299 * 255
    assert convert_channels(gray, 3).shape == (2, 3, 10, 20)
    out = resize_square(rgb, 8)
    assert out.shape == (2, 3, 8, 8) and out[:, 0].min() == 255


def test_download_path_with_files_already_present(data_root, isolated_env, monkeypatch):
    """The torchvision download branch, exercised offline: torchvision finds the files and skips the fetch."""
    import shutil

    import ganforge.data as gd

    raw = gd.cache_dir() / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    # torchvision checks for all four (decompressed) files before it decides not to download
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with (
            gzip.open(data_root / "mnist" / f"{stem}.gz", "rb") as src,
            open(raw / stem, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    monkeypatch.setattr(gd, "_candidate_dirs", lambda *a, **k: [])  # nothing found by the search
    monkeypatch.setattr(gd, "_reachable", lambda url: True)  # as if online: the download branch runs
    ds = load_dataset("mnist", split="test", download=True)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.source == str(raw)


def _cache_folders(isolated_env) -> list:
    cache = isolated_env / "cache"
    return sorted(p for p in cache.rglob("*") if p.is_dir()) if cache.exists() else []


def test_offline_auto_says_one_line_and_makes_no_folder(isolated_env, monkeypatch, capsys):
    """Offline, `auto` announces no download it cannot make: one line (the fallback, and why), no folder."""
    import ganforge.data as gd

    monkeypatch.setattr(gd, "_reachable", lambda url: False)  # offline, whatever this machine is
    ds = load_dataset("auto")
    assert ds.name == "mnist-5k"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "downloading" not in err[0], err
    assert "full MNIST not found (it cannot be downloaded: no connection to" in err[0]
    assert "using the embedded mnist-5k" in err[0] and str(gd.cache_dir() / "mnist") in err[0]
    assert _cache_folders(isolated_env) == []
    monkeypatch.setenv("RANK", "1")  # the other processes of `--nproc 2` load it quietly: one line per command
    load_dataset("auto")
    assert capsys.readouterr().err == ""


def test_reachable_is_false_without_a_server():
    from ganforge.data import _reachable

    assert not _reachable("http://127.0.0.1:9/mnist/train-images-idx3-ubyte.gz", timeout=2)  # refused
    assert not _reachable("https://ganforge.invalid/x", timeout=2)  # .invalid never resolves


def _fake_torchvision_mnist(fail: bool):
    """A stand-in for torchvision.datasets.MNIST: it 'downloads' into root/MNIST/raw (or fails half-way)."""

    class FakeMNIST:
        mirrors = ["https://example.org/mnist/"]
        resources = [("train-images-idx3-ubyte.gz", "")]
        calls = 0

        def __init__(self, root, train, download):
            FakeMNIST.calls += 1
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            print("Downloading https://example.org/mnist/train-images-idx3-ubyte.gz")  # torchvision's own line
            if fail:
                raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
            _write_idx(raw / "train-images-idx3-ubyte.gz", np.full((5, 28, 28), 7), 2051)
            _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(5), 2049)

    return FakeMNIST


def test_online_download_says_so_once_and_a_failed_one_leaves_no_empty_folder(isolated_env, monkeypatch, capsys):
    import torchvision.datasets as tvd

    import ganforge.data as gd

    monkeypatch.setattr(gd, "_reachable", lambda url: url == "https://example.org/mnist/train-images-idx3-ubyte.gz")
    monkeypatch.setattr(tvd, "MNIST", _fake_torchvision_mnist(fail=True))
    with pytest.raises(DatasetError, match=r"download failed: RuntimeError: Error downloading"):
        load_dataset("mnist")
    out = capsys.readouterr()
    assert out.out == ""  # torchvision's lines go to stderr: stdout is for results (--dry-run's YAML)
    assert out.err.count("ganforge: downloading mnist to ") == 1
    assert _cache_folders(isolated_env) == []  # the folders the failed download made are gone

    fake = _fake_torchvision_mnist(fail=False)
    monkeypatch.setattr(tvd, "MNIST", fake)
    ds = load_dataset("auto")
    assert ds.name == "mnist" and len(ds) == 5 and fake.calls == 1
    err = capsys.readouterr().err
    assert err.count("ganforge: downloading mnist to ") == 1 and "mnist-5k" not in err
    assert ds.source == str(gd.cache_dir() / "mnist" / "MNIST" / "raw")


def test_offline_mnist_error_suggests_mnist5k(isolated_env):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", download=False)
    assert "'mnist-5k'" in str(err.value) and "ganforge data mnist-5k" in str(err.value)


def test_a_data_root_with_a_tilde_is_expanded(data_root, isolated_env, monkeypatch):
    """`~` in a root given from Python or a YAML file (where no shell expands it) means the home folder."""
    monkeypatch.setenv("HOME", str(isolated_env))  # the data is found through this root only
    (isolated_env / "mnist").symlink_to(data_root / "mnist")
    ds = load_dataset("mnist", root="~/mnist", split="test", download=False)
    assert len(ds) == 10_000


def test_exif_orientation_turns_a_photo_upright(tmp_path):
    # stored with the dark half on the left; EXIF orientation 6: shown turned 90 degrees clockwise (dark on top)
    stored = np.zeros((32, 32), dtype=np.uint8)
    stored[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    img = load_dataset(f"folder:{tmp_path}", resolution=32).images[0, 0].float()  # [H, W]
    assert img[:12].mean() < 30 and img[-12:].mean() > 225  # dark on top, bright below, as a viewer shows it


def test_16_bit_images_share_one_scale(tmp_path):
    """16-bit gray is scaled by 65535 in every image: a dark one stays dark (it was stretched to its own maximum)."""
    dark = np.tile(np.linspace(0, 200, 32).round().astype(np.uint16), (32, 1))  # values 0..200 of 65535
    Image.fromarray(dark).save(tmp_path / "dark.png")
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(tmp_path / "bright.png")
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    ds = load_dataset(f"folder:{tmp_path}", resolution=32)
    bright, dark_img = ds.images[0, 0].float(), ds.images[1, 0].float()  # sorted by name
    assert dark_img.max() <= 1 and dark_img.mean() < 1  # 200 / 65535 of white
    assert bright.min() == bright.max() == round(40000 / 65535 * 255)


def test_broken_symlink_is_counted_and_named_as_skipped(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "ok.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    ds = load_dataset(f"folder:{folder}", resolution=16)
    assert len(ds) == 1 and ds.skipped == ["gone.png"]
    assert "skipped 1 unreadable file(s)" in (err := capsys.readouterr().err) and "gone.png (broken symlink" in err
    with pytest.raises(DatasetError, match="gone.png: broken symlink"):
        load_dataset(f"folder:{folder}", resolution=16, strict=True)


def test_a_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (24, 24), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    ds = load_dataset(f"folder:{tmp_path}", resolution=16)
    assert ds.images.shape == (1, 3, 16, 16)
    assert ds.images[0, 0].min() > 240 and ds.images[0, 2].max() < 15  # red, the first frame
