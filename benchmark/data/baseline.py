"""The non-learned baseline: an intensity threshold plus the connected component at the centre.

The crop is centred on the nodule, so "the component containing (or, if the centre voxel is
below threshold, nearest to) the centre" is the natural no-training segmentation. It fails
exactly where the phantom (and real CT) is hard: vessels and chest wall above the threshold
that touch the nodule are swallowed into its component, ground-glass nodules sit below it,
and partial-volume edges move the boundary. The gap between this and a trained network is
reported in datasets/lidc/CARD.md.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["predict_threshold", "score_threshold", "DEFAULT_THRESHOLD_HU"]

#: between lung parenchyma (~ -850 HU) and solid tissue (~ 0 HU)
DEFAULT_THRESHOLD_HU = -400.0


def predict_threshold(image_hu: np.ndarray, threshold_hu: float = DEFAULT_THRESHOLD_HU) -> np.ndarray:
    """Boolean mask (same shape) of the above-threshold component at / nearest the centre."""
    image_hu = np.asarray(image_hu, dtype=np.float32)
    fg = image_hu > threshold_hu
    labels, n = ndimage.label(fg)          # 6-connectivity: diagonal contacts do not merge
    out = np.zeros(fg.shape, dtype=bool)
    if n == 0:
        return out
    centre = tuple(s // 2 for s in fg.shape)
    lab = labels[centre]
    if lab == 0:
        # nearest foreground voxel to the centre (physical isotropy: crops are isotropic)
        _, idx = ndimage.distance_transform_edt(~fg, return_indices=True)
        lab = labels[tuple(i[centre] for i in idx)]
    return labels == lab


def score_threshold(store, rows: Sequence[int], patch_zyx: Sequence[int],
                    threshold_hu: float = DEFAULT_THRESHOLD_HU) -> np.ndarray:
    """Per-nodule Dice of the baseline on the centre window (MONAI's compute_dice)."""
    import torch
    from monai.metrics import compute_dice
    from benchmark.data.augment import center_window
    rows = np.asarray(rows)
    hu = torch.from_numpy(store.images_hu[rows])[:, None]
    gt = torch.from_numpy(store.gt[rows]).float()[:, None]
    hu, gt = center_window(hu, gt, patch_zyx)
    pred = torch.stack([torch.from_numpy(predict_threshold(h[0].numpy(), threshold_hu)) for h in hu])[:, None]
    # empty prediction and empty truth count as a perfect match, as in the engine's metrics
    dice = compute_dice(pred.float(), gt, include_background=True, ignore_empty=False)
    return dice[:, 0].numpy()
