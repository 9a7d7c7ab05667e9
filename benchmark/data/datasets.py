"""The dataset registry: ``data.dataset`` name -> its adapter (:class:`benchmark.data.adapter.DatasetAdapter`).

LIDC-IDRI is built in (``"lidc"``, the default). Another dataset is added by registering an
adapter instance, from any module imported before its configs are built::

    from benchmark.data.datasets import register_dataset
    register_dataset(MyDataset())          # then data.dataset=mine in any config

(``tests/synthetic_dataset.py`` is a complete, small example). The registry lives in the
process: spawned crop workers do not need it (each crop task carries its adapter).
"""
from __future__ import annotations

from benchmark.data.adapter import DatasetAdapter
from benchmark.data.lidc import LIDC

__all__ = ["DEFAULT_DATASET", "register_dataset", "unregister_dataset", "get_dataset", "dataset_names",
           "dataset_of_config"]

DEFAULT_DATASET = LIDC.name
_ADAPTERS: dict[str, DatasetAdapter] = {LIDC.name: LIDC}


def register_dataset(adapter: DatasetAdapter, replace: bool = False) -> DatasetAdapter:
    """Make ``adapter`` the dataset ``adapter.name``; returns it. Refuses to replace a registered
    name unless ``replace`` (and never the built-in LIDC)."""
    from benchmark.core.errors import UsageError
    if not isinstance(adapter, DatasetAdapter):
        raise UsageError(f"a dataset adapter must be a DatasetAdapter, got {type(adapter).__name__}")
    name = adapter.name
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name != name.lower():
        raise UsageError(f"dataset name {name!r} must be lowercase letters, digits, '-' or '_' (it names "
                         f"cache folders and runs)")
    if not adapter.sources or not adapter.ground_truths or adapter.n_readers < 1:
        raise UsageError(f"dataset {name!r} must declare its sources, ground truths and n_readers")
    if name in _ADAPTERS and (name == DEFAULT_DATASET or not replace) and _ADAPTERS[name] is not adapter:
        raise UsageError(f"dataset {name!r} is already registered")
    _ADAPTERS[name] = adapter
    return adapter


def unregister_dataset(name: str) -> None:
    """Forget a registered dataset (tests clean up with it); the built-in LIDC stays."""
    if name != DEFAULT_DATASET:
        _ADAPTERS.pop(name, None)


def get_dataset(name: str = DEFAULT_DATASET) -> DatasetAdapter:
    """The adapter of ``name``; a UsageError naming the registered datasets otherwise."""
    try:
        return _ADAPTERS[name]
    except (KeyError, TypeError):
        from benchmark.core.errors import UsageError
        raise UsageError(f"unknown dataset {name!r} (registered: {', '.join(sorted(_ADAPTERS))})") from None


def dataset_names() -> list[str]:
    return sorted(_ADAPTERS)


def dataset_of_config(config: dict) -> str:
    """The dataset of a run from its logged config (``config.yaml`` as a dict): a config without
    ``data.dataset`` is LIDC's (LIDC configs leave it out, and older runs predate it)."""
    return ((config or {}).get("data") or {}).get("dataset") or DEFAULT_DATASET
