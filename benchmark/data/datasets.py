"""The datasets: ``data.dataset`` name -> its adapter (:class:`benchmark.data.adapter.DatasetAdapter`).

A dataset is a folder ``datasets/<name>/`` holding a ``dataset.yaml`` that names a registered
adapter kind and the kind's arguments, e.g. a new split of LIDC::

    # datasets/lidc_resplit/dataset.yaml
    adapter: lidc            # benchmark.data.lidc.LidcDataset
    index: nodules.csv       # files of this folder
    split: split.json

after which ``bench run data.dataset=lidc_resplit`` works: adding the folder is all it takes.
The file is read with ``yaml.safe_load`` (a key written twice is refused) and nothing in the folder is imported or executed; the
adapter kinds are the classes of :mod:`benchmark.data` (``@register_adapter_kind``). Folders
are looked for in the project's ``datasets/`` and then in ``<LIDC_BENCH_HOME>/datasets/`` (a
user's own datasets, beside their runs); the project's win a name found in both. LIDC-IDRI is
``datasets/lidc/`` (the default).

An adapter instance may also be registered in the process with :func:`register_dataset` (an
adapter whose code is not one of the kinds, e.g. ``tests/synthetic_dataset.py``). Spawned crop
workers need neither: each crop task carries its adapter.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from benchmark.core.errors import UsageError
from benchmark.core.yaml_strict import strict_safe_load
from benchmark.data.adapter import ADAPTER_KINDS, DatasetAdapter
from benchmark.data.lidc import BUILTIN_NAME

__all__ = ["DEFAULT_DATASET", "DATASET_FILE", "register_dataset", "unregister_dataset", "get_dataset",
           "dataset_names", "dataset_of_config", "dataset_roots"]

DEFAULT_DATASET = BUILTIN_NAME
#: the declarative file of a dataset folder
DATASET_FILE = "dataset.yaml"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

#: adapters registered in the process (register_dataset)
_REGISTERED: dict[str, DatasetAdapter] = {}
#: adapters read from dataset folders: file -> ((mtime_ns, size), adapter); read again when edited
_FROM_FOLDERS: dict[Path, tuple[tuple[int, int], DatasetAdapter]] = {}


def dataset_roots() -> list[Path]:
    """Where dataset folders are looked for, in order: the project's, then the home's."""
    from benchmark import PROJECT_ROOT
    from benchmark.core.paths import home
    roots = [Path(PROJECT_ROOT) / "datasets", home() / "datasets"]
    return list(dict.fromkeys(r.resolve() for r in roots))


def _check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"dataset name {name!r} must be lowercase letters, digits, '-' or '_' (it names "
                         f"cache folders and runs)")
    return name


def _folder_datasets() -> dict[str, Path]:
    """{name: its dataset.yaml} of every dataset folder found (the first root wins a name)."""
    found: dict[str, Path] = {}
    for root in dataset_roots():
        if root.is_dir():
            for f in sorted(root.glob(f"*/{DATASET_FILE}")):
                if _NAME.fullmatch(f.parent.name):
                    found.setdefault(f.parent.name, f)
    return found


def _from_folder(name: str) -> DatasetAdapter | None:
    for root in dataset_roots():
        f = root / name / DATASET_FILE
        if f.is_file():
            return _read_dataset_file(name, f)
    return None


def _read_dataset_file(name: str, f: Path) -> DatasetAdapter:
    """The adapter a dataset.yaml declares (cached until the file changes)."""
    st = f.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _FROM_FOLDERS.get(f)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        spec = strict_safe_load(f.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{f}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("adapter"), str):
        raise UsageError(f"{f}: must be a mapping with 'adapter: <kind>' "
                         f"(kinds: {', '.join(ADAPTER_KINDS.names())}) and the kind's arguments")
    args = dict(spec)
    kind = args.pop("adapter")
    try:
        adapter = ADAPTER_KINDS.entry(kind).factory(name=name, folder=f.parent, **args)
    except UsageError as e:
        raise UsageError(f"{f}: {e}") from None
    except TypeError as e:
        # an argument the kind does not take is the file's error, not a crash
        if "unexpected keyword argument" in str(e) or "got multiple values" in str(e):
            raise UsageError(f"{f}: adapter {kind}: {str(e).split('() ', 1)[-1]}") from None
        raise
    _check_adapter(adapter)
    _FROM_FOLDERS[f] = (stamp, adapter)
    return adapter


def _check_adapter(adapter) -> None:
    if not isinstance(adapter, DatasetAdapter):
        raise UsageError(f"a dataset adapter must be a DatasetAdapter, got {type(adapter).__name__}")
    _check_name(adapter.name)
    if not adapter.sources or not adapter.ground_truths or adapter.n_readers < 1:
        raise UsageError(f"dataset {adapter.name!r} must declare its sources, ground truths and n_readers")


def register_dataset(adapter: DatasetAdapter, replace: bool = False) -> DatasetAdapter:
    """Make ``adapter`` the dataset ``adapter.name`` in this process; returns it. Refuses a name
    already registered (unless ``replace``) or found as a dataset folder."""
    _check_adapter(adapter)
    name = adapter.name
    taken = name in _REGISTERED and not replace and _REGISTERED[name] is not adapter
    if taken or name in _folder_datasets():
        raise UsageError(f"dataset {name!r} is already registered")
    _REGISTERED[name] = adapter
    return adapter


def unregister_dataset(name: str) -> None:
    """Forget a dataset registered in the process (tests clean up with it); folders stay."""
    _REGISTERED.pop(name, None)


def get_dataset(name: str = DEFAULT_DATASET) -> DatasetAdapter:
    """The adapter of ``name``; a one-line UsageError naming the datasets found otherwise."""
    if isinstance(name, str) and name in _REGISTERED:
        return _REGISTERED[name]
    adapter = _from_folder(_check_name(name))
    if adapter is None:
        roots = " and ".join(str(r) for r in dataset_roots())
        raise UsageError(f"unknown dataset {name!r} (found: {', '.join(dataset_names())}; a dataset is a folder "
                         f"<name>/ with a {DATASET_FILE} in {roots})")
    return adapter


def dataset_names() -> list[str]:
    return sorted(set(_REGISTERED) | set(_folder_datasets()))


def dataset_of_config(config: dict) -> str:
    """The dataset of a run from its logged config (``config.yaml`` as a dict): a config without
    ``data.dataset`` is LIDC's (LIDC configs leave it out, and older runs predate it)."""
    return ((config or {}).get("data") or {}).get("dataset") or DEFAULT_DATASET
