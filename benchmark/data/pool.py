"""The process pool behind the data stages that fan out over scans (index, crop cache).

Workers are *spawned*, never forked. A fork copies the parent as it is at that instant:
locks held by its other threads (tqdm's monitor, MLflow's async logger, SQLAlchemy's
connection pool, ITK's and OpenMP's thread pools) stay held in the child with no thread left
to release them, and Python-level signal handlers come along too. Together that hung CI for
15 minutes: a forked worker blocked on such a lock, and the SIGTERM from ``Pool.terminate()``
only set the flag of the inherited ``bench`` SIGTERM handler, which a blocked interpreter
never reads, so the parent waited in ``join`` for ever. A spawned worker starts as a fresh
interpreter with one thread and default signal handlers; it costs about a second of imports,
which is nothing next to a cache build.

A spawned worker normally first re-runs the caller's main script. Ours never need it (the
functions they run live in this package), and re-running it breaks in ways that have nothing
to do with the data: a script without an ``if __name__ == "__main__":`` guard would build the
cache again inside each worker, and code piped to ``python -`` has no file to re-run, so the
pool would respawn failing workers for ever. So the workers are started with ``__main__``
briefly replaced by an empty module, and run none of the caller's code.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import types
from contextlib import contextmanager
from typing import Callable, Optional


@contextmanager
def without_callers_main():
    """Processes spawned inside this block run none of the caller's main script (the training
    loader's workers use it too)."""
    # Pool() starts all its workers before it returns; they read __main__ only then.
    callers_main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = callers_main


def worker_pool(processes: int, initializer: Optional[Callable[[], None]] = None):
    """A ``multiprocessing.Pool`` of ``processes`` spawned workers (use it as a context manager).

    ``initializer`` and the functions mapped over the pool must be module-level functions of
    an importable module (not of the caller's script), and their arguments picklable.
    """
    with without_callers_main():
        return mp.get_context("spawn").Pool(processes, initializer=initializer)
