"""Checkpoints: state dicts only, written atomically, checksummed, loaded with weights_only=True.

A checkpoint is a plain dict (G, D, optimizer states, step, nimg, RNG states, config, version)
that `torch.load(path, weights_only=True)` can read anywhere; nothing in it executes code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
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


def load_checkpoint(path: Path, verify: bool = True, advise: bool = True) -> dict[str, Any]:
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
            f"(weights_only=True rejected it: {str(e).splitlines()[0]}). ganforge never runs code from a "
            "model file; only load checkpoints written by ganforge."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is damaged or truncated ({type(e).__name__}: {str(e).splitlines()[0]}). "
            + (_alternatives(path) if advise else "")
        ) from None
    if not isinstance(record, dict) or "format_version" not in record:
        raise CheckpointError(f"'{path}' is not a ganforge checkpoint (no format_version).")
    if record["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format {record['format_version']}, newer than this ganforge "
            f"understands ({FORMAT_VERSION}); upgrade ganforge."
        )
    if verify:
        expected = record.get("payload_sha256")
        payload = {k: v for k, v in record.items() if k not in ("format_version", "payload_sha256")}
        if expected != payload_digest(payload):
            raise CheckpointError(
                f"checkpoint '{path}' failed its checksum: the file was changed or damaged after it was "
                "written. " + (_alternatives(path) if advise else "")
            )
    return record


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
