"""PNG montage of crops: three orthogonal mid-slices per nodule with GT and reader contours.

One row per nodule, three panels (axial z, coronal y, sagittal x mid-slices through the crop
centre), the image in the HU window [-1000, 400], the ground truth as a thick white contour
the four readers as thin coloured contours and, on the phantom, its true shape (the shape
the image was rendered from) as a dashed yellow contour. Crops are isotropic, so every panel
has square pixels. The phantom's structures (version 2: vessel trees, airways with an air
lumen, fissures, CT-like noise texture, margin blur) are what the panels show around the nodule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


__all__ = ["write_montage", "pick_rows"]

READER_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00")


def pick_rows(table, n: int = 8, split: Optional[str] = None) -> list[int]:
    """Positions in ``table`` spread over texture and size (deterministic), at most ``n``.

    ``table`` needs texture_class, size_bin and (when ``split`` is given) split columns:
    a CropStore's table, or the index with the split joined.
    """
    t = table.reset_index(drop=True)
    if split is not None:
        t = t[t["split"] == split]
    groups = [list(g.index) for _, g in t.groupby(["texture_class", "size_bin"], sort=True)]
    out: list[int] = []
    while len(out) < min(n, len(t)):
        for g in groups:
            if g and len(out) < n:
                out.append(int(g.pop(0)))
    return out


def write_montage(store, rows: Sequence[int], out: Path, title: Optional[str] = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = list(rows)
    if not rows:
        from benchmark.core.errors import UsageError
        raise UsageError("no crops to draw")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        img = store.images_hu[row]
        gt = store.gt[row]
        readers = store.readers[row]
        truth = store.truth[row] if getattr(store, "truth", None) is not None else None
        c = [s // 2 for s in img.shape]
        views = [(lambda a, k=c[0]: a[..., k, :, :]), (lambda a, k=c[1]: a[..., :, k, :]),
                 (lambda a, k=c[2]: a[..., :, :, k])]
        for v, (view, name) in enumerate(zip(views, ("axial", "coronal", "sagittal"))):
            ax = axes[r, v]
            ax.imshow(view(img), cmap="gray", vmin=-1000, vmax=400, origin="upper" if v == 0 else "lower",
                      interpolation="nearest")
            for k in range(readers.shape[0]):
                m = view(readers[k])
                if m.any():
                    ax.contour(m, [0.5], colors=READER_COLOURS[k % len(READER_COLOURS)], linewidths=0.8,
                               origin="upper" if v == 0 else "lower")
            g = view(gt)
            if g.any():
                ax.contour(g, [0.5], colors="white", linewidths=1.8, origin="upper" if v == 0 else "lower")
            if truth is not None and view(truth).any():
                ax.contour(view(truth), [0.5], colors="yellow", linewidths=1.0, linestyles="dashed",
                           origin="upper" if v == 0 else "lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if v == 0:
                t = store.table.iloc[row]
                ax.set_ylabel(f"{t['nodule_id']}\n{t['diameter_mm']:.0f} mm {t['texture_class']}", fontsize=7)
            if r == 0:
                ax.set_title(name, fontsize=8)
    handles = [Line2D([], [], color="white", lw=1.8, label="ground truth")] + \
        [Line2D([], [], color=READER_COLOURS[k % len(READER_COLOURS)], lw=0.8, label=f"reader {k + 1}")
         for k in range(store.readers.shape[1])]
    if getattr(store, "truth", None) is not None:
        handles.append(Line2D([], [], color="yellow", lw=1.0, ls="--", label="true shape"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, facecolor="0.5")
    m = store.manifest
    version = f" v{m['phantom_version']}" if m.get("phantom_version") else ""
    fig.suptitle(title or f"{m['source']}{version} crops, {m['ground_truth']} GT, {m['spacing_mm']:g} mm", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
