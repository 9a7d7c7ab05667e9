"""Pictures people look at: learning curves and contour overlays (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curve(history: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h.get("train_loss") for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        a.plot([h["epoch"] for h in history if "val_loss" in h], [h["val_loss"] for h in history if "val_loss" in h],
               label="val loss")
    a.set_xlabel("epoch"); a.set_ylabel("loss"); a.legend(); a.grid(alpha=.3)
    vd = [(h["epoch"], h["val_dice"]) for h in history if "val_dice" in h]
    if vd:
        b.plot(*zip(*vd), marker="o", color="C2")
    b.set_xlabel("epoch"); b.set_ylabel("validation Dice"); b.set_ylim(0, 1); b.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mid_slices(vol: np.ndarray, center):
    z, y, x = center
    return [vol[z], vol[:, y, :], vol[:, :, x]]


def overlay_panel(cases: list[dict], path: Path, title: str = "") -> Path:
    """Rows = cases (keys: image (Z,Y,X), gt, pred, label); columns = axial/coronal/sagittal."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(cases), 3, figsize=(7.5, 2.6 * len(cases)), squeeze=False)
    for r, case in enumerate(cases):
        gt = case["gt"].astype(bool)
        center = tuple(int(round(c)) for c in (np.argwhere(gt).mean(0) if gt.any() else np.array(gt.shape) / 2))
        for c, (img, g, p, name) in enumerate(zip(_mid_slices(case["image"], center), _mid_slices(gt, center),
                                                  _mid_slices(case["pred"].astype(bool), center),
                                                  ("axial", "coronal", "sagittal"))):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", origin="lower" if c else "upper", interpolation="nearest")
            if g.any():
                ax.contour(g.astype(float), levels=[0.5], colors="lime", linewidths=1.2, origin="lower" if c else "upper")
            if p.any():
                ax.contour(p.astype(float), levels=[0.5], colors="red", linewidths=1.0, origin="lower" if c else "upper")
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        axes[r, 0].set_ylabel(case.get("label", ""), fontsize=8)
    fig.suptitle((title + "\n" if title else "") + "green: ground truth, red: prediction", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
