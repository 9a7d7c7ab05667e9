"""The phantom's figures for datasets/lidc/CARD.md, on the test split (no training involved).

Per preset (spacing), on the centre evaluation window and with the suite's metrics:
  * phantom ceiling: the true shape scored as a prediction against the readers' ground truth;
  * inter-reader: each reader against the STAPLE of the other three (benchmark.run.reference_rows);
  * readers vs truth: each reader against the true shape;
  * threshold oracle on the noise-free nodule signal (benchmark.data.oracle): best single
    threshold for all nodules and best threshold per nodule, against the ground truth (and,
    for scale, against the truth);
  * the threshold baseline (HU > -400 + centre component, as `bench baseline`);
  * volume ratios per size bin: the crop's ground truth (and true shape) over pylidc's 2-of-4
    consensus volume on the native grid, nodules not cut by the crop.

The crops come from the shared cache (a test-split subset cache is built when no full cache
exists), so the figures are those of the data the runs see.

    python datasets/lidc/phantom_card.py --preset cpu paper          # 2 mm and 1 mm (CARD.md)
    python datasets/lidc/phantom_card.py --preset smoke --probes-only   # ceiling, oracle, volumes at 4 mm
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]   # the repository (this file is datasets/lidc/phantom_card.py)
sys.path.insert(0, str(ROOT))


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def probe_card(preset: str, seed: int, with_oracle: bool = True) -> dict:
    """The figures that need no image: ceiling Dice, threshold oracle and volume ratios, from
    the probes alone (no cache, no rendering of the clutter)."""
    from benchmark.run.config import build_config
    from benchmark.data import oracle
    from benchmark.data.index import load_index
    from benchmark.data.split import load_split
    import pandas as pd
    d = build_config(preset).data
    index = load_index()
    split = load_split()
    test = index[[split["nodules"][n] == "test" for n in index["nodule_id"]]]
    dice, vs_gt, vs_truth, vols, n_empty = [], [], [], [], 0
    t0 = time.time()
    for row in test.to_dict("records"):
        p = oracle.probe_nodule(row, d.spacing_mm, d.crop_zyx, seed=seed, gt_method=d.ground_truth)
        g = oracle.window(p.gt.astype(np.uint8), d.patch_zyx) > 0
        t = oracle.window(p.truth.astype(np.uint8), d.patch_zyx) > 0
        cut = bool(np.take(p.gt, [0, -1], axis=0).any() or np.take(p.gt, [0, -1], axis=1).any()
                   or np.take(p.gt, [0, -1], axis=2).any())
        vols.append({"size_bin": row["size_bin"], "truncated": cut, "consensus_mm3": p.native_consensus_mm3,
                     "native_gt_mm3": p.native_gt_mm3, "gt_mm3": float(p.gt.sum()) * d.spacing_mm ** 3,
                     "truth_mm3": float(p.truth.sum()) * d.spacing_mm ** 3})
        if not g.any():
            n_empty += 1
            continue
        dice.append(oracle.dice_per_level(t.astype(np.float32), g, levels=[0.5])[0])
        if with_oracle:
            s = oracle.window(p.signal, d.patch_zyx)
            vs_gt.append(oracle.dice_per_level(s, g))
            vs_truth.append(oracle.dice_per_level(s, t))
    out = {"preset": preset, "spacing_mm": d.spacing_mm, "patch_zyx": list(d.patch_zyx), "seed": seed,
           "n_test": int(len(test)), "ceiling": {"dice": _mean(dice), "dice_median": float(np.median(dice)),
                                                  "n": len(dice)},
           "n_gt_empty": n_empty, "seconds": round(time.time() - t0, 1)}
    if with_oracle:
        vs_gt, vs_truth = np.array(vs_gt), np.array(vs_truth)
        k = int(vs_gt.mean(axis=0).argmax())
        out["oracle"] = {"global_dice": float(vs_gt.mean(axis=0)[k]), "global_level": float(oracle.LEVELS[k]),
                         "per_nodule_dice": float(vs_gt.max(axis=1).mean()),
                         "global_dice_vs_truth": float(vs_truth.mean(axis=0).max()),
                         "per_nodule_dice_vs_truth": float(vs_truth.max(axis=1).mean()), "n": int(len(vs_gt))}
    v = pd.DataFrame(vols)
    v = v[~v["truncated"]]
    out["volume_ratios"] = {b: {"n": int(len(g)),
                                "gt_over_consensus_median": float((g["gt_mm3"] / g["consensus_mm3"]).median()),
                                "native_gt_over_consensus_median": float((g["native_gt_mm3"] / g["consensus_mm3"]).median()),
                                "truth_over_consensus_median": float((g["truth_mm3"] / g["consensus_mm3"]).median())}
                            for b, g in v.groupby("size_bin")}
    return out


def card(preset: str, seed: int, oracle_on: bool, workers: int) -> dict:
    from benchmark.run.config import build_config
    from benchmark.data import oracle
    from benchmark.data.baseline import score_threshold
    from benchmark.data.cache import ensure_cache
    from benchmark.data.index import load_index
    from benchmark.data.split import load_split
    from benchmark.data.store import CropStore
    from benchmark.run.reference_rows import score_inter_reader, score_phantom_ceiling

    cfg = build_config(preset)
    cfg.data.phantom_seed = seed
    d = cfg.data
    index = load_index()
    split = load_split()
    ids = [n for n in index["nodule_id"] if split["nodules"][n] == "test"]
    t0 = time.time()
    path, rows = ensure_cache("phantom", d.ground_truth, d.spacing_mm, d.crop_zyx, seed, ids, workers=workers)
    store = CropStore(path, rows)
    build_s = time.time() - t0
    test = store.indices("test")
    out: dict = {"preset": preset, "spacing_mm": d.spacing_mm, "patch_zyx": list(d.patch_zyx),
                 "n_test": int(len(test)), "phantom_version": store.phantom_version, "seed": seed,
                 "data_hash": store.data_hash, "cache_seconds": round(build_s, 1)}

    ceil = score_phantom_ceiling(store, test, cfg)
    ok = ceil[~ceil["gt_empty"].astype(bool)]
    out["ceiling"] = {m: _mean(ok[m]) for m in ("dice", "hd95_mm", "nsd", "rve")} | {
        "dice_median": float(ok["dice"].median()), "n": int(len(ok))}
    out["ceiling_by_size"] = {b: _mean(g["dice"]) for b, g in ok.groupby("size_bin")}

    ir = score_inter_reader(store, test, cfg)
    ok = ir[~ir["gt_empty"].astype(bool)]
    out["inter_reader"] = {"dice": _mean(ok["dice"]), "hd95_mm": _mean(ok["hd95_mm"]), "nsd": _mean(ok["nsd"])}
    out["readers_vs_truth"] = {"dice": _mean(ok["dice_vs_truth"].dropna()),
                               "hd95_mm": _mean(ok["hd95_mm_vs_truth"].dropna()),
                               "nsd": _mean(ok["nsd_vs_truth"].dropna())}

    base = score_threshold(store, test, d.patch_zyx)
    out["threshold_baseline"] = {"dice": _mean(base), "dice_median": float(np.median(base))}

    if oracle_on:
        table = store.table
        levels = oracle.LEVELS
        vs_gt, vs_truth, vols = [], [], []
        t1 = time.time()
        for i in test:
            row = table.iloc[int(i)].to_dict()
            p = oracle.probe_nodule(row, d.spacing_mm, d.crop_zyx, seed=seed, gt_method=d.ground_truth)
            g = oracle.window(p.gt.astype(np.uint8), d.patch_zyx) > 0
            t = oracle.window(p.truth.astype(np.uint8), d.patch_zyx) > 0
            s = oracle.window(p.signal, d.patch_zyx)
            # the probe recomputes the crop through the cache's code path: it must match the cache
            same = bool(np.array_equal(p.gt, store.gt[int(i)] > 0) and np.array_equal(p.truth, store.truth[int(i)] > 0))
            if g.any():
                vs_gt.append(oracle.dice_per_level(s, g, levels))
                vs_truth.append(oracle.dice_per_level(s, t, levels))
            vols.append({"size_bin": row["size_bin"], "truncated": bool(row.get("gt_truncated", False)),
                         "consensus_mm3": p.native_consensus_mm3, "native_gt_mm3": p.native_gt_mm3,
                         "gt_mm3": float(p.gt.sum()) * d.spacing_mm ** 3,
                         "truth_mm3": float(p.truth.sum()) * d.spacing_mm ** 3,
                         "native_truth_mm3": p.native_truth_mm3, "matches_cache": same})
        vs_gt, vs_truth = np.array(vs_gt), np.array(vs_truth)
        k = int(vs_gt.mean(axis=0).argmax())
        out["oracle"] = {"global_dice": float(vs_gt.mean(axis=0)[k]), "global_level": float(levels[k]),
                         "per_nodule_dice": float(vs_gt.max(axis=1).mean()),
                         "global_dice_vs_truth": float(vs_truth.mean(axis=0).max()),
                         "per_nodule_dice_vs_truth": float(vs_truth.max(axis=1).mean()),
                         "n": int(len(vs_gt)), "seconds": round(time.time() - t1, 1)}
        import pandas as pd
        v = pd.DataFrame(vols)
        out["probes_match_cache"] = int(v["matches_cache"].sum())
        v = v[~v["truncated"]]
        ratios = {}
        for b, g in v.groupby("size_bin"):
            ratios[b] = {"n": int(len(g)),
                         "gt_over_consensus_median": float((g["gt_mm3"] / g["consensus_mm3"]).median()),
                         "native_gt_over_consensus_median": float((g["native_gt_mm3"] / g["consensus_mm3"]).median()),
                         "truth_over_consensus_median": float((g["truth_mm3"] / g["consensus_mm3"]).median())}
        out["volume_ratios"] = ratios
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["cpu", "paper"])
    ap.add_argument("--seed", type=int, default=0, help="phantom seed")
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle and volume probes (slow at 1 mm)")
    ap.add_argument("--probes-only", action="store_true",
                    help="only what needs no image (ceiling Dice, oracle, volumes), from the probes: no cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file (default: print only)")
    a = ap.parse_args(argv)
    results = []
    for preset in a.preset:
        r = (probe_card(preset, a.seed, not a.no_oracle) if a.probes_only
             else card(preset, a.seed, not a.no_oracle, a.workers))
        print(json.dumps(r, indent=1), flush=True)
        results.append(r)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
