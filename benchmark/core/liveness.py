"""Is the process that owns a RUNNING record still alive?

A run or trial killed hard (SIGKILL, OOM killer, a reboot) never gets to mark itself
finished, so MLflow and Optuna keep showing it as RUNNING forever. Every run records the
host and pid that executed it; on the same host a dead pid proves the record is stale,
and the suite and the tuner can then resume or fail it instead of waiting on it. On another
host nothing can be proved, so such records are left alone.
"""
from __future__ import annotations

import contextlib
import os
import platform


def owner_tags() -> dict[str, str]:
    """Tags naming the process that is executing a run now (set again on every resume).
    Inside a Dask worker also the worker's and its scheduler's addresses: on a cluster the
    scheduler, not a pid, says whether that owner is still alive (``benchmark.campaigns.cluster``)."""
    import sys

    import torch
    tags = {"host": platform.node(), "pid": str(os.getpid()),
            # e.g. two suite workers at OMP_NUM_THREADS=1 each on a 2-core machine
            "torch.threads": str(torch.get_num_threads()),
            # empty outside a worker: a run resumed outside the cluster must not keep naming
            # the (dead) worker that ran it before
            "dask.worker": "", "dask.scheduler": ""}
    if "distributed" in sys.modules:      # only a process that uses Dask can be one of its workers
        from distributed import get_worker
        with contextlib.suppress(ValueError):    # not inside a worker's task
            worker = get_worker()
            tags.update({"dask.worker": worker.address, "dask.scheduler": worker.scheduler.address})
    return tags


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # a zombie has exited; only its parent has not reaped it yet
    with contextlib.suppress(Exception):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    return True


def owner_is_dead(tags: dict[str, str]) -> bool | None:
    """True: the recorded owner ran on this host and has exited; False: it is alive here;
    None: unknown (another host, or a record without a pid)."""
    pid, host = tags.get("pid"), tags.get("host")
    if not pid or host != platform.node():
        return None
    try:
        return not pid_alive(int(pid))
    except ValueError:
        return None


class HostLock:
    """An exclusive lock on a file, shared by the processes of one host, that can be let go
    early (``release`` is idempotent): a suite worker holds it from "which cell is free?"
    until its MLflow run exists and names its pid, so no two workers pick the same cell."""

    def __init__(self, path):
        self.path = path
        self._f = None

    def __enter__(self) -> "HostLock":
        import fcntl
        from pathlib import Path
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it, without waiting; False if one does (the
        lock then stays free here: ``release`` is a no-op). The kernel lets go of it when the
        holding process ends, however it ends."""
        import fcntl
        from pathlib import Path
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._f = f
        return True

    def release(self, *_args) -> None:
        import fcntl
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __exit__(self, *exc) -> None:
        self.release()
