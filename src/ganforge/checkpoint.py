"""Checkpoints: state dicts only, written atomically, checksummed, loaded with weights_only=True.

A checkpoint is a plain dict (G, D, optimizer states, step, nimg, RNG states, config, version)
that `torch.load(path, weights_only=True)` can read anywhere; nothing in it executes code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, unsafe or of an unknown format; the message says which."""


def payload_digest(obj: Any) -> str:
    """SHA-256 over a nested structure of dicts, lists, tensors and scalars (order-independent keys)."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for key in sorted(x, key=repr):
                h.update(repr(key).encode())
                walk(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                walk(item)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


class WriteError(CheckpointError):
    """A file could not be written (disk full, no permission, ...); the previous version is intact."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half.

    A failed write (disk full, read-only folder) raises WriteError; the old file, if any, is untouched
    and no temporary file is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise WriteError(
            f"cannot write {path}: {e.strerror or e} (errno {e.errno}); {kept}. Free some space or "
            "choose a writable folder (--runs-dir), then resume the run with `ganforge train --resume`."
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from ganforge import __version__

    payload = {k: v for k, v in state.items() if k not in ("format_version", "payload_sha256")}
    payload["ganforge_version"] = __version__
    record = {
        "format_version": FORMAT_VERSION,
        "payload_sha256": payload_digest(payload),
        **payload,
    }
    buffer = io.BytesIO()
    torch.save(record, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _first_line(e: BaseException) -> str:
    """An exception as one line for a message: its type, and its text's first line when it has one
    (an empty file raises errors whose text is empty)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class MissingEntryError(CheckpointError, KeyError):
    """A checkpoint lacks an entry that the code reading it needs (also a KeyError, as dicts raise)."""

    __str__ = RuntimeError.__str__  # the message as written, not KeyError's repr of it


class Checkpoint(dict):
    """A loaded checkpoint: a plain dict, except that a missing entry raises MissingEntryError naming
    the file and the entry, not a bare KeyError. Entries are only required where they are read, so
    checkpoints of older versions (fewer entries) load as before."""

    def __init__(self, record: dict[str, Any], path: Path, advise: bool):
        super().__init__(record)
        self.path, self.advise = path, advise

    def __missing__(self, key: Any) -> Any:
        raise MissingEntryError(
            f"checkpoint '{self.path}' has no '{key}' entry, which is needed here (it holds "
            f"{', '.join(map(str, self)) or 'nothing'}): it was not written by ganforge's training, or was "
            "edited. " + (_alternatives(self.path) if self.advise else "")
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_state_dict(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in x.items())


def _is_optimizer_state(x: Any) -> bool:
    return isinstance(x, dict) and isinstance(x.get("state"), dict) and isinstance(x.get("param_groups"), list)


# The entries that training and sampling read, each checked when present (what an entry must be, and
# the check). Absent entries are caught where they are read (see Checkpoint): older versions lack some.
ENTRY_TYPES: dict[str, tuple[str, Any]] = {
    "G": ("a state dict (names to tensors)", _is_state_dict),
    "D": ("a state dict (names to tensors)", _is_state_dict),
    "G_ema": ("a state dict (names to tensors)", _is_state_dict),
    "opt_G": ("an optimizer state dict (with 'state' and 'param_groups')", _is_optimizer_state),
    "opt_D": ("an optimizer state dict (with 'state' and 'param_groups')", _is_optimizer_state),
    "step": ("a non-negative integer", lambda x: _is_int(x) and x >= 0),
    "nimg": ("a non-negative integer", lambda x: _is_int(x) and x >= 0),
    "rng": ("a dict of generator states", lambda x: isinstance(x, dict)),
    "config": ("a dict (the resolved config)", lambda x: isinstance(x, dict)),
    "dataset": ("a dict with the image count 'n'", lambda x: isinstance(x, dict) and _is_int(x.get("n"))),
    "cluster_labels": ("a tensor", lambda x: isinstance(x, torch.Tensor)),
    "pool_a": ("a tensor of images", lambda x: isinstance(x, torch.Tensor) and x.dim() == 4),
    "pool_b": ("a tensor of images", lambda x: isinstance(x, torch.Tensor) and x.dim() == 4),
}


def _describe(x: Any) -> str:
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_record(path: Path, record: Any) -> None:
    """Refuse a record that is not a ganforge checkpoint of a format this version reads, or whose
    entries are of the wrong kind (a crafted or edited file), before any code uses it."""
    if not isinstance(record, dict) or "format_version" not in record:
        raise CheckpointError(
            f"'{path}' is not a ganforge checkpoint (no format_version); pass a .pt file written by "
            "`ganforge train`, or its run folder."
        )
    version = record["format_version"]
    if not _is_int(version) or version < 1:
        raise CheckpointError(
            f"'{path}' is not a ganforge checkpoint of a known format: its format_version is "
            f"{_describe(version)}, not a positive integer (this ganforge writes {FORMAT_VERSION}). "
            "The file was edited or written by another program; use a checkpoint written by `ganforge train`."
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format {version}, newer than this ganforge "
            f"understands ({FORMAT_VERSION}); upgrade ganforge."
        )
    for key, (what, ok) in ENTRY_TYPES.items():
        if key in record and not ok(record[key]):
            raise CheckpointError(
                f"checkpoint '{path}' is malformed: its '{key}' entry is {_describe(record[key])}, "
                f"not {what}. The file was edited or written by another program; use a checkpoint "
                "written by `ganforge train`."
            )


def load_checkpoint(path: Path, verify: bool = True, advise: bool = True) -> Checkpoint:
    """Load and verify a checkpoint; a damaged one raises CheckpointError naming the run's intact
    checkpoints (`advise`; off when probing those alternatives themselves)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist.")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load '{path}': it contains objects other than tensors and plain data "
            f"(weights_only=True rejected it: {_first_line(e)}). ganforge never runs code from a "
            "model file; only load checkpoints written by ganforge."
        ) from None
    except Exception as e:  # damage surfaces as many kinds (EOFError, IndexError, KeyError, TypeError, ...)
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint '{path}' is damaged or truncated "
            f"({'an empty file, 0 bytes' if size == 0 else f'{size} bytes; {_first_line(e)}'}). "
            + (_alternatives(path) if advise else "")
        ) from None
    _check_record(path, record)
    if verify:
        expected = record.get("payload_sha256")
        payload = {k: v for k, v in record.items() if k not in ("format_version", "payload_sha256")}
        if expected != payload_digest(payload):
            raise CheckpointError(
                f"checkpoint '{path}' failed its checksum: the file was changed or damaged after it was "
                "written. " + (_alternatives(path) if advise else "")
            )
    return Checkpoint(record, path, advise)


def _alternatives(path: Path) -> str:
    """The other checkpoints beside `path` that load and verify, newest step first, as advice."""
    intact = []
    for other in sorted(path.parent.glob("*.pt")):
        if other == path:
            continue
        try:
            intact.append((load_checkpoint(other, advise=False)["step"], other))
        except CheckpointError:
            continue
    if not intact:
        return "No other intact checkpoint of this run was found; re-run training."
    intact.sort(key=lambda t: -t[0])
    listed = ", ".join(f"{o.name} (step {step})" for step, o in intact)
    step, best = intact[0]
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return (f"Intact checkpoints of this run: {listed}. Continue from the newest with: "
            f"ganforge train --resume {run_dir} --from {best.name}")  # fmt: skip


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's newest checkpoint (last.pt, else final.pt)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("last.pt", "final.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(
            f"'{path}' holds no checkpoint (looked for checkpoints/last.pt and checkpoints/final.pt); "
            "is it a ganforge run folder that trained for at least one checkpoint interval?"
        )
    raise CheckpointError(f"'{path}' is neither a checkpoint file nor a run folder.")
