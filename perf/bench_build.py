"""Dataset build: seconds per nodule for the phantom crops with 1 and 2 worker processes.

Times ``benchmark.data.cache.build_cache`` end to end (index lookup, phantom rendering, reader
masks and STAPLE, resampling, the memmap writes, the per-file sha256 and the manifest) on a
deterministic, size-stratified subset of the phantom index (default 30 nodules) at 2 mm, with
``force=True`` so every repetition really builds, in the script's private cache folder. Worker
counts alternate (1, 2, 2, 1, ...) and medians are compared. The full-index figure is an
EXTRAPOLATION (per-nodule time x 897), labelled as such; the build of the project's own full
cache, when its manifest is present, is printed beside it as a measured cross-check.
A second table times 1/3, 2/3 and all of the subset with 2 workers (cost against nodule count).

    python perf/bench_build.py
    python perf/bench_build.py --nodules 20 --spacing 4
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def pick(n: int) -> list[str]:
    from benchmark.data.index import load_index
    from benchmark.data.split import load_split
    from benchmark.data.store import select_nodules
    # roughly the split's proportions, so the subset has the index's mix of sizes and scans
    caps = {"train": round(0.7 * n), "val": round(0.1 * n)}
    caps["test"] = n - caps["train"] - caps["val"]
    return select_nodules(load_index(), load_split(), caps)


def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--nodules", type=int, default=30)
    p.add_argument("--spacing", type=float, default=2.0)
    args = p.parse_args()
    C.setup(args)
    reps = args.reps or 2
    print(f"machine: {C.machine()}")

    from benchmark.data.cache import build_cache
    from benchmark.data.index import load_index
    n_index = len(load_index())
    ids = pick(args.nodules)

    def build(nodule_ids, workers):
        def run():
            build_cache("phantom", "staple", args.spacing, None, 0, nodule_ids, workers=workers, progress=False,
                        force=True)
            return len(nodule_ids)
        return run

    build(ids[:2], 1)()   # imports (pylidc, SimpleITK, scipy) and the index, outside the timings
    res = C.interleaved({1: build(ids, 1), 2: build(ids, 2)}, reps, warmup=0, progress="workers")
    rows = []
    for w, v in res.items():
        per = C.med(v["wall"])
        rows.append({"workers": w, "nodules": len(ids), "s/nodule": per, "noise": C.spread(v["wall"]),
                     "build s": per * len(ids), f"EXTRAPOLATED s for all {n_index}": per * n_index,
                     "speed-up vs 1": f"{C.med(res[1]['wall']) / per:.2f}"})
    print(C.table(rows, list(rows[0]), f"build at {args.spacing:g} mm, phantom, STAPLE ground truth"))

    counts = sorted({max(2, len(ids) // 3), max(2, 2 * len(ids) // 3), len(ids)})
    sres = C.interleaved({n: build(ids[:n], 2) for n in counts}, 1, warmup=0, progress="nodule count")
    srows = [{"nodules": n, "build s (2 workers)": n * C.med(sres[n]["wall"]),
              "s/nodule": C.med(sres[n]["wall"])} for n in counts]
    print(C.table(srows, list(srows[0]), "build time against the number of nodules"))

    # the project's own full cache, if built: a measured full-index figure to check the extrapolation
    from benchmark import PROJECT_ROOT
    from benchmark.data.geometry import crop_size_for_spacing
    name = f"phantom-staple-{args.spacing:g}mm"
    man = PROJECT_ROOT / ".cache" / "crops" / name / "manifest.json"
    if man.is_file() and tuple(json.loads(man.read_text())["crop_zyx"]) == crop_size_for_spacing(args.spacing):
        m = json.loads(man.read_text())
        print(f"cross-check: the project's full cache {name} ({m['n_nodules']} nodules) recorded build_seconds = "
              f"{m['build_seconds']} at {m['built_at']} (default 2 workers, load unknown)")


if __name__ == "__main__":
    main()
