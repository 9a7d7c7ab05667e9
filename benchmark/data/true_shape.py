"""The phantom's known truth: one binary true shape per nodule, and signed distances.

On real CT nobody knows a nodule's true outline; the four LIDC readers are four noisy
observations of it. The phantom makes that relationship explicit: it draws a true shape,
renders the image from it, and the readers' masks become observations of a truth that
none of them equals, as on real data.

The true shape (phantom version 2):

    phi(x) = sdf_consensus(x) + a * field(x)        true shape = {x : phi(x) < 0}

* ``sdf_consensus``: the signed distance (mm, negative inside) of the readers' 2-of-4 vote
  (pylidc's consensus), on the scan's native grid, re-levelled so that its supersampled
  interior has exactly the consensus' volume. Only this one level set matters, so the truth is
  a binary shape, never a function of the vote *levels* (no 25/50/75 % steps).
* ``field``: a smooth Gaussian random field (white noise smoothed with a Gaussian of
  ``clip(0.5 R, 1.5, 5)`` mm, R the consensus' equivalent radius, rescaled to unit std):
  low-order bulges and dents, the kind of disagreement readers show (mostly where the
  boundary is, rarely islands).
* ``a``: calibrated per nodule to the readers' own boundary spread with a measurement-error
  model. If each reader's boundary is the truth plus an independent error of std s_r, the
  spread of the n observations about their mean has (population) std
  ``s_obs = s_r sqrt((n-1)/n)``, and their mean lies ``s_r / sqrt(n)`` from the truth; so
  the truth deviates from the consensus by ``a = s_obs / sqrt(n - 1)`` (n = 4: s_obs / 1.73).
  ``s_obs`` is measured on the consensus boundary from the readers' signed distances,
  each reader's offsets clipped to +-R so that one disjoint reader (a clustering quirk) does
  not blow it up; ``a`` is capped at 0.25 R.

All draws come from ``default_rng([seed, crc32(nodule_id), TRUTH_STREAM])`` on the readers'
own bounding box padded by :data:`PAD_MM` (never on the crop box, whose size depends on the
spacing): the truth of a nodule is the same in every split, spacing and run of one phantom
version and seed. ``phi`` is continuous, so the renderer samples it on a finer grid than
the scan's (supersampling) and partial volume comes from the scanner model alone.
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, gaussian_filter

__all__ = ["signed_distance", "upsample_linear", "supersample_factors", "volume_level", "SUPERSAMPLE_MM", "boundary_spread_mm", "true_shape_phi", "TRUTH_PARAMS", "PAD_MM", "OUTSIDE_MM"]

#: parameters of the true-shape model (quoted in datasets/lidc/CARD.md)
TRUTH_PARAMS = {"correlation_mm": (1.5, 5.0), "correlation_per_radius": 0.5,
                "max_amplitude_per_radius": 0.25, "readers_in_error_model": 4}
#: background margin (mm) around the readers' bounding box where phi is computed
PAD_MM = 6.0
#: phi value used outside the box where phi was computed (far outside the shape)
OUTSIDE_MM = 1000.0
#: the finest voxel (mm per axis) the true shape is evaluated on (rendering, volume level)
SUPERSAMPLE_MM = 0.25
#: third element of the truth's RNG seed: keeps its draws apart from the image's
TRUTH_STREAM = 2


def supersample_factors(spacing_zyx) -> np.ndarray:
    """Integer factors per axis that make a native voxel at most :data:`SUPERSAMPLE_MM` wide."""
    return np.maximum(1, np.ceil(np.asarray(spacing_zyx, float) / SUPERSAMPLE_MM - 1e-9)).astype(int)


def upsample_linear(a: np.ndarray, factors) -> np.ndarray:
    """Linear interpolation of ``a`` at the centres of a grid ``factors`` times finer per axis."""
    for axis, f in enumerate(int(v) for v in factors):
        n = a.shape[axis]
        if f == 1 or n == 1:
            a = np.repeat(a, f, axis=axis)
            continue
        pos = (np.arange(n * f) + 0.5) / f - 0.5
        i0 = np.clip(np.floor(pos).astype(int), 0, n - 2)
        w = np.clip(pos - i0, 0, 1).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = -1
        w = w.reshape(shape)
        a = np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w
    return a


def signed_distance(mask: np.ndarray, spacing_zyx, pad_vox: int = 3) -> np.ndarray:
    """Signed distance (mm, float32) of a binary mask: negative inside, positive outside.

    Symmetric convention ``d_to_inside - d_to_outside`` between voxel centres (the last
    inside voxel is at ``-s``, the first outside one at ``+s``). Computed only on the mask's
    bounding box plus ``pad_vox``; elsewhere :data:`OUTSIDE_MM`. Empty mask: all outside.
    Its linear interpolation cuts the staircase's convex corners (a 6 mm sphere loses ~4 %
    of its volume), so :func:`true_shape_phi` re-levels it to the mask's volume.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.full(mask.shape, OUTSIDE_MM, dtype=np.float32)
    if not mask.any():
        return out
    nz = np.nonzero(mask)
    sub = tuple(slice(max(int(a.min()) - pad_vox, 0), min(int(a.max()) + 1 + pad_vox, n))
                for a, n in zip(nz, mask.shape))
    # pad with background so the outside distance is defined even where the box cuts the mask
    mp = np.pad(mask[sub], 1)
    sampling = [float(s) for s in spacing_zyx]
    inner = (slice(1, -1),) * 3
    d_out = distance_transform_edt(~mp, sampling=sampling)[inner]
    d_in = distance_transform_edt(mp, sampling=sampling)[inner]
    out[sub] = (d_out - d_in).astype(np.float32)
    return out


