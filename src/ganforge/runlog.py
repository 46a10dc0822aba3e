"""A run's folder and what the loop writes into it: config.yaml, metrics.jsonl (appended, trimmed back
on resume), the loss plot, the sample grids, the checkpoints and, with train.tensorboard, a TensorBoard
copy of the log; all from rank 0 only.

    RUN/config.yaml  metrics.jsonl  losses.png  samples.png  samples/step_NNNNNNN.png
    RUN/checkpoints/last.pt  final.pt  step_NNNNNNN.pt  healthy.pt  best.pt
    RUN/tensorboard/events.out.tfevents.*  (train.tensorboard)

Checkpoints of the same state (the same step, e.g. final.pt and last.pt) are one file under several
names (hard links; copies where the file system has none). Every checkpoint write replaces its name by
a rename, so writing one name never changes the others.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch

from ganforge.checkpoint import WriteError, atomic_write_bytes, save_checkpoint
from ganforge.config import Config, ConfigError
from ganforge.sample import save_grid, save_scatter


class RunFiles:
    """The files of one run folder. Every write goes through here, and happens on rank 0 only
    (`main`), so the loop itself never asks which rank it is."""

    def __init__(self, run_dir: Path, main: bool = True, tensorboard: bool = False):
        self.run_dir, self.main = run_dir, main
        self.ckpt_dir, self.sample_dir = run_dir / "checkpoints", run_dir / "samples"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.healthy_path = self.ckpt_dir / "healthy.pt"
        self.log_failed = False
        # the checkpoint names written for one state: {(step, rollbacks, entries): names}, this step's only
        self.same_state: dict[tuple[Any, ...], list[str]] = {}
        self.tensorboard = TensorBoardLog(run_dir / "tensorboard") if tensorboard and main else None

    def say(self, *args: Any, **kwargs: Any) -> None:
        """Print (to stderr unless told otherwise), on rank 0."""
        if self.main:
            print(*args, **{"file": sys.stderr, **kwargs})

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl. A failed write (a full disk) loses the record, says so
        once, and never stops training: the checkpoints are what a run cannot lose, and their own
        writes fail loudly."""
        if self.main:
            try:
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                if not self.log_failed:
                    self.say(f"\nganforge: warning: cannot append to {self.metrics_path} ({e.strerror or e}); "
                             "training goes on, but log records are lost until it can.")  # fmt: skip
                self.log_failed = True
            if self.tensorboard is not None:
                self.tensorboard.log(record)

    def log_bytes(self) -> int:
        """metrics.jsonl's length now: stored in each checkpoint, so a resume can cut the log back to it."""
        return self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0

    def write_config(self, cfg: Config) -> None:
        """config.yaml, atomically: a full disk raises WriteError and leaves no empty file behind."""
        if self.main:
            atomic_write_bytes(self.run_dir / "config.yaml", cfg.to_yaml().encode())

    def save(self, name: str | list[str], make: Callable[[], dict[str, Any]]) -> None:
        """checkpoints/NAME (or each of several names) from make() (called on rank 0 only: making a state
        can cost a BN recalibration)."""
        if self.main:
            self.save_state([name] if isinstance(name, str) else name, make())

    def save_periodic(self, state: dict[str, Any], keep: int, step: int) -> None:
        """last.pt, and with `keep` > 0 also step_NNNNNNN.pt, pruned to the `keep` newest."""
        if not self.main:
            return
        self.save_state(["last.pt", *([f"step_{step:07d}.pt"] if keep else [])], state)
        if keep:
            for old in sorted(self.ckpt_dir.glob("step_*.pt"))[:-keep]:
                old.unlink(missing_ok=True)

    def save_state(self, names: list[str], state: dict[str, Any]) -> None:
        """Write `state` once as checkpoints/NAMES[0], and make the other names links to that file.

        The names written earlier for the same state point (this step, as many rollbacks, the same
        entries: healthy.pt at a health check, then last.pt and step_N.pt at that step; last.pt and
        step_N.pt, then final.pt at the end) are linked to the new file too: it differs from theirs only
        in the bookkeeping (the log's length, the training seconds), and holds their current values."""
        key = (state.get("step"), state.get("rollbacks", 0), tuple(sorted(state)))
        self.same_state = {k: v for k, v in self.same_state.items() if k[:2] == key[:2]}
        earlier = [n for n in self.same_state.get(key, []) if n not in names and (self.ckpt_dir / n).exists()]
        first = self.ckpt_dir / names[0]
        save_checkpoint(first, state)
        for name in [*names[1:], *earlier]:
            link_or_copy(first, self.ckpt_dir / name)
        if len(names) > 1 or earlier:
            fsync_dir(self.ckpt_dir)  # the renames themselves durable (as atomic_write_bytes makes its own)
        self.same_state[key] = [*names, *earlier]

    def save_samples(self, fake: torch.Tensor, step: int, points_ref: Optional[torch.Tensor] = None,
                     nrow: Optional[int] = None) -> None:  # fmt: skip
        """samples/step_NNNNNNN.png of `fake` [N, C, H, W] in [-1, 1] (a scatter over `points_ref` for 2D
        points), and samples.png, always the newest."""
        if not self.main:
            return
        path = self.sample_dir / f"step_{step:07d}.png"
        if points_ref is not None:
            save_scatter(fake, path, points_ref, f"step {step}")
        else:
            save_grid(fake, path, nrow)
        atomic_write_bytes(self.run_dir / "samples.png", path.read_bytes())  # drawn once, copied
        if self.tensorboard is not None:
            self.tensorboard.image(path, step)

    def plot(self) -> None:
        if self.main:
            plot_losses(self.metrics_path, self.run_dir / "losses.png")

    def after_crash(self, log_bytes: Optional[int], step: int) -> int:
        """Before a resume from `step`: cut the log back to the checkpoint's length, hide what TensorBoard
        holds of later steps, and delete the temp files of writers killed mid-write. Returns how many log
        lines went."""
        if not self.main:
            return 0
        dropped = trim_log(self.metrics_path, log_bytes)
        for stale in [*self.run_dir.glob(".*.tmp-*"), *self.ckpt_dir.glob(".*.tmp-*")]:
            stale.unlink(missing_ok=True)
        if self.tensorboard is not None:
            self.tensorboard.purge_step = step + 1  # the steps after the checkpoint are redone
        return dropped

    def close(self) -> None:
        """Flush and close what stays open during a run (the TensorBoard writer)."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` name the file `src` names: a hard link, put in place by a rename (atomic, like every
    checkpoint write); a copy where the file system has no hard links. Raises WriteError on failure."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
    except OSError:  # no hard links here (FAT, some network shares), or too many
        atomic_write_bytes(dst, src.read_bytes())
        return
    try:
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {dst}: {e.strerror or e} (errno {e.errno}); the previous version is "
                         "intact. Free some space or choose a writable folder (--runs-dir), then resume the run "
                         "with `ganforge train --resume`.") from None  # fmt: skip


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # (not possible everywhere, e.g. on Windows)
        pass


def require_tensorboard() -> None:
    """train.tensorboard's package, checked before a run starts."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard: the tensorboard package is not installed; install it with "
                          "pip install 'ganforge[tensorboard]', or leave train.tensorboard=false "
                          "(metrics.jsonl and losses.png hold the same numbers).") from None  # fmt: skip


