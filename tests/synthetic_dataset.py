"""A small synthetic dataset behind the public adapter API, to prove the dataset seam.

``make_synthetic(root)`` writes a complete dataset into ``root``: a nodule index
(``nodules.csv``), a patient-level split (``split.json``), one CT-like volume per patient
(``images/<patient>.npy``) and each nodule's two readers' masks on its scan's grid
(``readers/<nodule>.npz``). Every nodule is an ellipsoid (its true shape, known exactly); the
two readers outline it slightly too large and slightly too small, so they disagree a little,
as readers do. ``SyntheticDataset(root)`` is its adapter; register it with
``benchmark.data.datasets.register_dataset`` and use ``data.dataset=synth data.source=rendered``.

Deliberately unlike LIDC wherever the engine could have kept an LIDC assumption: two readers,
another source name, its own size bins and texture classes, anisotropic voxels of another size.
Only public engine API is used: the adapter base class, the ground-truth functions and the
crop geometry.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.adapter import DatasetAdapter, Strata
from benchmark.data.geometry import AIR_HU, NativeBox, box_bounds, extract_box, resample_crop, resample_truth
from benchmark.data.ground_truth import ground_truth

NAME = "synth"
SOURCE = "rendered"
#: voxel size of the synthetic scans (z, y, x), mm
SPACING_ZYX = (2.5, 0.8, 0.8)
#: scan size (z, y, x), voxels
SHAPE_ZYX = (24, 64, 64)
#: how far outside (+) or inside (-) the true surface each reader draws, mm, and how far off
#: centre along x: one reader draws a little large and to the right, the other small and left
READER_OFFSETS_MM = (0.4, -0.3)
READER_SHIFTS_X_MM = (0.5, -0.5)
#: patients per split (patient-disjoint)
PATIENTS = {"train": 5, "val": 1, "test": 2}
#: nodule centres (y, x) in mm, far enough apart that nodules never touch
SLOTS_YX_MM = ((14.0, 14.0), (14.0, 37.0), (37.0, 25.0))
TEXTURE_HU = {"solid": 30.0, "cystic": -120.0}


def size_bin(diameter_mm: float) -> str:
    return "<8" if diameter_mm < 8 else ">=8"


class SyntheticDataset(DatasetAdapter):
    name = NAME
    sources = (SOURCE,)
    ground_truths = ("staple", "consensus")
    n_readers = len(READER_OFFSETS_MM)
    text_columns = ("nodule_id", "patient_id")

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def strata(self) -> Strata:
        return Strata(size_bins={"<8": "lt8", ">=8": "ge8"}, textures=tuple(TEXTURE_HU), size_bin=size_bin)

    def index_path(self) -> Path:
        return self.root / "nodules.csv"

    def split_path(self) -> Path:
        return self.root / "split.json"

    def image_version(self, source):
        return "1"

    def has_truth(self, source):
        return True

    def code_files(self, source):
        return (Path(__file__),)

    def crop_scan(self, rows, source, gt, spacing_mm, crop_zyx, seed):
        spacing = np.array(SPACING_ZYX)
        volume = np.load(self.root / "images" / f"{rows[0][1]['patient_id']}.npy")
        out = []
        for pos, row in rows:
            center_idx = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]], float)
            lo, hi = box_bounds(center_idx, SPACING_ZYX, crop_zyx, spacing_mm)
            image = extract_box(volume, lo, hi, AIR_HU).astype(np.float32)
            masks = np.load(self.root / "readers" / f"{row['nodule_id']}.npz")["readers"]
            readers = np.stack([extract_box(m, lo, hi, False) for m in masks])
            g = ground_truth(readers, gt)
            phi = _ellipsoid_phi(row, lo, hi - lo)
            box = NativeBox(image, readers, g, SPACING_ZYX, tuple(lo * spacing), phi)
            center_mm = center_idx * spacing
            img, g_crop, r = resample_crop(box, center_mm, spacing_mm, crop_zyx)
            out.append((pos, img, g_crop, r, resample_truth(box, center_mm, spacing_mm, crop_zyx)))
        return out


def _ellipsoid_phi(row, lo, shape, shift_x_mm: float = 0.0) -> np.ndarray:
    """A signed distance-like function (mm, < 0 inside) of the nodule's ellipsoid on a native box
    starting at voxel ``lo``: exact on the surface, the scaled radial distance elsewhere."""
    axes = [(np.arange(n) + lo[a]) * SPACING_ZYX[a] for a, n in enumerate(shape)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    c = [row["center_z_mm"], row["center_y_mm"], row["center_x_mm"] + shift_x_mm]
    r = [row["radius_z_mm"], row["radius_y_mm"], row["radius_x_mm"]]
    rho = np.sqrt(((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2)
    return ((rho - 1.0) * min(r)).astype(np.float32)


def make_synthetic(root: Path, seed: int = 0) -> SyntheticDataset:
    """Write the dataset into ``root`` (index, split, images, reader masks) and return its adapter."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "readers").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    adapter = SyntheticDataset(root)
    spacing = np.array(SPACING_ZYX)
    full = np.zeros(SHAPE_ZYX, int)
    rows, patients = [], {s: [] for s in PATIENTS}
    scan_id = 0
    for split, n_patients in PATIENTS.items():
        for _ in range(n_patients):
            scan_id += 1
            pid = f"SYN-{scan_id:03d}"
            patients[split].append(pid)
            volume = rng.normal(-850.0, 25.0, SHAPE_ZYX).astype(np.float32)
            n_nodules = 2 + scan_id % 2
            for k in range(n_nodules):
                diameter = float(rng.uniform(6.0, 14.0))
                texture = ("solid", "cystic")[int(rng.integers(2))]
                radii = diameter / 2 * rng.uniform(0.85, 1.15, 3)
                center = np.array([rng.uniform(22.0, 38.0), *SLOTS_YX_MM[k]]) + rng.uniform(-2, 2, 3)
                row = {"nodule_id": f"{pid}_n{k + 1:02d}", "patient_id": pid, "scan_id": scan_id,
                       "centroid_k": center[0] / spacing[0], "centroid_i": center[1] / spacing[1],
                       "centroid_j": center[2] / spacing[2],
                       "center_z_mm": center[0], "center_y_mm": center[1], "center_x_mm": center[2],
                       "radius_z_mm": radii[0], "radius_y_mm": radii[1], "radius_x_mm": radii[2],
                       "diameter_mm": diameter, "size_bin": size_bin(diameter), "texture_class": texture}
                phi = _ellipsoid_phi(row, np.zeros(3, int), full.shape)
                volume = np.where(phi < 0, TEXTURE_HU[texture] + rng.normal(0, 25.0, SHAPE_ZYX), volume)
                readers = np.stack([_ellipsoid_phi(row, np.zeros(3, int), full.shape, shift) < off
                                    for off, shift in zip(READER_OFFSETS_MM, READER_SHIFTS_X_MM)])
                np.savez_compressed(root / "readers" / f"{row['nodule_id']}.npz", readers=readers)
                rows.append(row)
            np.save(root / "images" / f"{pid}.npy", volume.astype(np.float32))
    index = pd.DataFrame(rows)
    for col in index.columns:
        if index[col].dtype == float:
            index[col] = index[col].round(4)
    index.to_csv(adapter.index_path(), index=False, lineterminator="\n")
    assignment = {p: s for s, ps in patients.items() for p in ps}
    split = {"seed": seed, "method": "synthetic: patients dealt in order",
             "index_sha256": hashlib.sha256(adapter.index_path().read_bytes()).hexdigest()[:16],
             "patients": patients,
             "nodules": {n: assignment[p] for n, p in zip(index["nodule_id"], index["patient_id"])}}
    adapter.split_path().write_text(json.dumps(split, indent=1) + "\n")
    return adapter
