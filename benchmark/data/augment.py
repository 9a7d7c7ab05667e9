"""Training windows and flips (on torch tensors, batched).

The stored crop is larger than the network's patch (80x80x40 mm vs 64x64x32 mm). Training
takes a random window, i.e. the nodule shifted by up to (crop - patch) / 2 voxels per axis
(8, 8, 4 at 1 mm), plus random flips in x and y (left-right, anterior-posterior; never z,
whose orientation carries the slice-thickness blur), the same for image and mask.
Evaluation takes the centre window. Shapes are (B, 1, Z, Y, X).

The training loader (``benchmark.data.loader``) cuts windows one sample at a time on the host
(:func:`window_slices`) or all of a batch at once on the device (:func:`gather_windows`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["random_window", "center_window", "window_offsets", "window_slices", "gather_windows"]


def _check(images: torch.Tensor, patch_zyx: Sequence[int]):
    if images.ndim != 5:
        raise ValueError(f"expected (B, C, Z, Y, X), got shape {tuple(images.shape)}")
    crop = images.shape[2:]
    if any(p > c for p, c in zip(patch_zyx, crop)):
        raise ValueError(f"patch {tuple(patch_zyx)} is larger than the crop {tuple(crop)}")
    return crop


def center_window(images: torch.Tensor, masks: Optional[torch.Tensor], patch_zyx: Sequence[int]):
    """The centre window (offset (crop - patch) // 2 per axis) of images and masks."""
    crop = _check(images, patch_zyx)
    o = [(c - p) // 2 for c, p in zip(crop, patch_zyx)]
    sl = (Ellipsis,) + tuple(slice(a, a + p) for a, p in zip(o, patch_zyx))
    return images[sl], (masks[sl] if masks is not None else None)


def window_offsets(crop_zyx, patch_zyx, generator: torch.Generator, batch: int) -> torch.Tensor:
    """(B, 3) integer offsets, uniform in [0, crop - patch] per axis."""
    hi = torch.tensor([c - p for c, p in zip(crop_zyx, patch_zyx)]) + 1
    return (torch.rand(batch, 3, generator=generator) * hi).long().clamp_max(hi - 1)


def random_window(images: torch.Tensor, masks: torch.Tensor, patch_zyx: Sequence[int],
                  generator: Optional[torch.Generator] = None, flip: bool = True):
    """Random window + random x/y flips, identical for image and mask (per sample)."""
    crop = _check(images, patch_zyx)
    b = images.shape[0]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    offs = window_offsets(crop, patch_zyx, g, b)
    flips = torch.rand(b, 2, generator=g) < 0.5 if flip else torch.zeros(b, 2, dtype=torch.bool)
    out_i, out_m = [], []
    for k in range(b):
        z, y, x = offs[k].tolist()
        sl = (slice(None), slice(z, z + patch_zyx[0]), slice(y, y + patch_zyx[1]), slice(x, x + patch_zyx[2]))
        im, ms = images[k][sl], masks[k][sl]
        dims = [d for d, f in zip((-1, -2), flips[k].tolist()) if f]   # x, then y
        if dims:
            im, ms = im.flip(dims), ms.flip(dims)
        out_i.append(im)
        out_m.append(ms)
    return torch.stack(out_i), torch.stack(out_m)


def window_slices(offset: Sequence[int], patch_zyx: Sequence[int]) -> tuple[slice, slice, slice]:
    """(z, y, x) slices of the window at ``offset``."""
    return tuple(slice(int(o), int(o) + int(p)) for o, p in zip(offset, patch_zyx))


def gather_windows(volumes: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                   patch_zyx: Sequence[int]) -> torch.Tensor:
    """Windows of ``volumes`` (N, Z, Y, X) as one gather on their device: sample k is
    ``volumes[index[k]]`` at ``offsets[k]`` (z, y, x), flipped in x if ``flips[k, 0]`` and in y
    if ``flips[k, 1]``. Returns (B, 1, Z, Y, X): what slicing and ``flip`` give, value for value."""
    pz, py, px = (int(p) for p in patch_zyx)
    dev = volumes.device
    az, ay, ax = (torch.arange(n, device=dev) for n in (pz, py, px))
    z = offsets[:, 0, None] + az
    y = offsets[:, 1, None] + torch.where(flips[:, 1, None], py - 1 - ay, ay)
    x = offsets[:, 2, None] + torch.where(flips[:, 0, None], px - 1 - ax, ax)
    out = volumes[index[:, None, None, None], z[:, :, None, None], y[:, None, :, None], x[:, None, None, :]]
    return out[:, None]
