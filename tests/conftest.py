"""Shared fixtures: where the real data is, and a tiny config that trains in a second."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A fixed thread count for every test's training (ganforge.threads' `auto` follows the machine's load,
# and the thread count changes matmuls' last bits: the tests that compare two runs bit for bit must not
# depend on what else runs). tests/test_threads.py sets `auto` where it tests it.
os.environ.setdefault("GANFORGE_THREADS", str(max(1, min(2, os.cpu_count() or 1))))


def shared_data() -> Path | None:
    """The real datasets: $GANFORGE_DATA, else ../shared/data beside the checkout."""
    for candidate in (os.environ.get("GANFORGE_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def data_root() -> Path:
    root = shared_data()
    if root is None:
        pytest.skip(
            "real data not found: set GANFORGE_DATA to a folder holding mnist/ (see README)"
        )
    return root


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No GANFORGE_DATA and an empty user cache: nothing is found unless the test puts it there."""
    monkeypatch.delenv("GANFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def tiny(tmp_path: Path, **train) -> dict:
    """Overrides for a run that takes about a second: mnist-5k, 4-channel nets, batch 8."""
    return {
        "data": {"name": "mnist-5k", "limit": 64, "download": False},
        "model": {"g_channels": 4, "d_channels": 4, "z_dim": 8},
        "train": {
            "batch_size": 8,
            "steps": 6,
            "log_every": 2,
            "checkpoint_every": 3,
            "n_samples": 4,
            "device": "cpu",
            **train,
        },
        "run": {"runs_dir": str(tmp_path / "runs"), "name": "tiny"},
    }


def served_runs(root: Path) -> list[Path]:
    """Two tiny trained runs on mnist-5k for `ganforge serve`: class-conditional with EMA, and plain."""
    from ganforge import train
    from ganforge.config import build_config

    made = []
    for name, conditional in (("cond", True), ("plain", False)):
        overrides = tiny(root, ema_beta=0.9)
        overrides["model"]["conditional"] = conditional
        overrides["run"]["name"] = name
        made.append(train(build_config(overrides=overrides), progress=False))
    return made