def volume_level(sdf: np.ndarray, n_inside: int, factors) -> float:
    """The level c at which the supersampled ``sdf < c`` has the volume of ``n_inside`` native voxels."""
    fine = upsample_linear(sdf, factors).ravel()
    k = int(n_inside) * int(np.prod(factors))
    if k <= 0:
        return 0.0
    if k >= fine.size:
        return float(fine.max()) + 1e-3
    part = np.partition(fine, [k - 1, k])
    return float(0.5 * (part[k - 1] + part[k]))


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~binary_erosion(mask, border_value=0)


def boundary_spread_mm(readers: np.ndarray, spacing_zyx) -> float:
    """Population std (mm) of the readers' boundary positions about their mean, on the consensus boundary.

    At each boundary voxel of the consensus, reader k's signed offset is
    ``sdf_consensus - sdf_k`` (> 0 where reader k draws larger); the spread is the RMS of the
    offsets about their per-voxel mean over readers. Offsets are clipped to +-R (R: the
    consensus' equivalent radius) so a reader that missed the nodule counts as one radius off.
    """
    readers = np.asarray(readers, dtype=bool)
    cons = readers.mean(axis=0) >= 0.5
    if not cons.any():
        return 0.0
    R = _equivalent_radius_mm(cons, spacing_zyx)
    sdf_c = signed_distance(cons, spacing_zyx)
    b = _boundary(cons)
    offs = np.stack([np.clip(sdf_c[b] - signed_distance(r, spacing_zyx)[b], -R, R) for r in readers])
    return float(np.sqrt(np.mean((offs - offs.mean(axis=0)) ** 2)))


def _equivalent_radius_mm(mask: np.ndarray, spacing_zyx) -> float:
    vol = float(mask.sum()) * float(np.prod(spacing_zyx))
    return max((3 * vol / (4 * np.pi)) ** (1 / 3), 0.5)


def truth_rng(seed: int, nodule_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(nodule_id).encode()), TRUTH_STREAM])


def true_shape_phi(readers: np.ndarray, spacing_zyx, seed: int, nodule_id: str) -> tuple[np.ndarray, dict]:
    """``phi`` (mm, float32; true shape = phi < 0) on the grid of ``readers`` (R, z, y, x).

    ``readers`` must be the readers' masks on their own bounding box padded by
    :data:`PAD_MM` (see :func:`benchmark.data.ground_truth.nodule_native_data`), so the draws
    do not depend on the crop. Returns (phi, facts) with facts = spread_mm, amplitude_mm,
    correlation_mm, radius_mm.
    """
    readers = np.asarray(readers, dtype=bool)
    spacing = np.asarray(spacing_zyx, dtype=float)
    cons = readers.mean(axis=0) >= 0.5
    sdf = signed_distance(cons, spacing, pad_vox=int(np.ceil(PAD_MM / spacing.min())))
    if not cons.any():
        return sdf, {"spread_mm": 0.0, "amplitude_mm": 0.0, "correlation_mm": 0.0, "radius_mm": 0.0}
    R = _equivalent_radius_mm(cons, spacing)
    n = TRUTH_PARAMS["readers_in_error_model"]
    spread = boundary_spread_mm(readers, spacing)
    amp = min(spread / np.sqrt(n - 1), TRUTH_PARAMS["max_amplitude_per_radius"] * R)
    corr = float(np.clip(TRUTH_PARAMS["correlation_per_radius"] * R, *TRUTH_PARAMS["correlation_mm"]))
    rng = truth_rng(seed, nodule_id)
    field = gaussian_filter(rng.standard_normal(cons.shape).astype(np.float32), corr / spacing, mode="reflect")
    field /= max(float(field.std()), 1e-6)
    # the interpolated distance map cuts the voxel staircase's convex corners: shift its level so
    # the undeformed shape keeps the consensus' volume (the field then has zero mean)
    level = volume_level(sdf, int(cons.sum()), supersample_factors(spacing))
    phi = (sdf - np.float32(level) + np.float32(amp) * field).astype(np.float32)
    return phi, {"spread_mm": spread, "amplitude_mm": float(amp), "correlation_mm": corr, "radius_mm": R,
                 "level_mm": level}
