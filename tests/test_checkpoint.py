import io
import os
import pickle

import pytest
import torch

from ganforge.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint


def _state():
    return {
        "G": {"w": torch.randn(3, 3)},
        "step": 7,
        "rng": {"torch": torch.get_rng_state()},
        "config": {"a": {"b": 1.5, "c": None}},
    }


def test_round_trip_is_plain_torch_load_compatible(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    state = _state()
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert torch.equal(back["G"]["w"], state["G"]["w"]) and back["step"] == 7
    assert back["format_version"] == 1 and len(back["payload_sha256"]) == 64
    assert torch.load(path, weights_only=True)["step"] == 7
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_changed_payload_fails_the_checksum(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    record = torch.load(path, weights_only=True)
    record["G"]["w"][0, 0] += 1.0
    torch.save(record, path)
    with pytest.raises(CheckpointError, match="failed its checksum"):
        load_checkpoint(path)


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "x": Evil()}, buffer, pickle_module=pickle)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)


def test_find_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", _state())
    assert find_checkpoint(tmp_path).name == "last.pt"
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a run folder"):
        find_checkpoint(tmp_path / "nope")


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from ganforge.checkpoint import WriteError

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left on device.*previous version is intact"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before  # the old checkpoint, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["step"] == 1


def test_disk_full_during_training_is_a_clear_cli_error(tmp_path, isolated_env, monkeypatch, capsys):
    import errno

    from ganforge import checkpoint
    from ganforge.cli import main

    real = checkpoint.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if str(path).endswith("last.pt") and calls["n"] > 3:
            raise checkpoint.WriteError(f"cannot write {path}: No space left on device (errno {errno.ENOSPC}); "
                                        "the previous version is intact.")  # fmt: skip
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", flaky)
    code = main(["train", "--data", "mnist-5k", "--steps", "6", "--no-progress", "--device", "cpu",
                 "--runs-dir", str(tmp_path), "--name", "full", "--set", "model.g_channels=4",
                 "model.d_channels=4", "train.batch_size=8", "data.limit=32", "train.checkpoint_every=2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err


def test_damaged_last_checkpoint_offers_an_intact_one_and_resume_from_it(tmp_path, isolated_env):
    from ganforge import build_config, train
    from tests.conftest import tiny

    overrides = tiny(tmp_path, steps=6)
    overrides["monitor"] = {"every": 2, "n": 8, "diversity_threshold": 0.0, "entropy_threshold": 0.0}
    run = train(build_config(overrides=overrides), progress=False)
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())

    def damage(damaged: bytes) -> None:  # last.pt alone: final.pt and healthy.pt are links to the same file
        last.unlink()
        last.write_bytes(damaged)

    damage(bytes(data[: len(data) // 2]))  # truncated, as by a crash mid-copy
    with pytest.raises(CheckpointError, match=r"damaged or truncated.*final.pt \(step 6\).*--from final.pt"):
        load_checkpoint(last)
    data[len(data) // 2] ^= 0xFF  # one flipped bit-pattern in an otherwise complete file
    damage(bytes(data))
    with pytest.raises(CheckpointError, match=r"healthy.pt \(step 6\)"):
        load_checkpoint(last)
    train(resume=run, overrides={"train": {"steps": 8}}, progress=False, resume_from="healthy.pt")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8


def test_the_k_newest_step_checkpoints_are_kept(tmp_path, isolated_env):
    from ganforge import build_config, train
    from tests.conftest import tiny

    run = train(build_config(overrides=tiny(tmp_path, steps=8, checkpoint_every=2, keep_checkpoints=2)),
                progress=False)  # fmt: skip
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert kept == ["step_0000006.pt", "step_0000008.pt"]  # 2 and 4 were pruned
    assert load_checkpoint(run / "checkpoints" / "step_0000006.pt")["step"] == 6


def test_an_empty_checkpoint_and_an_empty_sibling_give_the_clear_message(tmp_path):
    # an empty file raises errors whose text is empty; the message once took its first line (IndexError)
    good, empty = tmp_path / "step_00000007.pt", tmp_path / "last.pt"
    save_checkpoint(good, _state())
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"damaged or truncated \(an empty file, 0 bytes\)") as e:
        load_checkpoint(empty)
    assert "step_00000007.pt (step 7)" in str(e.value)  # the intact sibling is offered
    save_checkpoint(empty, _state())
    (tmp_path / "healthy.pt").write_bytes(b"")  # an empty sibling is skipped, not a crash in the advice
    data = empty.read_bytes()
    empty.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="Intact checkpoints of this run: step_00000007.pt"):
        load_checkpoint(empty)


def _raw(path, record):
    buffer = io.BytesIO()
    torch.save(record, buffer)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "record, message",
    [
        ({"format_version": "1", "step": 3}, r"format_version is str '1', not a positive integer"),
        ({"format_version": 0}, r"format_version is int 0"),
        ({"format_version": 99}, r"format 99, newer than this ganforge understands"),
        ({"step": 3}, r"not a ganforge checkpoint \(no format_version\)"),
        ({"format_version": 1, "step": "7"}, r"its 'step' entry is str '7', not a non-negative integer"),
        ({"format_version": 1, "G": {"w": [1.0]}}, r"its 'G' entry is dict .*, not a state dict"),
        ({"format_version": 1, "opt_D": {"state": {}}}, r"'opt_D' entry .* not an optimizer state dict"),
    ],
)
def test_a_crafted_checkpoint_is_refused_with_what_is_wrong(tmp_path, record, message):
    path = tmp_path / "crafted.pt"
    _raw(path, record)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, verify=False)


def test_a_missing_entry_names_the_file_and_the_entry(tmp_path):
    from ganforge.checkpoint import MissingEntryError

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 3})
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and ckpt.get("G") is None and "G" not in ckpt  # still a plain dict to read
    with pytest.raises(MissingEntryError, match=r"'.*last.pt' has no 'G' entry, which is needed here"):
        ckpt["G"]
    with pytest.raises(KeyError):  # what code catching a dict's KeyError expects
        ckpt["opt_G"]


def test_sampling_from_a_checkpoint_without_weights_is_a_clear_cli_error(tmp_path, isolated_env, capsys):
    from ganforge import build_config, train
    from ganforge.cli import main
    from tests.conftest import tiny

    run = train(build_config(overrides=tiny(tmp_path, steps=2)), progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    crafted = tmp_path / "crafted.pt"
    save_checkpoint(crafted, {k: v for k, v in ckpt.items() if k not in ("G", "G_ema")})  # valid, no weights
    code = main(["sample", str(crafted), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "has no 'G' entry" in err, err
