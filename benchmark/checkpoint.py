"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one (``os.replace`` is atomic on POSIX). A crash or a full disk while
writing therefore leaves the previous checkpoint intact, never a truncated file.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import TrainingError


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Call ``write_fn(fileobj)`` into a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _cleanup(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TrainingError(f"disk full while writing {path}; the previous file is intact") from None
        raise TrainingError(f"could not write {path}: {e.strerror or e}") from None
    except BaseException:
        _cleanup(tmp)
        raise


def _cleanup(tmp: str):
    try:
        os.unlink(tmp)
    except OSError:
        pass


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing error
        raise TrainingError(f"checkpoint {path} is unreadable ({type(e).__name__})") from None
