"""The user's own translation data: pairs:DIR (aligned A|B files, or A/ + B/) and unpaired:DIR_A,DIR_B."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.config import build_config, planned_resolution
from ganforge.data import DatasetError, load_dataset


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _gray(value, size=(16, 16)):
    return np.full(size, value, dtype=np.uint8)  # [H, W]


def _rgb(value, size=(16, 16)):
    return np.full((*size, 3), value, dtype=np.uint8)  # [H, W, 3]


def _aligned(folder, values, size=16):
    """Aligned files n.png: A (gray value v) on the left half, B (RGB value 255 - v) on the right."""
    for i, v in enumerate(values):
        pair = np.concatenate([np.stack([_gray(v, (size, size))] * 3, -1), _rgb(255 - v, (size, size))], axis=1)
        _png(folder / f"{i:02d}.png", pair)


def _two_folders(folder, values, a_ext=".png", b_ext=".png"):
    """A/n: gray value v; B/n: RGB value 255 - v, where the pair's number is in both names."""
    for i, v in enumerate(values):
        _png(folder / "A" / f"img{i:02d}{a_ext}", _gray(v))
        _png(folder / "B" / f"img{i:02d}{b_ext}", _rgb(255 - v))


def test_aligned_files_split_at_half_width(tmp_path):
    _aligned(tmp_path / "p", [10, 60, 200])
    ds = load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8)
    assert ds.images.shape == (3, 3, 8, 8) and ds.inputs.shape == (3, 3, 8, 8)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64 and not ds.labels.any()
    # the left half is A, the right half B, in name order
    assert ds.inputs[:, 0, 4, 4].tolist() == [10, 60, 200] and ds.images[:, 0, 4, 4].tolist() == [245, 195, 55]
    assert ds.name == f"pairs:{(tmp_path / 'p').resolve()}" and ds.class_names == ["all"] and not ds.unpaired


def test_aligned_file_that_is_not_side_by_side_is_skipped(tmp_path, capsys):
    _aligned(tmp_path / "p", [10, 60])
    _png(tmp_path / "p" / "square.png", _rgb(0))
    ds = load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8)
    assert len(ds) == 2 and ds.skipped == ["square.png"]
    assert "not an A|B pair side by side: 16x16" in capsys.readouterr().err


def test_a_and_b_folders_match_by_name_and_keep_their_own_channels(tmp_path):
    _two_folders(tmp_path / "p", [30, 90, 150], a_ext=".png", b_ext=".jpg")  # extensions may differ
    ds = load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8)
    assert ds.inputs.shape == (3, 1, 8, 8) and ds.images.shape == (3, 3, 8, 8)  # A gray, B colour
    assert ds.inputs[:, 0, 4, 4].tolist() == [30, 90, 150]
    assert np.allclose(ds.images[:, 0, 4, 4].tolist(), [225, 165, 105], atol=3)  # (JPEG)
    assert load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8, channels=1).images.shape[1] == 1  # B only
    assert load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8, channels=1).inputs.shape[1] == 1


def test_unmatched_names_are_listed_with_counts(tmp_path):
    _two_folders(tmp_path / "p", [30, 90])
    _png(tmp_path / "p" / "A" / "lonely.png", _gray(0))
    for i in range(12):
        _png(tmp_path / "p" / "B" / f"extra{i:02d}.png", _rgb(0))
    with pytest.raises(DatasetError) as e:
        load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8)
    msg = str(e.value)
    assert "only in A/ (1): lonely" in msg and "only in B/ (12): extra00" in msg and "extra09" in msg
    assert "extra10" not in msg and "(2 more)" in msg and "Fix: rename them" in msg
    (tmp_path / "q" / "A").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has A/ but no B/"):
        load_dataset(f"pairs:{tmp_path / 'q'}", resolution=8)


def test_corrupt_file_drops_its_pair_or_is_refused_with_strict(tmp_path, capsys):
    _two_folders(tmp_path / "p", [30, 90, 150])
    (tmp_path / "p" / "B" / "img01.png").write_bytes(b"not a png at all")
    ds = load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8)
    assert len(ds) == len(ds.inputs) == 2 and ds.inputs[:, 0, 4, 4].tolist() == [30, 150]  # both sides dropped
    assert ds.skipped == ["B/img01.png"]
    err = capsys.readouterr().err
    assert "skipped 1 pair(s)" in err and "B/img01.png (not an image file" in err and "--strict" in err
    with pytest.raises(DatasetError, match=r"unreadable image .*img01.png: not an image file.*drop --strict"):
        load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8, strict=True)


