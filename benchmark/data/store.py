"""What the training engine uses: ``load_crops(data_cfg) -> CropStore``.

Intensity normalisation (applied lazily, per read): HU are clipped to the window
``data_cfg.hu_window`` (default [-1000, 400]: air to dense soft tissue; calcium and bone
saturate) and mapped linearly to [0, 1]. Nothing else: no per-crop or per-dataset
z-scoring, so the same HU value is the same input in every run, subset and spacing.

Arrays are memory-mapped from the cache (``np.load(mmap_mode='r')``); ``store.images[rows]``
reads and normalises only those rows, so a batch costs a few small reads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from benchmark.core.errors import DataError, UsageError
from benchmark.data.cache import cache_candidates, ensure_cache, validate_cache
from benchmark.data.datasets import DEFAULT_DATASET, get_dataset
from benchmark.data.split import SPLITS, load_split, split_hash

__all__ = ["CropStore", "load_crops", "select_nodules", "normalise_hu"]


def normalise_hu(hu: np.ndarray, window=(-1000.0, 400.0)) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    out = (np.asarray(hu, dtype=np.float32) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


class _RowView:
    """Array-like over selected rows of a memmap, optionally transformed on read."""

    def __init__(self, raw: np.ndarray, rows: Optional[np.ndarray], dtype, transform=None):
        self._raw = raw
        self._rows = rows
        self._transform = transform
        self.dtype = np.dtype(dtype)
        n = raw.shape[0] if rows is None else len(rows)
        self.shape = (n,) + tuple(raw.shape[1:])
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if self._rows is not None:
            first = self._rows[first]
        if isinstance(first, np.ndarray) and first.ndim == 1 and first.dtype != bool and len(first) > 1:
            # memmap fancy indexing is fastest on sorted rows; restore the caller's order after
            order = np.argsort(first, kind="stable")
            data = self._raw[(first[order],) + tuple(rest)]
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            data = data[inv]
        else:
            data = self._raw[(first,) + tuple(rest)]
        # always a private, writable copy: callers wrap it with torch.from_numpy
        data = np.array(data, dtype=self.dtype if self._transform is None else None)
        return self._transform(data) if self._transform else data

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a.astype(dtype) if dtype is not None else a


class CropStore:
    """Crops of one cache, aligned with ``table``.

    Attributes: ``table`` (DataFrame: nodule_id, patient_id, split, diameter_mm,
    texture_class, size_bin and every index column, plus gt_voxels / gt_volume_mm3 /
    gt_truncated), ``images`` (N, Z, Y, X) float32 in [0, 1], ``images_hu`` (same, HU),
    ``gt`` (N, Z, Y, X) uint8, ``readers`` (N, R, Z, Y, X) uint8 (R: the dataset's readers,
    LIDC's four), ``truth`` (N, Z, Y, X)
    uint8 or None (the phantom's known true shape; real images have none), ``spacing_mm``,
    ``manifest``, ``split_hash``, ``data_hash``, ``phantom_version`` (None for real images),
    ``dataset`` (the adapter's name, from the manifest), ``path``, ``file_rows`` (the row of
    each store row in the cache's files; None when the store spans the whole cache).
    The split is the dataset's own split file unless ``split_path`` names another.
    """

    def __init__(self, path: Path, rows: Optional[Sequence[int]] = None,
                 hu_window=(-1000.0, 400.0), split_path: Optional[Path] = None):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        rows_arr = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.file_rows = rows_arr
        # caches made before the dataset seam are LIDC's and name no dataset
        self.dataset = self.manifest.get("dataset", DEFAULT_DATASET)
        adapter = get_dataset(self.dataset)
        table = pd.read_csv(self.path / "nodules.csv", keep_default_na=False,
                            dtype={c: str for c in adapter.text_columns})
        if rows_arr is not None:
            table = table.iloc[rows_arr]
        table = table.reset_index(drop=True)
        split = adapter.load_split() if split_path is None else load_split(split_path)
        missing = [n for n in table["nodule_id"] if n not in split["nodules"]]
        if missing:
            raise DataError(f"nodules {missing[:3]} of cache {self.path} are not in the split file: "
                            f"index and split are out of sync")
        table.insert(2, "split", [split["nodules"][n] for n in table["nodule_id"]])
        self.table = table
        self.split_hash = adapter.split_hash() if split_path is None else split_hash(split_path)
        self.data_hash = self.manifest["data_hash"]
        self.spacing_mm = float(self.manifest["spacing_mm"])
        self.hu_window = tuple(float(v) for v in hu_window)
        mm = {n: np.load(self.path / f"{n}.npy", mmap_mode="r") for n in ("images", "gt", "readers")}
        self.images_hu = _RowView(mm["images"], rows_arr, np.float32)
        self.images = _RowView(mm["images"], rows_arr, np.float32,
                               transform=lambda a: normalise_hu(a, self.hu_window))
        self.gt = _RowView(mm["gt"], rows_arr, np.uint8)
        self.readers = _RowView(mm["readers"], rows_arr, np.uint8)
        # the phantom's known true shape (None for real images, which have no known truth)
        truth_file = self.path / "truth.npy"
        self.truth = (_RowView(np.load(truth_file, mmap_mode="r"), rows_arr, np.uint8)
                      if truth_file.is_file() else None)
        self.phantom_version = self.manifest.get("phantom_version")

    def __len__(self):
        return len(self.table)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def __repr__(self):
        counts = self.table["split"].value_counts().to_dict()
        return (f"CropStore({self.manifest['source']}/{self.manifest['ground_truth']}, "
                f"{self.spacing_mm:g} mm, crop {tuple(self.images.shape[1:])}, {counts}, data {self.data_hash})")


def select_nodules(index: pd.DataFrame, split: dict, max_nodules: dict) -> list[str]:
    """A deterministic, stratified-ish subset: at most ``max_nodules[s]`` nodules of split s.

    Within a split, nodules are ordered by a fixed hash of their id inside each size bin and
    taken round-robin over the size bins, so small caps still see every size.
    """
    import hashlib
    chosen = []
    df = index.assign(split=[split["nodules"].get(n) for n in index["nodule_id"]])
    for s in SPLITS:
        cap = max_nodules.get(s)
        part = df[df["split"] == s]
        if cap is None:
            chosen += list(part["nodule_id"])
            continue
        keyed = part.assign(_k=[hashlib.sha256(n.encode()).hexdigest() for n in part["nodule_id"]])
        queues = [list(g.sort_values("_k")["nodule_id"]) for _, g in keyed.groupby("size_bin", sort=True)]
        picked: list[str] = []
        while len(picked) < cap and any(queues):
            for q in queues:
                if q and len(picked) < cap:
                    picked.append(q.pop(0))
        chosen += picked
    order = {n: i for i, n in enumerate(index["nodule_id"])}
    return sorted(chosen, key=order.__getitem__)


def load_crops(data_cfg, nodule_ids: Optional[Sequence[str]] = None, progress: bool = True,
               workers: int = 2) -> CropStore:
    """Build or validate the cache for ``data_cfg`` and return its :class:`CropStore`.

    ``nodule_ids`` restricts to those nodules; otherwise ``data_cfg.max_nodules`` (per split)
    picks a deterministic subset, and only that subset is built.
    """
    crop_zyx = tuple(data_cfg.crop_zyx)
    adapter = get_dataset(data_cfg.dataset)
    adapter.check_index_matches_split()  # a changed index is an error, never a run on fewer nodules
    if nodule_ids is None and data_cfg.max_nodules:
        unknown = set(data_cfg.max_nodules) - set(SPLITS)
        if unknown:
            raise UsageError(f"data.max_nodules has unknown splits {sorted(unknown)} (use {', '.join(SPLITS)})")
        nodule_ids = select_nodules(adapter.load_index(), adapter.load_split(), dict(data_cfg.max_nodules))
    path, rows = ensure_cache(data_cfg.source, data_cfg.ground_truth, data_cfg.spacing_mm, crop_zyx,
                              data_cfg.phantom_seed, nodule_ids, workers=workers, progress=progress,
                              dataset=adapter.name)
    return CropStore(path, rows, hu_window=data_cfg.hu_window)


def built_data_hash(data_cfg) -> Optional[str]:
    """The content hash ``load_crops(data_cfg)`` would give, if its cache is already built (the
    full cache or this subset's); None otherwise. Builds nothing and reads only manifests, so a
    status command can ask which runs exist on these data without building a crop cache."""
    adapter = get_dataset(data_cfg.dataset)
    ids = select_nodules(adapter.load_index(), adapter.load_split(), dict(data_cfg.max_nodules)) \
        if data_cfg.max_nodules else None
    for path, expected, _ in cache_candidates(data_cfg.source, data_cfg.ground_truth, data_cfg.spacing_mm,
                                              data_cfg.crop_zyx, data_cfg.phantom_seed, ids, adapter.name):
        if validate_cache(path, expected, check_hashes=False)[0]:
            return json.loads((path / "manifest.json").read_text()).get("data_hash")
    return None
