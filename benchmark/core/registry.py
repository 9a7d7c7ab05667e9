"""A timm-style name -> factory registry, shared by architectures and losses.

A decorator registers a factory under a name with metadata; ``create(name, **kwargs)``
builds it; ``names()`` lists them. Unknown names raise :class:`UsageError` listing the
closest registered names. Aliases (``transfuse`` -> ``transfuse_s``) resolve to a
canonical entry so users can type the family name.

Two ways to fill a registry:

* eager (losses): the owning package imports every module of its folder, each module's
  decorator registers its entries with their metadata;
* lazy (architectures): the owning package *declares* its entries up front with
  :meth:`Registry.declare` (name, module, metadata: the one place that defines them), and
  the module's decorator only attaches the factory and the search space. Names, aliases and
  metadata are then known without importing any module (and MONAI, timm, ... behind them);
  a module is imported the first time its factory or search space is asked for.

The two mix: a module the table does not declare registers eagerly, its metadata in its
decorator (an architecture added as one module, or a test's toy one). ``discover`` (given by
the owning package) imports such modules of its folder the first time the names are listed or
an unknown name is looked up, so a lookup never depends on which modules a caller happened to
import.
"""
from __future__ import annotations

import copy
import difflib
import importlib
from typing import Any, Callable

from benchmark.core.errors import UsageError


class Entry:
    """One registered name: metadata always, factory and search space on first use."""

    def __init__(self, name: str, family: str = "", paper: str = "", meta: dict | None = None,
                 module: str | None = None, factory: Callable[..., Any] | None = None,
                 search_space: Callable[..., dict] | None = None):
        self.name = name
        self.family = family
        self.paper = paper
        self.meta = copy.deepcopy(dict(meta or {}))
        #: module that registers the factory (lazy entries); None for eager ones
        self.module = module
        self._factory = factory
        #: ``search_space(trial) -> dict`` of kwargs/config overrides for Optuna (see benchmark.campaigns.search_space)
        self._search_space = search_space
        self._loaded = module is None

    def load(self) -> "Entry":
        if not self._loaded:
            importlib.import_module(self.module)
            if self._factory is None:
                raise RuntimeError(f"{self.module} was declared to register {self.name!r} but did not")
            self._loaded = True
        return self

    @property
    def factory(self) -> Callable[..., Any]:
        return self.load()._factory

    @property
    def search_space(self) -> Callable[..., dict] | None:
        return self.load()._search_space

    @property
    def loaded(self) -> bool:
        """Whether the module behind this entry has been imported (always True for eager entries)."""
        return self._loaded or self._factory is not None

    def __repr__(self):
        return f"Entry({self.name!r}, family={self.family!r}, module={self.module!r})"


class Registry:
    def __init__(self, kind: str, discover: Callable[[], None] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        #: imports the modules that register eagerly (see the module docstring); run once
        self._discover = discover

    def _discovered(self) -> None:
        discover, self._discover = self._discover, None
        if discover is not None:
            discover()

    def _add_name(self, key: str, aliases: tuple[str, ...]):
        if key in self._entries or key in self._aliases:
            raise ValueError(f"{self.kind} {key!r} registered twice")
        for alias in aliases:
            if alias in self._entries or alias in self._aliases or alias == key:
                raise ValueError(f"{self.kind} alias {alias!r} registered twice")

    def declare(self, name: str, module: str, *, family: str = "", paper: str = "",
                aliases: tuple[str, ...] = (), **meta):
        """A lazy entry: its metadata now, its factory when ``module`` is first imported."""
        self._add_name(name, aliases)
        self._entries[name] = Entry(name, family, paper, meta, module=module)
        for alias in aliases:
            self._aliases[alias] = name

    def register(self, name: str | None = None, *, family: str = "", paper: str = "",
                 aliases: tuple[str, ...] = (), search_space=None, **meta):
        """Decorator. On a declared name it attaches the factory (metadata stays the
        declaration's, so giving any here is an error); otherwise it adds an eager entry with
        the metadata given here (e.g. ``experimental=True``)."""
        def deco(fn):
            key = name or fn.__name__
            declared = self._entries.get(key)
            if declared is not None and declared.module is not None:
                if declared._factory is not None:
                    raise ValueError(f"{self.kind} {key!r} registered twice")
                if family or paper or aliases or meta:
                    raise ValueError(f"{self.kind} {key!r} is declared with its metadata in the registry; "
                                     f"register only the factory and search space")
                if fn.__module__ != declared.module:
                    raise ValueError(f"{self.kind} {key!r} is declared in {declared.module}, "
                                     f"registered from {fn.__module__}")
                declared._factory, declared._search_space = fn, search_space
                return fn
            self._add_name(key, aliases)
            self._entries[key] = Entry(key, family, paper, meta, factory=fn, search_space=search_space)
            for alias in aliases:
                self._aliases[alias] = key
            return fn
        return deco

    def unregister(self, name: str) -> None:
        """Forget an eager entry and its aliases (a test's toy entry); declared entries stay."""
        entry = self._entries.get(name)
        if entry is None or entry.module is not None:
            return
        del self._entries[name]
        self._aliases = {a: t for a, t in self._aliases.items() if t != name}

    def resolve(self, name: str) -> str:
        if name not in self._entries and name not in self._aliases:
            self._discovered()
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
        self._discovered()
        out = sorted(self._entries)
        return sorted(out + list(self._aliases)) if include_aliases else out

    def aliases(self) -> dict[str, str]:
        self._discovered()
        return dict(self._aliases)