def test_train_and_test_folders_are_the_splits(tmp_path, capsys):
    _aligned(tmp_path / "p" / "train", [10, 20, 30])
    _two_folders(tmp_path / "p" / "test", [40])  # each split in either layout
    train = load_dataset(f"pairs:{tmp_path / 'p'}", split="train", resolution=8)
    test = load_dataset(f"pairs:{tmp_path / 'p'}", split="test", resolution=8)
    assert len(train) == 3 and len(test) == 1 and test.inputs[0, 0, 4, 4] == 40
    assert train.name == test.name and "no held-out test split" not in capsys.readouterr().err
    _aligned(tmp_path / "shoes" / "train", [10, 20])  # edges2shoes ships train/ and val/ only
    _aligned(tmp_path / "shoes" / "val", [50])
    assert load_dataset(f"pairs:{tmp_path / 'shoes'}", split="test", resolution=8).inputs[0, 0, 4, 4] == 50


def test_without_a_test_folder_both_splits_read_dir_with_one_notice(tmp_path, capsys):
    _aligned(tmp_path / "p", [10, 20])
    train = load_dataset(f"pairs:{tmp_path / 'p'}", split="train", resolution=8)
    test = load_dataset(f"pairs:{tmp_path / 'p'}", split="test", resolution=8)
    assert torch.equal(train.images, test.images) and torch.equal(train.inputs, test.inputs)
    err = capsys.readouterr().err
    assert err.count("no held-out test split") == 1 and "measured on training images" in err
    assert str(tmp_path / "p" / "test") in err


def test_bad_pairs_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"pairs:{tmp_path / 'nope'}")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_dataset(f"pairs:{tmp_path / 'f.png'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images.*it is empty"):
        load_dataset(f"pairs:{tmp_path / 'empty'}")


def test_unpaired_two_folders_with_different_counts(tmp_path, capsys):
    for i in range(3):
        _png(tmp_path / "a" / "sub" / f"{i}.png", _gray(10 * i))  # subfolders are not classes
    for i in range(5):
        _png(tmp_path / "b" / f"{i}.png", _rgb(100 + i))
    ds = load_dataset(f"unpaired:{tmp_path / 'a'},{tmp_path / 'b'}", resolution=8)
    assert ds.unpaired and ds.inputs.shape == (3, 1, 8, 8) and ds.images.shape == (5, 3, 8, 8)
    assert not ds.labels.any() and ds.input_labels.tolist() == [0, 0, 0] and ds.class_names == ["all"]
    assert ds.name == f"unpaired:{(tmp_path / 'a').resolve()},{(tmp_path / 'b').resolve()}"
    test = load_dataset(ds.name, split="test", resolution=8)  # the name it reports loads it again
    assert torch.equal(test.images, ds.images)
    assert capsys.readouterr().err.count("no held-out test split") == 1


def test_unpaired_cyclegan_layout(tmp_path, capsys):
    for split, n in (("train", 4), ("test", 2)):
        for d, value in (("A", 20), ("B", 220)):
            for i in range(n + (d == "B")):
                _png(tmp_path / "h2z" / f"{split}{d}" / f"{i}.jpg", _rgb(value))
    train = load_dataset(f"unpaired:{tmp_path / 'h2z'}", resolution=8)
    test = load_dataset(f"unpaired:{tmp_path / 'h2z'}", split="test", resolution=8)
    assert (len(train.inputs), len(train), len(test.inputs), len(test)) == (4, 5, 2, 3)
    assert train.source.endswith("trainB") and test.source.endswith("testB")
    assert "no held-out test split" not in capsys.readouterr().err


@pytest.mark.parametrize("spec, match", [
    ("{a}", "names one folder, .*which holds no trainA/ and trainB/"),
    ("{a},{b},{a}", "more than two folders"),
    ("{a},", "an empty folder name"),
    ("{a},{missing}", "domain B: image folder .* does not exist"),
    ("{a},{empty}", "domain B: image folder .* holds no images"),
])  # fmt: skip
def test_bad_unpaired_specs_name_the_expected_form(tmp_path, spec, match):
    _png(tmp_path / "a" / "0.png", _gray(0))
    _png(tmp_path / "b" / "0.png", _gray(0))
    (tmp_path / "empty").mkdir()
    paths = {k: tmp_path / k for k in ("a", "b", "missing", "empty")}
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset("unpaired:" + spec.format(**paths), resolution=8)
    assert "unpaired:DIR_A,DIR_B" in str(e.value)


