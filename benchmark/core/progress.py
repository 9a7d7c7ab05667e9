"""Every progress bar of the project, from one function: ``progress_bar``.

On a terminal it is a tqdm bar. Anywhere else (stderr to a file, a pipe, a cluster job's log) a
redrawn bar is a wall of carriage returns in the log, so it becomes a plain line each time another
``every_percent`` of the work is done (and at the end), never a carriage return:

    epoch 1/20: 30% 12/40 batch, 4.1 s elapsed, loss=0.6931

A bar without a known total writes a line every ``every_seconds`` instead. The object answers the
part of tqdm's interface the project uses (iteration, ``update``, ``set_postfix``,
``set_description``, ``close``, ``n``, ``total``, a ``with`` block).
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", disable: bool = False, leave: bool = True, initial: int = 0,
                 every_percent: int = 10, every_seconds: float = 30.0, file=None):
    """A tqdm bar on a terminal, else a ``LineProgress`` (one line per ``every_percent`` done)."""
    from tqdm.auto import tqdm
    stream = file if file is not None else sys.stderr
    if disable or _is_terminal(stream):
        # mininterval: a redraw at most twice a second, so a fast loop does not spend its time drawing
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, initial=initial,
                    file=stream, mininterval=0.5)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        every_percent=every_percent, every_seconds=every_seconds, file=stream)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False


class LineProgress:
    """Progress as whole lines (see the module's docstring)."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it", initial=0, every_percent=10,
                 every_seconds=30.0, file=None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.every_percent = max(1, int(every_percent))
        self.every_seconds = every_seconds
        self.file = file if file is not None else sys.stderr
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_step = self._step(initial)
        self._closed = False

    def _step(self, n: int) -> int:
        return int(100 * n / self.total) // self.every_percent if self.total else 0

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:
            step = self._step(self.n)
            if step > self._last_step and self.n < self.total:
                self._last_step = step
                self._line()
        elif now - self._last_time >= self.every_seconds:
            self._last_time = now
            self._line()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        done = f"{int(100 * self.n / self.total)}% {self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {done} {self.unit}" if self.desc else f"{done} {self.unit}",
                 f"{elapsed:.1f} s elapsed"]
        if self.postfix:
            parts.append(self.postfix)
        self.file.write(", ".join(parts) + "\n")
        self.file.flush()
