"""CPU threads for a training run: as many intra-op threads as the cores that other processes leave free.

Why: a parallel region (one convolution, one matmul) waits for its slowest thread, and a thread whose
core another CPU-bound process holds runs only when the scheduler gives it a turn. On this project's
2-core machine, beside one busy process, the quick start with torch's default two threads ran 3-5x
slower than with one (docs/benchmarks.md, "Training on a busy machine"): the cost of a shared machine
was not a fair share but a stall per parallel region. So, on the CPU, the run measures every few seconds
how much of its cores other processes use (/proc/stat minus this process's own CPU time) and sets
`torch.set_num_threads` to the cores left free (at least one), logging each change.

GANFORGE_THREADS picks the policy: `auto` (the default), `off` (torch's own defaults, as before), or a
number (that many threads, never changed). A run whose OMP_NUM_THREADS is set keeps it (the user chose).
With `auto` the thread count can differ between two runs of the same seed, and matmul reductions then
differ in their last bits: for bit-reproducible CPU runs fix the count (GANFORGE_THREADS=2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Optional

import torch

from ganforge.config import ConfigError
from ganforge.distributed import job_cores

ENV = "GANFORGE_THREADS"
INTERVAL = 2.0  # seconds between two measurements of the other processes' load
# a core counts as free when others use less than this much of it: a little background (an editor, a
# shell, ganforge's own data threads) leaves the thread in place
FREE_BELOW = 0.6
FIRST_WINDOW = 0.5  # seconds: the shortest window the first decision is made on


def usable_cores() -> int:
    """The cores this process may run on (its affinity set, which containers and `taskset` restrict)."""
    return len(job_cores())


def _busy_seconds_of(cores: set[int]) -> Optional[float]:
    """CPU seconds spent busy (not idle or waiting for I/O) so far on `cores`, by every process; None
    without a readable /proc/stat (macOS, Windows)."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy += user + nice + system + irq + softirq + steal
    return busy / tick


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def policy() -> str:
    """auto, off, or a fixed count, from GANFORGE_THREADS (checked: a clear error for anything else)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value in ("auto", "off") or (value.isdigit() and int(value) > 0):
        return value
    raise ConfigError(f"{ENV}={os.environ[ENV]!r}: expected auto, off, or a number of threads (e.g. {ENV}=2)")


class ThreadGovernor:
    """Sets the intra-op thread count to the free cores, re-measured every `interval` seconds; a change
    needs two measurements in a row that agree (a short burst of another process moves nothing)."""

    def __init__(self, max_threads: int, interval: Optional[float] = None,
                 busy: Callable[[], Optional[float]] | None = None, own: Callable[[], float] = _own_seconds,
                 clock: Callable[[], float] = time.monotonic, cores: Optional[set[int]] = None,
                 since: Optional[tuple[float, Optional[float], float]] = None) -> None:  # fmt: skip
        self.cores = cores if cores is not None else set(job_cores())
        self.max_threads = max(1, min(max_threads, len(self.cores)))
        self.interval = INTERVAL if interval is None else interval
        self._busy = busy or (lambda: _busy_seconds_of(self.cores))
        self._own, self._clock = own, clock
        self.threads = torch.get_num_threads()
        self._pending: Optional[int] = None
        # the first window may open before the loop (`since`: snapshot() at the run's start), so the first
        # decision comes at the first step instead of INTERVAL seconds of contended steps later
        self._last = since if since is not None else self._snapshot()
        self.others = 0.0  # cores' worth of CPU the other processes used over the last interval
        self.measured = False  # the first measurement decides alone: nothing to confirm it against

    def _snapshot(self) -> tuple[float, Optional[float], float]:
        return self._clock(), self._busy(), self._own()

    def start(self) -> int:
        """The thread count before the first measurement: the cap (all usable cores)."""
        self.set(self.max_threads)
        return self.threads

    def set(self, n: int) -> None:
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self.threads = n

    def wanted(self, others: float) -> int:
        free = len(self.cores) - others
        return max(1, min(self.max_threads, int(free + FREE_BELOW)))

    def tick(self) -> Optional[tuple[int, int]]:
        """Call once per step (cheap: one clock read until the interval has passed). Returns (old, new)
        when it changed the thread count, else None."""
        now = self._clock()
        if now - self._last[0] < (min(self.interval, FIRST_WINDOW) if not self.measured else self.interval):
            return None
        then, (t0, busy0, own0) = self._snapshot(), self._last
        self._last = then
        if then[1] is None or busy0 is None:
            return None
        self.others = max(0.0, ((then[1] - busy0) - (then[2] - own0)) / max(then[0] - t0, 1e-9))
        want = self.wanted(self.others)
        first, self.measured = not self.measured, True
        if want == self.threads:
            self._pending = None
            return None
        if self._pending != want and not first:  # a measurement that disagrees: wait for a second one
            self._pending = want
            return None
        old, self._pending = self.threads, None
        self.set(want)
        return old, want


def snapshot() -> tuple[float, Optional[float], float]:
    """The clock, the cores' busy seconds and this process's CPU seconds now: a measurement window's start."""
    return time.monotonic(), _busy_seconds_of(set(job_cores())), _own_seconds()


def governor_for_run(device: torch.device, world: int,
                     since: Optional[tuple[float, Optional[float], float]] = None) -> tuple[Optional[ThreadGovernor], str]:  # fmt: skip
    """The run's thread setup (see the module's docstring) and a description for the log. (2D point
    models too: one thread for their tiny MLPs was measured slower alone, 18.6 s against 15.0 s for
    300 steps of `--preset grid25`, the BN recalibration of G_ema over 100,000 latents included.)"""
    if device.type != "cpu":
        return None, "not managed (not a CPU run)"
    how = policy()
    if how == "off":
        return None, f"torch's default ({torch.get_num_threads()}; {ENV}=off)"
    if how != "auto":
        torch.set_num_threads(int(how))
        return None, f"{how} ({ENV}={how})"
    if "OMP_NUM_THREADS" in os.environ:
        return None, f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    if world > 1:
        return None, f"{torch.get_num_threads()} per process ({world} processes)"
    governor = ThreadGovernor(usable_cores(), since=since)
    governor.start()
    return governor, f"auto (at most {governor.max_threads} of {len(governor.cores)} cores, fewer while other processes use them)"
