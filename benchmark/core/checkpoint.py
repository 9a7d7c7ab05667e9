"""Atomic, verified checkpoint files.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one (``os.replace`` is atomic on POSIX). A crash or a full disk while
writing therefore leaves the previous checkpoint intact, never a truncated file.

Every checkpoint ``X.pt`` has a digest file ``X.pt.sha256`` beside it, written *before* the
checkpoint is renamed into place and naming both the new and the previous content's sha256:
whichever of the two files a crash leaves, the checkpoint on disk matches one of them.
Loading checks the digest first (random bytes or a zeroed tensor in the file are refused with
one line naming it) and then unpickles with ``weights_only=True``, so a crafted file can
execute nothing.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmark.core.errors import TrainingError
from benchmark.core.interrupts import held


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Call ``write_fn(fileobj)`` into a temp file beside ``path`` and rename it into place;
    Ctrl-C and SIGTERM wait for the end (``interrupts.held``)."""
    with held():
        _commit(_write_temp(Path(path), write_fn), Path(path))


def _write_temp(path: Path, write_fn) -> str:
    """``write_fn(fileobj)`` into a fsynced temp file beside ``path``; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _cleanup(tmp)
        _raise_write_error(path, e)
    except BaseException:
        _cleanup(tmp)
        raise
    return tmp


def _commit(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        _cleanup(tmp)
        _raise_write_error(path, e)


def _raise_write_error(path: Path, e: OSError):
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise TrainingError(f"disk full while writing {path}; the previous file is intact") from None
    raise TrainingError(f"could not write {path}: {e.strerror or e}") from None


def _cleanup(tmp: str):
    try:
        os.unlink(tmp)
    except OSError:
        pass


def digest_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def _accepted_digests(path: Path) -> list[str]:
    try:
        lines = digest_path(path).read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return []
    return [ln.split()[0] for ln in lines if ln.strip()]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically, with its digest (module docstring). Ctrl-C and
    SIGTERM wait for the end (``interrupts.held``): raised inside ``torch.save`` one became a
    ``RuntimeError``, and the run ended FAILED where it should have been KILLED, resumable."""
    with held():
        _save_checkpoint(state, Path(path))


def _save_checkpoint(state: dict[str, Any], path: Path) -> None:
    tmp = _write_temp(path, lambda f: torch.save(state, f))
    try:
        new = _sha256_file(Path(tmp))
        old = _accepted_digests(path)[:1] if path.exists() else []
        lines = "".join(f"{d}  {path.name}\n" for d in [new, *old])
        atomic_write_bytes(digest_path(path), lambda f: f.write(lines.encode()))
    except BaseException:
        _cleanup(tmp)
        raise
    _commit(tmp, path)


def _sha256_file(path: Path) -> str:
    from benchmark.core.provenance import sha256_file
    return sha256_file(path)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint and its digest (missing files are fine)."""
    for p in (Path(path), digest_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    """The state dict of a checkpoint that matches its digest; TrainingError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    accepted = _accepted_digests(path)
    if not accepted:
        raise TrainingError(f"checkpoint {path} has no digest file {digest_path(path).name}; refusing to load an "
                            f"unverified checkpoint")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() not in accepted:
        raise TrainingError(f"checkpoint {path} does not match its sha256 digest (corrupted on disk); refusing it")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a crafted or foreign file is a user-facing error
        raise TrainingError(f"checkpoint {path} is not a plain weights file ({type(e).__name__}); refusing it") from None
    if not isinstance(state, dict) or not {"model", "config", "epoch"} <= set(state):
        raise TrainingError(f"checkpoint {path} is not a lidc-bench checkpoint (no model/config/epoch)")
    return state


#: what the published ``best.pt`` holds: the weights and what is needed to rebuild and cite them.
#: The optimiser, scheduler and scaler states (twice the weights for Adam) stay in ``last.pt``,
#: the only checkpoint a run resumes from.
PUBLISHED_KEYS = ("model", "config", "epoch", "run_id", "best")


def published_state(state: dict[str, Any]) -> dict[str, Any]:
    """The weights-only part of a training state (``PUBLISHED_KEYS``)."""
    return {k: state[k] for k in PUBLISHED_KEYS if k in state}


def check_resume_epoch(path: Path, epoch: Any, epochs: int) -> int:
    """The epoch a checkpoint says it completed, refused unless a whole number in [0, epochs]."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise TrainingError(f"checkpoint {path} says it completed epoch {epoch!r}, not a whole number between 0 and "
                            f"the run's {epochs} epochs; refusing it")
    return epoch