class TensorBoardLog:
    """A TensorBoard copy of metrics.jsonl (which stays the record: resume and `compare` read it): every
    number of every record as a scalar (`train/d_loss`, `health/diversity_ratio`, `eval/<metric>`, ...),
    and each sample grid as an image. The writer opens at the first record (tensorboard imports then)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        # a resume: TensorBoard hides the events of this step on, which the resumed run logs again
        self.purge_step: Optional[int] = None
        self.writer: Any = None
        self.step = 0  # records without a step (the end's "ranks") go at the last step seen

    def _writer(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step, flush_secs=10)
        return self.writer

    def log(self, record: dict[str, Any]) -> None:
        self.step = step = record.get("step", self.step)
        event = record.get("event")
        if event == "eval":
            scalars = {f"eval/{record['metric']}": record["value"]}
        else:
            scalars = {f"{event or 'train'}/{key}": value for key, value in record.items()
                       if key not in ("step", "time", "event") and isinstance(value, (int, float))}  # fmt: skip
        writer = self._writer()
        for tag, value in scalars.items():
            writer.add_scalar(tag, float(value), step, walltime=record.get("time"))

    def image(self, png: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            pixels = np.asarray(im.convert("RGB"))  # [H, W, 3] uint8
        self._writer().add_image("samples", pixels, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_log(metrics_path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line cut short by a crash (SIGKILL mid-write) is skipped."""
    return _parse_log(metrics_path.read_text(errors="replace"))