def test_limit_cuts_both_domains(tmp_path):
    _aligned(tmp_path / "p", range(0, 250, 50))
    ds = load_dataset(f"pairs:{tmp_path / 'p'}", resolution=8, limit=2)
    assert len(ds) == len(ds.inputs) == 2 and ds.inputs[:, 0, 4, 4].tolist() == [0, 50]
    for i in range(5):
        _png(tmp_path / "a" / f"{i}.png", _gray(i))
        _png(tmp_path / "b" / f"{i}.png", _gray(i))
    ds = load_dataset(f"unpaired:{tmp_path / 'a'},{tmp_path / 'b'}", resolution=8, limit=3)
    assert len(ds) == len(ds.labels) == len(ds.inputs) == len(ds.input_labels) == 3


def test_planned_resolution_of_user_translation_data_is_32():
    for name in ("pairs:/x", "unpaired:/a,/b"):
        cfg = build_config(overrides={"data": {"name": "mnist"}})
        cfg.data.name = name  # (planned_resolution alone; validation of these names is config's concern)
        assert planned_resolution(cfg) == 32
        cfg.data.resolution = 28
        assert planned_resolution(cfg) == 28
    cfg = build_config(overrides={"data": {"name": "mnist"}})
    cfg.data.name = "folder:/x"
    assert planned_resolution(cfg) == 64


TINY = ["--steps", "3", "--device", "cpu", "--no-progress", "--set", "train.batch_size=4", "model.g_channels=8",
        "model.d_channels=8", "train.n_samples=4", "train.log_every=1", "train.checkpoint_every=3"]  # fmt: skip


def test_pairs_train_end_to_end(tmp_path):
    from ganforge.cli import main

    _aligned(tmp_path / "p" / "train", range(0, 240, 30), size=40)
    _two_folders(tmp_path / "p" / "test", [15, 45, 75, 105])
    assert main(["train", "--data", f"pairs:{tmp_path / 'p'}", *TINY, "--runs-dir", str(tmp_path / "runs"),
                 "--name", "pairs"]) == 0  # fmt: skip
    run = tmp_path / "runs" / "pairs"
    assert (run / "samples.png").is_file() and (run / "checkpoints" / "final.pt").is_file()


def _unpaired_run(tmp_path, a_values):
    from ganforge.cli import main

    for i in range(6):
        _png(tmp_path / "a" / f"{i}.png", a_values(40 * i))
        _png(tmp_path / "b" / f"{i}.png", _rgb(40 * i, (36, 48)))
    assert main(["train", "--data", f"unpaired:{tmp_path / 'a'},{tmp_path / 'b'}", *TINY, "--runs-dir",
                 str(tmp_path / "runs"), "--name", "unpaired", "--set", "loss.pool_size=4"]) == 0  # fmt: skip
    run = tmp_path / "runs" / "unpaired"
    assert (run / "samples.png").is_file() and (run / "checkpoints" / "final.pt").is_file()


def test_unpaired_train_end_to_end(tmp_path):
    _unpaired_run(tmp_path, lambda v: _rgb(v, (40, 40)))


def test_unpaired_gray_to_colour_train_end_to_end(tmp_path):
    _unpaired_run(tmp_path, lambda v: _gray(v, (40, 40)))


def test_pairs_share_the_folders_reading_orientation_16_bit_and_broken_links(tmp_path, capsys):
    """A/ + B/ pairs are read by the same helpers as folders: EXIF orientation applied, 16-bit scaled by
    65535, and a pair with a broken symlink skipped and named."""
    stored = np.zeros((16, 16), dtype=np.uint8)
    stored[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the dark half on top
    (tmp_path / "p" / "A").mkdir(parents=True)
    Image.fromarray(stored).save(tmp_path / "p" / "A" / "0.png", exif=exif)
    _png(tmp_path / "p" / "B" / "0.png", _rgb(9))
    Image.fromarray(np.full((16, 16), 200, dtype=np.uint16)).save(tmp_path / "p" / "A" / "1.png")  # dark 16-bit
    _png(tmp_path / "p" / "B" / "1.png", _rgb(9))
    (tmp_path / "p" / "A" / "2.png").symlink_to(tmp_path / "nowhere.png")
    _png(tmp_path / "p" / "B" / "2.png", _rgb(9))
    ds = load_dataset(f"pairs:{tmp_path / 'p'}", resolution=16)
    assert len(ds) == 2 and ds.skipped == ["A/2.png"] and "A/2.png (broken symlink" in capsys.readouterr().err
    upright = ds.inputs[0, 0].float()
    assert upright[:6].mean() < 10 and upright[-6:].mean() > 245
    assert ds.inputs[1].max() <= 1  # 200 / 65535 of white, not stretched to its own maximum
