"""Evaluation: seconds per test nodule of the suite's full metric set against MONAI called directly.

Masks: the centre windows of the test crops' ground truth (what ``evaluate_run`` scores) and,
as the "prediction", that ground truth shifted by one voxel in y and x (a typical near-miss:
every metric gets a non-trivial value, none is short-circuited as an empty prediction).

Rows, all on the same masks and the same metric set (Dice, IoU, HD95, ASSD, NSD at 1 mm,
sensitivity, precision; RVE is arithmetic):
  * ``evaluate.score`` — the suite: per-nodule ``metrics.nodule_metrics`` + the table's strata;
  * ``metrics.nodule_metrics`` loop — the same without building the per-nodule table;
  * MONAI per nodule — ``monai.metrics`` functions called directly, one nodule at a time;
  * MONAI batched — the same functions called once on the (N, 1, Z, Y, X) stack.
The ratio column is MONAI-per-nodule time over each row's time (1.0 = as fast as MONAI).
Then the suite's time against the number of nodules scored (linear is expected).

    python perf/bench_eval.py                  # cpu and paper presets (1 mm subset built once)
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def masks(cfg, store, rows):
    import numpy as np

    from benchmark.data.loader import center_batches
    gts = np.concatenate([g.numpy()[:, 0] > 0.5 for _, _, g in center_batches(store, rows, 16, cfg.data.patch_zyx)])
    keep = gts.reshape(len(gts), -1).any(1)       # empty ground truth is not scored (see evaluate.score)
    gts, rows = gts[keep], rows[keep]
    preds = np.roll(gts, shift=(1, 1), axis=(2, 3))
    return preds, gts, rows


def monai_direct(preds, gts, spacing, tol, batched):
    import torch
    from monai.metrics import (compute_average_surface_distance, compute_confusion_matrix_metric, compute_dice,
                               compute_hausdorff_distance, compute_iou, compute_surface_dice,
                               get_confusion_matrix)
    sp = (spacing,) * 3

    def all_metrics(p, g):
        cm = get_confusion_matrix(p, g, include_background=True)
        return [compute_dice(p, g, include_background=True), compute_iou(p, g, include_background=True),
                compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=sp),
                compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=sp),
                compute_surface_dice(p, g, class_thresholds=[tol], include_background=True, spacing=sp),
                compute_confusion_matrix_metric("sensitivity", cm), compute_confusion_matrix_metric("precision", cm)]

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if batched:
                all_metrics(torch.from_numpy(preds)[:, None].float(), torch.from_numpy(gts)[:, None].float())
            else:
                for p, g in zip(preds, gts):
                    all_metrics(torch.from_numpy(p)[None, None].float(), torch.from_numpy(g)[None, None].float())
        return len(preds)
    return run


def main():
    p = C.parser(__doc__.splitlines()[0], presets=("cpu", "paper"))
    args = p.parse_args()
    presets = C.setup(args)
    reps = args.reps or 5
    print(f"machine: {C.machine()}")

    from benchmark.run.evaluate import score
    from benchmark.run.metrics import nodule_metrics
    out, scaling = [], []
    for preset in presets:
        cfg, store = C.subset_store(preset)
        preds, gts, rows = masks(cfg, store, store.indices("test"))
        sp, tol = cfg.data.spacing_mm, cfg.eval.nsd_tolerance_mm
        print(f"\n{preset}: {len(rows)} scorable test nodules, windows (z,y,x) {gts.shape[1:]} at {sp:g} mm",
              flush=True)

        def suite(n=len(rows)):
            score(preds[:n], gts[:n], store, rows[:n], cfg)
            return n

        def metrics_loop():
            for pr, g in zip(preds, gts):
                nodule_metrics(pr, g, sp, nsd_tolerance_mm=tol)
            return len(preds)

        res = C.interleaved({"evaluate.score (suite)": suite, "metrics.nodule_metrics loop": metrics_loop,
                             "MONAI per nodule": monai_direct(preds, gts, sp, tol, batched=False),
                             "MONAI batched": monai_direct(preds, gts, sp, tol, batched=True)},
                            reps, progress=f"{preset} eval")
        base = res["MONAI per nodule"]
        for name, v in res.items():
            out.append({"preset": preset, "scorer": name, "ms/nodule": 1000 * C.med(v["wall"]),
                        "noise": C.spread(v["wall"]), "cpu-ms/nodule": 1000 * C.med(v["cpu"]),
                        "MONAI/this (wall)": f"{C.med(base['wall']) / C.med(v['wall']):.3f}",
                        "MONAI/this (cpu)": f"{C.med(base['cpu']) / C.med(v['cpu']):.3f}"})

        counts = sorted({max(1, len(rows) // 4), max(1, len(rows) // 2), len(rows)})
        sres = C.interleaved({n: (lambda n=n: suite(n)) for n in counts}, max(3, reps - 2),
                             progress=f"{preset} nodule count")
        for n in counts:
            scaling.append({"preset": preset, "nodules": n, "total s": n * C.med(sres[n]["wall"]),
                            "ms/nodule": 1000 * C.med(sres[n]["wall"])})

    print(C.table(out, list(out[0]), "seconds per test nodule: suite vs MONAI direct"))
    print(C.table(scaling, list(scaling[0]), "evaluate.score against the number of nodules"))


if __name__ == "__main__":
    main()
