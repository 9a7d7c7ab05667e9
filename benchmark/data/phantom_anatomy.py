"""The phantom's anatomy around a nodule: the sampling grid, vessel trees (Murray's law
bifurcations), airways with their arteries, fissures. Called by ``phantom.render_phantom`` in a
fixed order on the nodule's own random stream, so moving code here changes no voxel."""
from __future__ import annotations

import math

import numpy as np

from benchmark.data.phantom_params import PARAMS


def _dot(a, b) -> float:
    """``a . b`` of two 3-vectors, as ``(a0 b0 + a1 b1) + a2 b2`` in plain float arithmetic.

    Not ``a @ b`` or ``np.linalg.norm``: NumPy hands those to OpenBLAS, whose kernel is chosen by
    the CPU. Its AVX-512 kernel fuses each multiply into the add (one rounding), its AVX2 kernel
    does not (two), so the last bit differed for a third of the vectors; in the vessel trees a
    last bit decides where a branch ends or whether it grows, and an AVX-512 machine rendered a
    sixth of the nodules with other vessels (up to 130 HU apart), i.e. other data. This is the
    AVX2 kernel's arithmetic, in which every run so far was rendered, now on every CPU.
    """
    a0, a1, a2 = (float(x) for x in a)
    b0, b1, b2 = (float(x) for x in b)
    return a0 * b0 + a1 * b1 + a2 * b2


def _norm(v) -> float:
    """Length of a 3-vector (see :func:`_dot` for why not ``np.linalg.norm``)."""
    return math.sqrt(_dot(v, v))


def _unit(rng, z_weight=1.0) -> np.ndarray:
    v = rng.standard_normal(3) * np.array([z_weight, 1.0, 1.0])
    return v / _norm(v)


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
        L2 = _dot(d, d) or 1e-9
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
    bend -= _dot(bend, d) * d
    path = _bezier(mid - span * d, mid + bend * (0.3 if through is not None else 1.0), mid + span * d)
    if through is not None:  # keep the touching point where it was placed
        k = np.argmin(np.linalg.norm(path - through, axis=1))
        path = path - (path[k] - through)
    r = r0 if r0 is not None else 0.5 + rng.gamma(2.0, 0.45)
    radii = r * np.linspace(1.0, 1.0 - rng.uniform(0, 0.4), len(path))
    return path, radii


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``v`` about the unit ``axis``."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * _dot(axis, v) * (1 - np.cos(angle))


def _perpendicular(rng, d: np.ndarray) -> np.ndarray:
    u = _unit(rng)
    u -= _dot(u, d) * d
    return u / max(_norm(u), 1e-6)


def _vessel_tree(rng, occ: np.ndarray, grid: _Grid, half_extent: np.ndarray) -> None:
    """One branching tree entering the box, calibre falling at each bifurcation (Murray's law)."""
    d = _unit(rng, z_weight=0.7)
    start = -d * 1.1 * float(np.max(half_extent)) + _perpendicular(rng, d) * rng.uniform(0, 0.8) * half_extent
    stack = [(start, d, 1.0 + rng.gamma(2.0, 0.5), 0)]
    limit = half_extent + 5.0
    while stack:
        p, d, r, depth = stack.pop()
        length = r * rng.uniform(6, 12)
        end = p + d * length
        bend = rng.normal(0, 0.08 * length, 3)
        bend -= _dot(bend, d) * d
        path = _bezier(p, (p + end) / 2 + bend, end, n=max(3, int(length / 3.0) + 1))
        _tube(occ, grid, path, np.full(len(path), r))
        d = path[-1] - path[-2]
        d /= max(_norm(d), 1e-9)
        if depth + 1 >= PARAMS["vessel_max_depth"] or np.any(np.abs(end) > limit):
            continue
        k = float(np.clip(rng.normal(*PARAMS["murray_exponent"]), 2.2, 3.6))
        q = rng.uniform(0.5, 1.0)
        r1 = r / (1 + q ** k) ** (1 / k)
        r2 = q * r1
        total = np.radians(float(np.clip(rng.normal(*PARAMS["bifurcation_angle_deg"]), 10, 70)))
        # the thinner daughter turns more (its share of the angle grows as its area falls)
        a1 = total * r2 ** 2 / (r1 ** 2 + r2 ** 2)
        axis = _perpendicular(rng, d)
        for rr, ang in ((r1, a1), (r2, -(total - a1))):
            if rr >= PARAMS["vessel_min_radius_mm"]:
                stack.append((end, _rotate(d, axis, ang), rr, depth + 1))


def _airway(rng, grid: _Grid, half_extent: np.ndarray, R: float):
    """(wall occupancy, lumen occupancy, artery occupancy) of a bronchus passing the nodule."""
    shape = grid.shape
    wall = np.zeros(shape, np.float32)
    lumen = np.zeros(shape, np.float32)
    artery = np.zeros(shape, np.float32)
    ro = rng.uniform(*PARAMS["airway_outer_radius_mm"])
    ri = ro * float(np.clip(rng.normal(*PARAMS["airway_lumen_ratio"]), 0.51, 0.86))
    ra = ro / float(np.clip(rng.normal(*PARAMS["bronchoarterial_ratio"]), 0.5, 1.1))
    radial = _unit(rng, z_weight=0.6)
    point = radial * (R + ro + rng.uniform(2, 12))
    tangent = _perpendicular(rng, radial)
    path, _ = _vessel(rng, half_extent, through=point, direction=tangent, r0=ro)
    _tube(wall, grid, path, np.full(len(path), ro))
    _tube(lumen, grid, path, np.full(len(path), ri))
    side = _perpendicular(rng, tangent)
    _tube(artery, grid, path + side * (ro + ra + 0.3), np.full(len(path), ra))
    return wall, lumen, artery


def _fissure(rng, grid: _Grid, R: float) -> np.ndarray:
    """Partial-volume occupancy of a thin, gently curved fissure plane beyond the nodule."""
    z, y, x = grid.open()
    n = _unit(rng, z_weight=0.5)
    d0 = (R + rng.uniform(2, 20)) * (1 if rng.uniform() < 0.5 else -1)
    thick = rng.uniform(*PARAMS["fissure_thickness_mm"])
    curv = rng.uniform(0.002, 0.01)
    along = z * n[0] + y * n[1] + x * n[2]
    perp2 = (z ** 2 + y ** 2 + x ** 2) - along ** 2
    s = along - d0 + np.sign(d0) * curv * perp2
    # overlap of the voxel's extent along the normal with the sheet, as a fraction of it
    w = float(np.sqrt(np.sum((n * grid.spacing) ** 2)))
    occ = np.clip(np.minimum(s + w / 2, thick / 2) - np.maximum(s - w / 2, -thick / 2), 0, None) / w
    if rng.uniform() < PARAMS["p_fissure_incomplete"]:
        t = _perpendicular(rng, n)
        u = z * t[0] + y * t[1] + x * t[2]
        occ = occ * (u > rng.uniform(-15, 15))
    return occ.astype(np.float32)
