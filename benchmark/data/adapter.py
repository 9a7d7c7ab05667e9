"""What a dataset must give the engine: the adapter interface behind ``data.dataset``.

The engine (crop cache, crop store, training, evaluation, the reference rows) never names a
dataset. It asks the adapter registered under ``data.dataset`` (:mod:`benchmark.data.datasets`)
for everything dataset-specific:

* **files**: its nodule index (one row per nodule; loaded and hashed by the adapter) and its
  split file (``patients``, ``nodules`` and ``seed``, read by :func:`benchmark.data.split.load_split`);
* **images**: its sources (``data.source``), whether a source's images are seeded
  (``data.phantom_seed``), versioned or carry a known true shape, the code files whose source
  shapes the pixels (editing them invalidates that source's crop caches), and crop extraction:
  image, reader masks, ground truth and true shape of every nodule of one scan, on the crop grid;
* **readers and ground truth**: how many readers each nodule has and which ground truths
  (``data.ground_truth``) can be made from them;
* **strata**: the size bins and texture classes the aggregates and the split are grouped by;
* **names**: the name runs, MLflow dataset inputs and leaderboards give a (dataset, source)
  pair, and the prefix of its crop-cache folders.

The index must hold the columns the engine reads: ``nodule_id``, ``patient_id``, ``scan_id``
(the crops of one scan are made together), ``diameter_mm``, ``size_bin`` (a label of
``strata.size_bins``) and ``texture_class`` (one of ``strata.textures``); any other column is
the adapter's own and travels with the crops into ``CropStore.table``.

Crop tasks run in spawned worker processes, so an adapter instance is pickled with each task:
keep its state small (paths, names) and its class importable (a module, not a script).

**Adapter kinds.** An adapter class is registered under a kind with
``@register_adapter_kind("kind")``; a dataset folder ``datasets/<name>/`` names its kind and the
kind's arguments in ``dataset.yaml`` (:mod:`benchmark.data.datasets`), and the class is built as
``cls(name=<name>, folder=<the folder>, **arguments)``. No code is ever imported from a dataset
folder: the kinds are the classes of this package.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from benchmark.core.errors import UsageError
from benchmark.core.registry import Registry

__all__ = ["Strata", "DatasetAdapter", "CropResult", "ADAPTER_KINDS", "register_adapter_kind", "folder_file"]

#: adapter kinds: the ``adapter:`` value of a dataset.yaml -> its adapter class
ADAPTER_KINDS = Registry("dataset adapter")
register_adapter_kind = ADAPTER_KINDS.register


def folder_file(folder: Path, value, key: str) -> Path:
    """A file a dataset.yaml names (``key: file.csv``): a plain file name inside the dataset's
    own folder, never a path elsewhere (a one-line UsageError otherwise)."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        raise UsageError(f"{Path(folder) / 'dataset.yaml'}: {key} must be a file name inside the dataset folder, "
                         f"got {value!r}")
    return Path(folder) / value

#: one nodule's crop, as ``crop_scan`` returns it: (position in the build table, image HU
#: (Z, Y, X) float32, ground truth (Z, Y, X) uint8, readers (R, Z, Y, X) uint8, true shape
#: (Z, Y, X) uint8 or None)
CropResult = tuple


@dataclass(frozen=True)
class Strata:
    """How nodules are grouped: in the aggregates of a run, in the leaderboard's size columns
    and (the adapter's choice) in its split.

    ``size_bins``: each ``size_bin`` label of the index, in order, with the MLflow-safe key its
    aggregates are logged under (``test_size_<key>/dice``). ``textures``: the ``texture_class``
    labels, in order. ``size_bin``: diameter in mm -> label (for tables that hold only the
    diameter).
    """
    size_bins: dict[str, str]
    textures: tuple[str, ...]
    size_bin: Callable[[float], str]


