"""What a run leaves on disk: one file per checkpointed state (hard links, or copies where there are
none), names that are replaced and never written in place; and where train-classifier's weights go."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from ganforge import build_config, train
from ganforge.checkpoint import load_checkpoint
from ganforge.metrics import features
from ganforge.metrics.features import (
    ExtractorError,
    file_sha256,
    find_weights,
    load_domain_extractor,
    recorded_sha256_path,
    user_weights_path,
    weights_path,
)
from tests.conftest import tiny


def _run(tmp_path, steps: int = 6, **train_overrides):
    overrides = tiny(tmp_path, steps=steps, **train_overrides)
    # a check at every checkpoint step that always passes: healthy.pt follows last.pt
    overrides["monitor"] = {"every": 3, "n": 8, "diversity_threshold": 0.0, "entropy_threshold": 0.0}
    return train(build_config(overrides=overrides), progress=False)


def _files(run) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in sorted((run / "checkpoints").glob("*.pt"))}


def test_checkpoints_of_one_state_are_one_file(tmp_path, isolated_env):
    run = _run(tmp_path)
    files = _files(run)
    assert sorted(files) == ["final.pt", "healthy.pt", "last.pt", "step_0000003.pt", "step_0000006.pt"]
    # step 6: its health check (healthy.pt), its periodic checkpoint (last.pt, step_0000006.pt) and the
    # end (final.pt, last.pt again) are one state: one file; step 3's is another
    inodes = {name: st.st_ino for name, st in files.items()}
    assert len({inodes[n] for n in ("final.pt", "healthy.pt", "last.pt", "step_0000006.pt")}) == 1
    assert inodes["step_0000003.pt"] != inodes["last.pt"]
    assert files["last.pt"].st_nlink == 4 and files["step_0000003.pt"].st_nlink == 1
    for name in files:
        assert load_checkpoint(run / "checkpoints" / name)["step"] == (3 if name == "step_0000003.pt" else 6)
    # the end's state, with the log's full length (a resume from any of the names keeps the "end" line)
    assert load_checkpoint(run / "checkpoints" / "step_0000006.pt")["log_bytes"] == (run / "metrics.jsonl").stat().st_size
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_a_resume_replaces_names_and_leaves_the_linked_files_alone(tmp_path, isolated_env):
    run = _run(tmp_path)
    old = load_checkpoint(run / "checkpoints" / "step_0000006.pt")
    train(resume=run, overrides={"train": {"steps": 8}}, progress=False)  # step 8 ends an epoch: a checkpoint
    files = _files(run)
    assert sorted(files) == ["final.pt", "healthy.pt", "last.pt", "step_0000006.pt", "step_0000008.pt"]  # 3 pruned
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 8
    # step 6's file lost last.pt and final.pt to step 8's by renames: its bytes are what they were, and
    # healthy.pt (no check since step 6) still names it
    kept = load_checkpoint(run / "checkpoints" / "step_0000006.pt")
    assert kept["step"] == 6 and kept["payload_sha256"] == old["payload_sha256"]
    assert files["healthy.pt"].st_ino == files["step_0000006.pt"].st_ino and files["step_0000006.pt"].st_nlink == 2
    assert files["last.pt"].st_ino == files["final.pt"].st_ino == files["step_0000008.pt"].st_ino


def test_without_hard_links_the_names_are_copies(tmp_path, isolated_env, monkeypatch):
    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    run = _run(tmp_path)
    files = _files(run)
    assert len({st.st_ino for st in files.values()}) == len(files) == 5
    assert all(st.st_nlink == 1 for st in files.values())
    for name in files:
        load_checkpoint(run / "checkpoints" / name)  # each a complete, verified checkpoint
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_an_interrupted_run_links_last_pt_only(tmp_path, isolated_env, monkeypatch):
    """Stopped by a signal: last.pt of that step, no final.pt, and healthy.pt of another step stays its own."""
    import importlib

    from ganforge.guards import StopFlag
    from ganforge.train import TrainingStopped

    class CtrlC(StopFlag):  # a Ctrl-C during the first step
        def install(self) -> None:
            super().install()
            self.requested, self.signal_name = True, "SIGINT"

    monkeypatch.setattr(importlib.import_module("ganforge.train"), "StopFlag", CtrlC)
    with pytest.raises(TrainingStopped, match="stopped by SIGINT at step 1/6"):
        _run(tmp_path)
    files = _files(tmp_path / "runs" / "tiny")
    assert sorted(files) == ["healthy.pt", "last.pt"]  # healthy.pt: the initial state (step 0)
    assert files["healthy.pt"].st_ino != files["last.pt"].st_ino


# ----------------------------------------------------------------------------------------------
# train-classifier's weights: the user cache, preferred to the shipped ones when present.


def _user_weights(name: str = "mnist") -> str:
    """Write weights of extractor `name` that differ from the shipped ones into the user cache, with the
    SHA-256 train-classifier records; returns that SHA-256."""
    state = torch.load(weights_path(name), weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] * 0.5
    path = user_weights_path(name)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    digest = file_sha256(path)
    recorded_sha256_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def test_the_shipped_weights_are_used_while_the_cache_has_none(isolated_env):
    assert user_weights_path("mnist") == isolated_env / "cache" / "ganforge" / "extractors" / "mnist.pt"
    assert find_weights("mnist") == weights_path("mnist")
    assert load_domain_extractor("mnist").weights_sha256 == features.DOMAIN_EXTRACTORS["mnist"].sha256


def test_weights_in_the_user_cache_are_used_and_said_once(isolated_env, monkeypatch, capsys):
    monkeypatch.setattr(features, "_USER_WEIGHTS_SAID", set())
    digest = _user_weights()
    assert find_weights("mnist") == user_weights_path("mnist")
    assert load_domain_extractor("mnist").weights_sha256 == digest
    assert load_domain_extractor("mnist").weights_sha256 == digest
    err = capsys.readouterr().err
    assert err.count("uses your weights") == 1 and str(user_weights_path("mnist")) in err
    assert load_domain_extractor("fashion-mnist").weights_sha256 == features.DOMAIN_EXTRACTORS["fashion-mnist"].sha256


def test_weights_in_the_user_cache_keep_their_checksum(isolated_env):
    _user_weights()
    path = user_weights_path("mnist")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # changed after train-classifier wrote it
    with pytest.raises(ExtractorError, match="fail the SHA-256 recorded when they were written"):
        load_domain_extractor("mnist")
    recorded_sha256_path(path).unlink()
    with pytest.raises(ExtractorError, match=r"no SHA-256 was recorded.*delete .*mnist.pt to use the shipped"):
        load_domain_extractor("mnist")
    path.write_bytes(weights_path("mnist").read_bytes())  # the shipped weights: their pinned hash is enough
    assert load_domain_extractor("mnist").weights_sha256 == features.DOMAIN_EXTRACTORS["mnist"].sha256


def test_train_classifier_writes_to_the_user_cache_not_the_package(isolated_env, monkeypatch):
    import ganforge.data

    real_load = ganforge.data.load_dataset

    def small(name, root=None, split="train", **kwargs):  # 256 digits: two steps of training
        return real_load("mnist-5k", split=split, limit=256, download=False)

    monkeypatch.setattr(ganforge.data, "load_dataset", small)
    shipped = file_sha256(weights_path("mnist"))
    out, accuracy = features.train_domain_classifier("mnist", epochs=1, progress=False)
    assert out == user_weights_path("mnist") and 0.0 <= accuracy <= 1.0
    assert recorded_sha256_path(out).read_text().split()[0] == file_sha256(out)
    assert file_sha256(weights_path("mnist")) == shipped  # the package is untouched
    assert load_domain_extractor("mnist").weights_sha256 == file_sha256(out)
