"""``bench predict`` and ``bench register``: segment nodules of a CT (or export a split) with a
trained model (:mod:`benchmark.run.predict`), and put a run's model in the MLflow registry."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmark.core.errors import UsageError
from benchmark.run.predict import (export_split, load_predictor, parse_point, predict_at, read_ct, read_locations,
                                   to_world)


def cmd_predict(args):
    import SimpleITK as sitk
    out = Path(args.out)
    if args.split:
        if args.ct or args.at or args.nodules:
            raise UsageError("--split exports a split of the benchmark; it takes no --ct/--at/--nodules")
        if not args.run:
            raise UsageError("--split needs --run RUN_ID (the run's own data config picks the crops)")
        predictor = load_predictor(run_id=args.run)
        from benchmark.data import load_crops
        store = load_crops(predictor.config.data)
        files = export_split(predictor, store, args.split, out)
        print(f"wrote {len(files) // 3} {args.split} nodules (image, gt, pred NIfTI) to {out}")
        print(f"view: 3D Slicer or ITK-SNAP, open {out}/<nodule>_image.nii.gz, then its _gt and _pred as "
              f"segmentations", file=sys.stderr)
        return
    if not args.ct:
        raise UsageError("bench predict needs --ct SCAN (NIfTI file or DICOM folder) with --at/--nodules, "
                         "or --split test")
    points = [(f"at{n}", parse_point(a)) for n, a in enumerate(args.at or [], 1)]
    if args.nodules:
        points += read_locations(args.nodules)
    if not points:
        raise UsageError("give nodule locations with --at x,y,z (repeatable) or --nodules FILE.csv")
    predictor = load_predictor(args.run, args.model)
    image = read_ct(args.ct)
    world = [to_world(image, p, voxel=args.voxel, ras=args.ras) for _, p in points]
    labels, counts = predict_at(predictor, image, world)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.ct).name.split(".")[0] or "ct"
    path = out / f"{stem}_pred.nii.gz"
    sitk.WriteImage(labels, str(path))
    vox_mm3 = float(np.prod(image.GetSpacing()))
    for n, ((ident, _), lps, c) in enumerate(zip(points, world, counts), 1):
        print(f"label {n}  {ident:12s} LPS ({lps[0]:.1f}, {lps[1]:.1f}, {lps[2]:.1f}) mm  "
              f"{c} voxels, {c * vox_mm3:.0f} mm3" + ("  (nothing segmented)" if c == 0 else ""))
    print(f"wrote {path} (the scan's grid and world frame: open it over {args.ct} in 3D Slicer or ITK-SNAP)",
          file=sys.stderr)


def cmd_register(args):
    from benchmark.core.tracking import register_model
    v = register_model(args.run_id, args.name, args.description, force=args.force)
    print(f"registered run {args.run_id} as {v.name} version {v.version} (models:/{v.name}/{v.version})")


def register(sub):
    p = sub.add_parser("predict", help="segment nodules of a CT with a trained model; write NIfTI a viewer opens")
    p.add_argument("--run", metavar="RUN_ID", help="a finished run (its weights_only best.pt and config)")
    p.add_argument("--model", metavar="URI", help="an MLflow model URI instead (models:/<model_id> from a run's model_uri tag, models:/NAME/V); "
                                                 "unpickles code: trusted models only")
    p.add_argument("--ct", help="CT to segment: a NIfTI (.nii/.nii.gz) file or a DICOM series folder, in HU")
    p.add_argument("--at", action="append", metavar="X,Y,Z",
                   help="a nodule location, world mm (LPS) unless --voxel/--ras; repeatable")
    p.add_argument("--nodules", metavar="CSV", help="nodule locations, a CSV with columns x,y,z[,id]")
    p.add_argument("--voxel", action="store_true", help="locations are voxel indices i,j,k of the CT (ITK order)")
    p.add_argument("--ras", action="store_true", help="world locations are RAS (as 3D Slicer shows), not LPS")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="instead of a CT: export this split's nodules (image, gt, prediction)")
    p.add_argument("--out", default="predictions", help="output folder")
    p.set_defaults(func=cmd_predict)

    r = sub.add_parser("register", help="register a finished run's MLflow model in the model registry")
    r.add_argument("run_id", metavar="RUN_ID")
    r.add_argument("--name", required=True, help="registered model name, e.g. lidc-phantom-cpu")
    r.add_argument("--description", help="text for the new version (e.g. its leaderboard row)")
    r.add_argument("--force", action="store_true",
                   help="make a new version even if this run is already registered under this name")
    r.set_defaults(func=cmd_register)
