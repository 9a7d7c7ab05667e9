"""A timm-style name -> factory registry, shared by architectures and losses.

A decorator registers a factory under a name with metadata; ``create(name, **kwargs)``
builds it; ``names()`` lists them. Unknown names raise :class:`UsageError` listing the
closest registered names. Aliases (``transfuse`` -> ``transfuse_s``) resolve to a
canonical entry so users can type the family name.

Registration is made independent of import order by the *package* that owns the
registry: ``architectures/__init__.py`` and ``benchmark/losses/__init__.py`` import every
module in their folder explicitly, and every lookup goes through a function that imports
that package first.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UsageError


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    family: str = ""
    paper: str = ""
    #: ``search_space(trial) -> dict`` of kwargs/config overrides for Optuna (see benchmark.tune)
    search_space: Callable[..., dict] | None = None
    meta: dict = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str | None = None, *, family: str = "", paper: str = "",
                 aliases: tuple[str, ...] = (), search_space=None, **meta):
        def deco(fn):
            key = name or fn.__name__
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = Entry(key, fn, family, paper, search_space, dict(meta))
            for alias in aliases:
                if alias in self._entries or alias in self._aliases:
                    raise ValueError(f"{self.kind} alias {alias!r} registered twice")
                self._aliases[alias] = key
            return fn
        return deco

    def resolve(self, name: str) -> str:
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted(self._entries) + sorted(self._aliases)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(sorted(self._entries))})")

    def entry(self, name: str) -> Entry:
        return self._entries[self.resolve(name)]

    def create(self, name: str, **kwargs):
        entry = self.entry(name)
        try:
            return entry.factory(**kwargs)
        except TypeError as e:
            # a misspelt keyword (model.kwargs.widht=...) is the user's error, not a crash
            if "unexpected keyword argument" in str(e) or "got multiple values" in str(e):
                raise UsageError(f"{self.kind} {entry.name!r}: {str(e).split(': ', 1)[-1]}") from None
            raise

    def names(self, include_aliases: bool = False) -> list[str]:
        out = sorted(self._entries)
        return sorted(out + list(self._aliases)) if include_aliases else out

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)
