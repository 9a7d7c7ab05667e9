"""Ctrl-C and SIGTERM as exceptions that never land half way through a write.

``bench`` turns SIGTERM into ``Terminated`` (a ``KeyboardInterrupt``), so that a kill from a
batch scheduler or a session's end closes a run KILLED with its last checkpoint, and the next
command resumes it. An exception raised at an arbitrary bytecode can land inside a write,
though. Inside ``torch.save`` the zip writer's cleanup replaced it by a ``RuntimeError``
("unexpected pos"), so the run ended FAILED and nothing resumed it; inside an MLflow call it
can leave the call half done. Inside ``held()`` both signals are noted and raised as soon as
the outermost such block ends: the checkpoint is written whole, the MLflow call completes, and
the interrupt follows at once. A second signal while one is held is raised at once, so a
write that hangs (a tracking server that stopped answering) can still be interrupted.

Signals are delivered to the main thread only, so only the main thread holds them; ``held()``
in another thread holds nothing.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

__all__ = ["Terminated", "held", "install_handlers", "restore_handlers"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's time limit, torchrun stopping its workers) handled like
    Ctrl-C, so a run is closed as KILLED with its last checkpoint instead of left RUNNING."""


_depth = 0                                   # nesting of held() in the main thread
_pending: Optional[KeyboardInterrupt] = None  # the interrupt held until the outermost block ends


def _deliver(interrupt: KeyboardInterrupt) -> None:
    global _pending
    if _depth and _pending is None:
        _pending = interrupt
        return
    _pending = None
    raise interrupt


def _on_sigterm(signum, frame) -> None:
    _deliver(Terminated())


def _on_sigint(signum, frame) -> None:
    _deliver(KeyboardInterrupt())


def install_handlers() -> dict:
    """Route SIGTERM and Ctrl-C through ``held()`` (main thread only). Returns the previous
    handlers, for ``restore_handlers``: a caller that runs ``bench`` in its own process (tests,
    a notebook) must not keep a handler that raises into its code."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGTERM, _on_sigterm),
                                                                  (signal.SIGINT, _on_sigint))}


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then raise what arrived meanwhile (even if
    the block itself raised: the user's interrupt outranks the error it cut short)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            interrupt, _pending = _pending, None
            raise interrupt
