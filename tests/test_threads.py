"""ganforge.threads: the intra-op thread count follows the cores other processes leave free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from ganforge import threads
from ganforge.config import ConfigError, build_config
from ganforge.threads import ThreadGovernor, governor_for_run

from .conftest import tiny


class FakeMachine:
    """A clock, the busy CPU seconds of the cores and this process's own, advanced by hand."""

    def __init__(self) -> None:
        self.now = self.busy = self.own = 0.0

    def advance(self, seconds: float, others: float, ours: float = 1.0) -> None:
        self.now += seconds
        self.busy += seconds * (others + ours)
        self.own += seconds * ours

    def governor(self, max_threads: int = 2, cores: int = 2) -> ThreadGovernor:
        return ThreadGovernor(max_threads, interval=2.0, busy=lambda: self.busy, own=lambda: self.own,
                              clock=lambda: self.now, cores=set(range(cores)))  # fmt: skip


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_thread_beside_a_busy_process_and_back_when_it_stops(keep_threads):
    m = FakeMachine()
    g = m.governor()
    assert g.start() == 2
    m.advance(0.3, others=1.0)
    assert g.tick() is None  # before the first window (FIRST_WINDOW): nothing measured
    m.advance(0.5, others=1.0)
    assert g.tick() == (2, 1) and torch.get_num_threads() == 1  # the first measurement decides alone
    m.advance(1.0, others=0.0)
    assert g.tick() is None and g.threads == 1  # then every INTERVAL: 1 s is too soon
    assert g.others == pytest.approx(1.0)
    m.advance(2.0, others=0.0)
    assert g.tick() is None and g.threads == 1  # one quiet interval is not enough to change back
    m.advance(2.0, others=1.0)
    assert g.tick() is None and g.threads == 1  # (and a disagreeing one resets the wait)
    m.advance(2.0, others=0.1)
    assert g.tick() is None
    m.advance(2.0, others=0.2)
    assert g.tick() == (1, 2) and torch.get_num_threads() == 2


def test_a_first_measurement_that_agrees_still_makes_later_changes_wait_for_a_second(keep_threads):
    m = FakeMachine()
    g = m.governor()
    g.start()
    m.advance(1.0, others=0.0)
    assert g.tick() is None and g.measured  # two threads, and two are wanted
    m.advance(0.6, others=1.0)
    assert g.tick() is None  # the first window was the short one; from here every INTERVAL
    m.advance(1.5, others=1.0)
    assert g.tick() is None and g.threads == 2  # one busy measurement is not enough
    m.advance(2.1, others=1.0)
    assert g.tick() == (2, 1)


@pytest.mark.parametrize("others, cores, cap, want", [
    (0.0, 2, 2, 2), (0.5, 2, 2, 2), (0.7, 2, 2, 1), (2.0, 2, 2, 1), (3.0, 2, 2, 1),
    (1.0, 8, 8, 7), (2.5, 8, 8, 6), (2.7, 8, 8, 5), (0.0, 8, 4, 4), (0.0, 2, 1, 1),
])  # fmt: skip
def test_threads_wanted_are_the_free_cores_within_the_cap(others, cores, cap, want):
    assert FakeMachine().governor(cap, cores).wanted(others) == want


def test_policy_from_the_environment(monkeypatch, keep_threads):
    cpu = torch.device("cpu")
    monkeypatch.setenv("GANFORGE_THREADS", "off")
    assert governor_for_run(cpu, 1)[0] is None
    monkeypatch.setenv("GANFORGE_THREADS", "1")
    assert governor_for_run(cpu, 1)[0] is None and torch.get_num_threads() == 1
    monkeypatch.setenv("GANFORGE_THREADS", "auto")
    governor, how = governor_for_run(cpu, 1)
    assert governor.max_threads == threads.usable_cores() and "at most" in how
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert governor_for_run(cpu, 1)[0] is None  # the user's own choice stays
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert governor_for_run(cpu, 2)[0] is None  # --nproc: cores // nproc each, fixed by the launcher
    assert governor_for_run(torch.device("meta"), 1)[0] is None
    for bad in ("many", "0", "-2", "1.5"):
        monkeypatch.setenv("GANFORGE_THREADS", bad)
        with pytest.raises(ConfigError, match="expected auto, off, or a number of threads"):
            threads.policy()


@pytest.mark.skipif(not os.path.exists("/proc/stat") or threads.usable_cores() < 2, reason="needs /proc and 2 cores")
def test_a_busy_process_is_measured(keep_threads):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        g = ThreadGovernor(2, interval=1.0)
        time.sleep(1.5)
        g.tick()
        assert g.measured and g.others >= 0.5, g.others  # one process's worth, less what others took from it
    finally:
        busy.kill()
        busy.wait()


def test_a_run_logs_its_thread_setup(tmp_path, monkeypatch, keep_threads):
    from ganforge.train import train

    monkeypatch.setenv("GANFORGE_THREADS", "auto")
    monkeypatch.setattr(threads, "INTERVAL", 0.0)  # measure at every step
    torch.set_num_threads(1)  # the caller's own setting: the run may change it, and must put it back
    run = train(build_config(overrides=tiny(tmp_path)), progress=False)
    assert torch.get_num_threads() == 1
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = [e for e in events if e.get("event") == "threads"][0]
    assert first["step"] == 0 and first["policy"].startswith("auto (at most")


def test_a_bad_thread_setting_fails_before_a_run_folder(tmp_path, monkeypatch):
    from ganforge.cli import main

    monkeypatch.setenv("GANFORGE_THREADS", "lots")
    assert main(["train", "--steps", "1", "--no-progress", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()
