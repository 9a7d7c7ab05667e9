"""Training windows and flips (on torch tensors, batched) and a Dataset for DataLoader use.

The stored crop is larger than the network's patch (80x80x40 mm vs 64x64x32 mm). Training
takes a random window, i.e. the nodule shifted by up to (crop - patch) / 2 voxels per axis
(8, 8, 4 at 1 mm), plus random flips in x and y (left-right, anterior-posterior; never z,
whose orientation carries the slice-thickness blur), the same for image and mask.
Evaluation takes the centre window. Shapes are (B, 1, Z, Y, X).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["random_window", "center_window", "window_offsets", "PatchDataset"]


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


class PatchDataset(torch.utils.data.Dataset):
    """(image (1, Z, Y, X) float32 in [0, 1], mask (1, Z, Y, X) float32, row index).

    ``train``: a random window and flips drawn from a generator seeded by (seed, epoch,
    row), so a sample is reproducible whatever the worker count or order; call
    :meth:`set_epoch` each epoch for fresh draws. Otherwise the centre window.
    """

    def __init__(self, store, indices, patch_zyx: Sequence[int], train: bool, seed: int = 0):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        row = int(self.indices[i])
        image = torch.from_numpy(np.ascontiguousarray(self.store.images[row]))[None, None]
        mask = torch.from_numpy(np.ascontiguousarray(self.store.gt[row])).float()[None, None]
        if self.train:
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(1)[0]))
            image, mask = random_window(image, mask, self.patch_zyx, g)
        else:
            image, mask = center_window(image, mask, self.patch_zyx)
        return image[0].contiguous(), mask[0].contiguous(), row
