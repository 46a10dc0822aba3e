"""What guards a training run against the world: signals (a first Ctrl-C, SIGTERM or SIGHUP finishes the
step and saves; a second aborts at once), output that can no longer be written (a closed pipe or
terminal: dropped, never fatal), Python's garbage collector (run by the loop at fixed steps, so
ranks in lockstep do not wait for one another's pauses), and torch.compile's own failures.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any


def raised_in_torch_compile(error: BaseException) -> bool:
    """Whether `error` was raised in torch.compile's machinery (dynamo, inductor, AOT autograd) or the
    code it generated, judged by the files of its traceback."""
    marks = ("torch/_dynamo", "torch/_inductor", "torch/_functorch", "torchinductor")
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if any(mark in name for mark in marks):
            return True
        tb = tb.tb_next
    return False


# The signals that stop a run with a checkpoint: Ctrl-C, `kill`, and SIGHUP (the terminal was closed, an
# ssh session dropped), which would otherwise kill the process without one
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class SafeStream:
    """A text stream (stdout, stderr) whose failed writes never reach the training loop: a pipe whose
    reader has gone (`ganforge train ... | head`) or a terminal that was closed. On the first failure its
    file descriptor is pointed at /dev/null, so later writes, and Python's own flush at exit, succeed
    silently; the run goes on and its files say what it did."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.broken = stream, False

    def _failed(self) -> None:
        self.broken = True
        try:
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture): just stop writing
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self._failed()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._failed()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ... as the stream has them
        return getattr(self.stream, name)


@contextlib.contextmanager
def safe_output() -> Any:
    """sys.stdout and sys.stderr as SafeStreams for the duration (a training run), then as they were."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if isinstance(s, SafeStream) or s is None else SafeStream(s) for s in saved)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP: the loop finishes its step, saves, and stops. A second signal aborts.

    The second signal's KeyboardInterrupt is raised wherever the main thread happens to be. When that is a
    weakref callback or a `__del__`, Python would print "Exception ignored ... Traceback" and carry on;
    `sys.unraisablehook` is therefore wrapped while the flag is installed, and such an interrupt is raised
    again, silently, in the main thread's own code (`_redeliver`). `uninstall` undoes all of it."""

    requested: bool = False
    aborting: bool = False
    signal_name: str = ""
    previous: dict[int, Any] = field(default_factory=dict)
    previous_hook: Any = None
    timer: Any = None  # while a swallowed interrupt is re-delivered: the pending timer (see _later)
    sigint_before: Any = None  # ... and SIGINT's handler before `_redeliver` (None: one not set from Python)

    def install(self) -> None:
        if not _in_main_thread():
            return
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        self.previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    def uninstall(self) -> None:
        self._settle()
        self._restore_signals()
        if self.previous_hook is not None:
            if sys.unraisablehook == self._unraisable:  # (not if someone replaced it since)
                sys.unraisablehook = self.previous_hook
            self.previous_hook = None

    def _restore_signals(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop at once (files are written atomically)
            self._restore_signals()
            self.aborting = True
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        try:  # (after SIGHUP the terminal may be gone: the save matters, not the message)
            print(f"\nganforge: {self.signal_name} received; finishing this step and saving a checkpoint "
                  "(press Ctrl-C again to quit at once)", file=sys.stderr)  # fmt: skip
        except (OSError, ValueError):
            pass

    def _unraisable(self, unraisable: Any) -> None:
        if not (self.aborting and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            (self.previous_hook or sys.__unraisablehook__)(unraisable)
            return
        if self.timer is None and _in_main_thread():  # (a handler can be set only there)
            self.sigint_before = signal.signal(signal.SIGINT, self._redeliver)
            self._later()

    def _later(self) -> None:
        """Interrupt the main thread in a millisecond, from another thread: it takes the interrupt at its next
        bytecode boundary, after this hook has returned."""
        import _thread
        import threading

        def fire() -> None:
            if self.timer is not None:
                _thread.interrupt_main(signal.SIGINT)

        self.timer = threading.Timer(0.001, fire)
        self.timer.daemon = True
        self.timer.start()

    def _redeliver(self, signum: int, frame: Any) -> None:
        hook = StopFlag._unraisable.__code__
        while frame is not None and frame.f_code is not hook:
            frame = frame.f_back
        if frame is not None:  # still inside the hook, where it would be swallowed again: a little later
            self._later()
            return
        self._settle()
        raise KeyboardInterrupt

    def _settle(self) -> None:
        """Cancel a pending re-delivery and give SIGINT back the handler it had before it."""
        if self.timer is None:
            return
        timer, self.timer = self.timer, None
        timer.cancel()
        if signal.getsignal(signal.SIGINT) == self._redeliver and self.sigint_before is not None:
            signal.signal(signal.SIGINT, self.sigint_before)


class LoopGarbageCollector:
    """Python's cyclic garbage collector, run by the training loop itself: every EVERY steps, at the same
    step on every rank, instead of whenever allocations trip its thresholds. With several processes in
    lockstep, an automatic collection pauses one rank at a moment of its own and every other rank waits
    for it at the next gradient sum (docs/benchmarks.md, "Figures behind code defaults"). The objects made before the loop (modules,
    data, imports) are frozen out of its scans, so a collection looks at the loop's own objects only.
    The loop leaves few cycles (about 4 unreachable objects per step, measured), so collecting
    every EVERY steps holds little memory back. `close` restores the collector as it was."""

    EVERY = 200

    def __init__(self) -> None:
        self.was_enabled = gc.isenabled()
        self.freezes = gc.get_freeze_count() == 0  # a caller's own freeze (e.g. a pre-fork server) is left alone
        gc.collect()
        if self.freezes:
            gc.freeze()
        gc.disable()

    def step(self, step: int) -> None:
        if step % self.EVERY == 0:
            gc.collect()

    def close(self) -> None:
        if self.freezes:
            gc.unfreeze()  # objects made before the loop that became garbage during it: collected from here on
        if self.was_enabled:
            gc.enable()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
