import io
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