def _parse_log(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trim_log(metrics_path: Path, size: Optional[int]) -> int:
    """Before a resume: cut metrics.jsonl back to `size` bytes, its length when the checkpoint was
    written (what came later belongs to steps that are redone, or is a line torn by a crash). Older
    checkpoints without the length: drop only torn lines. Returns how many lines went."""
    if not metrics_path.is_file():
        return 0
    raw = metrics_path.read_bytes()
    if size is not None and len(raw) > size:
        kept = raw[:size]
    else:  # keep every complete record
        kept = "".join(json.dumps(r) + "\n" for r in _parse_log(raw.decode(errors="replace"))).encode()
    if kept == raw:
        return 0
    atomic_write_bytes(metrics_path, kept)
    return raw.count(b"\n") + (not raw.endswith(b"\n")) - kept.count(b"\n")


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    """Loss curves and D's mean outputs from metrics.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(metrics_path)
    rows = [r for r in records if "d_loss" in r or "vae_loss" in r]
    evals = [r for r in records if r.get("event") == "eval"]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3 if evals else 2, figsize=(16 if evals else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    if "vae_loss" in rows[0]:  # a VAE: the negative ELBO and its two terms
        ax1.plot(steps, [r["vae_loss"] for r in rows], label="-ELBO (loss)")
        ax1.plot(steps, [r["recon_nll"] for r in rows], label="reconstruction NLL")
        ax1.set_ylabel("nats per image")
        ax2.plot(steps, [r["kl"] for r in rows], label="KL(q(z|x) || p(z))", color="C2")
        ax2.set_title("KL term")
        ax1.set_title("VAE loss")
        for ax in (ax1, ax2):
            ax.set_xlabel("step")
            ax.legend()
    else:
        _plot_gan_curves(ax1, ax2, steps, rows)
    if evals:
        axes[2].plot([r["step"] for r in evals], [r["value"] for r in evals], marker="o")
        axes[2].set_xlabel("step")
        axes[2].set_title(f"{evals[-1]['metric']} (lower is better)")
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)


def _plot_gan_curves(ax1: Any, ax2: Any, steps: list[int], rows: list[dict[str, Any]]) -> None:
    ax1.plot(steps, [r["d_loss"] for r in rows], label="D loss")
    ax1.plot(steps, [r["g_loss"] for r in rows], label="G loss")
    ax1.set_xlabel("step")
    ax1.set_title("losses")
    ax1.legend()
    probabilities = "d_real" in rows[0]  # critics (wgan, hinge, ...) log raw scores instead
    suffix = "" if probabilities else "_score"
    ax2.plot(steps, [r["d_real" + suffix] for r in rows], label="mean D(x)")
    ax2.plot(steps, [r["d_fake" + suffix] for r in rows], label="mean D(G(z))")
    if probabilities:
        ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.set_title("discriminator outputs" if probabilities else "critic scores")
    ax2.legend()


def new_run_dir(cfg: Config) -> Path:
    name = (
        cfg.run.name
        or f"{cfg.data.name.split(':')[0]}-{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    run_dir = Path(cfg.run.runs_dir) / name
    if (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"run.name: the run folder '{run_dir}' already holds a run; continue it with "
            f"'ganforge train --resume {run_dir}', or pick another --name."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")  # a read-only folder fails here, before any training time is spent
        probe.unlink()
    except OSError as e:
        raise WriteError(
            f"cannot create the run folder '{run_dir}': {e.strerror or e}. Choose a writable folder with "
            "--runs-dir (or run.runs_dir)."
        ) from None
    return run_dir
