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
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable, Optional


def worker_pool(processes: int, initializer: Optional[Callable[[], None]] = None):
    """A ``multiprocessing.Pool`` of ``processes`` spawned workers (use it as a context manager).

    ``initializer`` and the functions mapped over the pool must be importable module-level
    functions, and their arguments picklable: a spawned worker imports them afresh.
    """
    return mp.get_context("spawn").Pool(processes, initializer=initializer)
