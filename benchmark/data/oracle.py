"""Leak probes of the phantom: the threshold oracle on the noise-free nodule signal, and volumes.

If the image gave the ground truth away, a fixed function of the image would score better
against the readers' ground truth than the true shape the image was drawn from. The
*threshold oracle* is the strongest simple such function: the nodule's noise-free, clutter-
free image signal (:func:`benchmark.data.phantom.nodule_signal`, resampled to the crop like
the image) thresholded at the best level, either one level for all nodules (``global``) or the
best level per nodule (``per nodule``, which also looks at the answer). The phantom ceiling
(:mod:`benchmark.run.reference_rows`) is the true shape scored the same way; a global oracle above it
would mean the picture carries the readers' votes beyond the true shape.

Everything here works per nodule from the index (no crop cache needed), so the tests can run
it on a few dozen real nodules, and ``datasets/lidc/phantom_card.py`` on the test split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NoduleProbe", "probe_nodule", "window", "dice_per_level", "LEVELS"]

#: threshold levels of the oracle (fractions of the full nodule signal)
LEVELS = np.round(np.arange(0.05, 0.951, 0.025), 4)


@dataclass
class NoduleProbe:
    signal: np.ndarray      # (Z, Y, X) float32 in [0, 1]: noise-free nodule signal on the crop
    gt: np.ndarray          # (Z, Y, X) bool: the readers' ground truth on the crop
    truth: np.ndarray       # (Z, Y, X) bool: the true shape on the crop
    readers: np.ndarray     # (R, Z, Y, X) bool
    native_consensus_mm3: float   # pylidc's 2-of-4 consensus volume on the native grid
    native_gt_mm3: float          # the ground truth's volume on the native grid
    native_truth_mm3: float       # the true shape's volume on the native grid (voxel centres)


def probe_nodule(row, spacing_mm: float, crop_zyx, seed: int = 0, gt_method: str = "staple") -> NoduleProbe:
    """Everything the leak probes need for one index row, through the cache's own code path."""
    from benchmark.data.geometry import NativeBox, box_bounds, resample_crop, resample_truth
    from benchmark.data.ground_truth import nodule_native_data
    from benchmark.data.phantom import nodule_signal
    spacing_zyx = (float(row["slice_spacing"]), float(row["pixel_spacing"]), float(row["pixel_spacing"]))
    center_idx = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]], float)
    lo, hi = box_bounds(center_idx, spacing_zyx, crop_zyx, spacing_mm)
    readers, gt, phi = nodule_native_data(row, lo, hi, gt_method, truth_seed=seed)
    signal = nodule_signal(row, phi, seed)
    box = NativeBox(signal, readers, gt, spacing_zyx, tuple(lo * np.array(spacing_zyx)), phi)
    center_mm = center_idx * np.array(spacing_zyx)
    sig, g, r = resample_crop(box, center_mm, spacing_mm, crop_zyx)
    t = resample_truth(box, center_mm, spacing_mm, crop_zyx)
    vox = float(np.prod(spacing_zyx))
    return NoduleProbe(np.clip(sig, 0, 1), g.astype(bool), t.astype(bool), r.astype(bool),
                       float((readers.mean(0) >= 0.5).sum()) * vox, float(gt.sum()) * vox,
                       float((phi < 0).sum()) * vox)


def window(volume: np.ndarray, patch_zyx) -> np.ndarray:
    """The evaluation's centre window of one (Z, Y, X) volume."""
    import torch
    from benchmark.data.augment import center_window
    win, _ = center_window(torch.from_numpy(np.ascontiguousarray(volume))[None, None], None, patch_zyx)
    return win[0, 0].numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def dice_per_level(signal: np.ndarray, reference: np.ndarray, levels=LEVELS) -> np.ndarray:
    """Dice of ``signal >= level`` against ``reference`` for each level (voxel Dice, as MONAI's)."""
    return np.array([_dice(signal >= lv, reference) for lv in levels])