class DatasetAdapter:
    """Base class of the dataset adapters; see the module docstring for what each part is for.

    A subclass sets the class attributes and implements ``index_path``, ``split_path`` and
    ``crop_scan``; the other methods have defaults that fit a dataset with plain CSV and JSON
    files and unversioned, unseeded images without a known true shape.
    """
    #: the ``data.dataset`` value
    name: str = ""
    #: the ``data.source`` values (first: the default)
    sources: tuple[str, ...] = ()
    #: the ``data.ground_truth`` values (first: the default)
    ground_truths: tuple[str, ...] = ()
    #: readers (reader masks) per nodule
    n_readers: int = 0
    #: columns of the index read as text whatever they hold (ids that look like numbers)
    text_columns: tuple[str, ...] = ()

    @property
    def strata(self) -> Strata:
        raise NotImplementedError

    # ------------------------------------------------------------------ index and split
    def index_path(self) -> Path:
        raise NotImplementedError

    def split_path(self) -> Path:
        raise NotImplementedError

    def load_index(self, path: Optional[Path] = None):
        import pandas as pd
        from benchmark.core.errors import DataError
        path = Path(path or self.index_path())
        if not path.is_file():
            raise DataError(f"nodule index {path} of dataset {self.name} is missing")
        return pd.read_csv(path, dtype={c: str for c in self.text_columns}, keep_default_na=False)

    def index_hash(self, path: Optional[Path] = None) -> str:
        """sha256 of the index file's bytes (16 hex digits): recorded in split and crop manifests."""
        return hashlib.sha256(Path(path or self.index_path()).read_bytes()).hexdigest()[:16]

    def load_split(self) -> dict:
        from benchmark.data.split import load_split
        return load_split(self.split_path())

    def split_hash(self) -> str:
        from benchmark.data.split import split_hash
        return split_hash(self.split_path())

    def check_index_matches_split(self) -> None:
        """DataError unless the index is the file the split was made from."""
        from benchmark.data.split import check_index_matches_split
        check_index_matches_split(self.index_path(), self.split_path())

    # ------------------------------------------------------------------ names
    def run_name(self, source: str) -> str:
        """What runs call this data (tag ``data.dataset``, MLflow dataset inputs, leaderboard files)."""
        return f"{self.name}-{source}"

    def cache_prefix(self, source: str) -> str:
        """The start of this source's crop-cache folder names (the image version included)."""
        version = self.image_version(source)
        return f"{self.name}-{source}" + (f"-v{version}" if version else "")

    # ------------------------------------------------------------------ images
    def image_version(self, source: str) -> Optional[str]:
        """Version of a synthetic source's image generator (None: real images). Part of the
        crop cache's folder name and content hash: two versions never share crops."""
        return None

    def seeded(self, source: str) -> bool:
        """Do this source's images depend on ``data.phantom_seed``?"""
        return False

    def has_truth(self, source: str) -> bool:
        """Does this source know each nodule's true shape (the ``truth`` crops, ``*_vs_truth``
        metrics and the phantom-ceiling reference)?"""
        return False

    def code_files(self, source: str) -> Sequence[Path]:
        """The source files whose code shapes this source's crops (their syntax trees are part
        of the cache's code version: editing them rebuilds the caches)."""
        return ()

    def check_available(self, source: str) -> None:
        """Raise (DataError, one line) when this source cannot be read here, before a build starts."""

    def manifest_fields(self, source: str, seed: int) -> dict:
        """What, besides source, ground truth, geometry, index and code, defines a cache's content."""
        return {"dataset": self.name, "phantom_seed": int(seed) if self.seeded(source) else None,
                "phantom_version": self.image_version(source)}

    def build_facts(self, source: str) -> dict:
        """Informational manifest fields (where the build read from); not checked on reuse."""
        return {}

    def crop_scan(self, rows: list, source: str, gt: str, spacing_mm: float, crop_zyx: tuple,
                  seed: int) -> list[CropResult]:
        """Crops of the nodules of one scan. ``rows``: [(position, index row as a dict), ...],
        all with the same ``scan_id``; returns one :data:`CropResult` per row, on an isotropic
        grid of ``crop_zyx`` voxels of ``spacing_mm`` centred on the nodule (readers in the
        adapter's reader order, ``n_readers`` of them; the true shape only if ``has_truth``)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"
