"""Dataset layer: split, geometry, ground truth, phantom, cache/store and augmentation.

Small sizes throughout (4 mm smoke spacing, a handful of nodules) so the file runs in well
under a minute on two shared cores.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.run.config import build_config
from benchmark.data import cache as cache_mod
from benchmark.data import geometry, ground_truth, index as ix, phantom, split as sp
from benchmark.data.augment import center_window, random_window
from benchmark.data.loader import PatchDataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    """The smoke preset's store, built once for the module in a private cache folder."""
    from benchmark.data.store import load_crops
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIDC_BENCH_CACHE", str(tmp_path_factory.mktemp("smoke") / "crops"))
        # the smoke preset with smaller caps: same code path, a third of the build time
        cfg = build_config("smoke", ["data.max_nodules={train: 5, val: 2, test: 2}"])
        yield cfg, load_crops(cfg.data, progress=False)


# ----------------------------------------------------------------------------- index + split
def test_index_counts_and_columns(index):
    assert len(index) == 897                       # the seed paper's count
    assert index["nodule_id"].is_unique
    assert list(index.columns) == ix.COLUMNS
    assert index["annotation_ids"].str.split(";").map(len).eq(4).all()
    assert set(index["texture_class"]) <= set(ix.TEXTURE_CLASSES)
    assert set(index["size_bin"]) <= set(ix.SIZE_BINS)


def test_size_bins_come_from_one_table():
    """The index's labels, their edges and the aggregates' keys are one table (index.SIZE_BIN_TABLE);
    the LIDC adapter's strata and the metrics module read it, and a diameter that is not a number
    is refused rather than binned."""
    from benchmark.data.datasets import get_dataset
    from benchmark.run.metrics import SIZE_BINS as metric_bins
    assert [ix.size_bin(d) for d in (0.0, 5.99, 6.0, 9.99, 10.0, 19.99, 20.0, 60.0)] == \
        ["<6", "<6", "6-10", "6-10", "10-20", "10-20", ">=20", ">=20"]
    assert get_dataset("lidc").strata.size_bins == ix.SIZE_BINS == metric_bins
    assert list(ix.SIZE_BINS.values()) == ["lt6", "6-10", "10-20", "ge20"]
    with pytest.raises(ValueError, match="finite number of mm"):
        ix.size_bin(float("nan"))


def test_split_is_patient_disjoint_and_matches_committed_file(index):
    split = sp.load_split()
    pats = {s: set(split["patients"][s]) for s in sp.SPLITS}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) \
        and not (pats["val"] & pats["test"])
    assert set().union(*pats.values()) == set(index["patient_id"])
    # every nodule of a patient is in that patient's split
    for nid, pid in zip(index["nodule_id"], index["patient_id"]):
        assert pid in pats[split["nodules"][nid]]
    n = len(set(index["patient_id"]))
    assert abs(len(pats["train"]) / n - 0.7) < 0.02 and abs(len(pats["test"]) / n - 0.2) < 0.02
    # the committed file is exactly what the seeded method produces
    rebuilt = json.dumps(sp.build_split(seed=split["seed"]), indent=1) + "\n"
    assert rebuilt == sp.SPLIT_PATH.read_text()
    assert len(sp.split_hash()) == 16


# ----------------------------------------------------------------------------- geometry
def _sphere(shape, spacing_zyx, center_mm, radius_mm):
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing_zyx))
    d2 = (z[:, None, None] - center_mm[0]) ** 2 + (y[None, :, None] - center_mm[1]) ** 2 \
        + (x[None, None, :] - center_mm[2]) ** 2
    return d2 <= radius_mm ** 2


@pytest.mark.parametrize("spacing_mm", [1.0, 2.0])
def test_resampling_keeps_physical_size(spacing_mm):
    # anisotropic native grid like a typical LIDC scan: 0.7 mm pixels, 2.5 mm slices; a
    # 20 mm sphere at several sub-voxel positions (a single position mixes in the
    # discretisation error of a 10-voxel ball, which the average removes)
    native = (2.5, 0.7, 0.7)
    shape = (24, 100, 100)
    diameter = 20.0
    true_vol = 4 / 3 * np.pi * (diameter / 2) ** 3
    crop = geometry.crop_size_for_spacing(spacing_mm, (40.0, 60.0, 60.0))
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(5):
        center = tuple(np.array([30.0, 35.0, 35.0]) + rng.uniform(-1.5, 1.5, 3))
        m = _sphere(shape, native, center, diameter / 2)
        image = np.where(m, 40.0, -850.0).astype(np.float32)
        box = geometry.NativeBox(image, np.stack([m] * 4), m, native, (0.0, 0.0, 0.0))
        img, gt, readers = geometry.resample_crop(box, center, spacing_mm, crop)
        ratios.append(gt.sum() * spacing_mm ** 3 / true_vol)
        assert (readers == gt[None]).all()
        # extent along each axis ~ the diameter
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            ext = gt.any(axis=other).sum() * spacing_mm
            assert abs(ext - diameter) <= 2 * max(spacing_mm, native[axis])
        # centred: the centre of mass sits at the crop centre
        com = np.array(np.nonzero(gt)).mean(axis=1)
        assert np.allclose(com, (np.array(crop) - 1) / 2, atol=0.5)
        assert img.min() >= -1000.0 - 1e-3 and img.max() <= 40.0 + 1e-3
    ratios = np.array(ratios)
    assert abs(ratios.mean() - 1) < 0.03, ratios
    assert (np.abs(ratios - 1) < 0.1).all(), ratios


def test_extract_box_pads_outside_volume():
    vol = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    out = geometry.extract_box(vol, (-1, 1, 2), (2, 4, 5), -1000.0)
    assert out.shape == (3, 3, 3)
    assert (out[0] == -1000).all() and out[1, 0, 0] == vol[0, 1, 2] and (out[:, :, 1:] == -1000).all()


# ----------------------------------------------------------------------------- ground truth
def test_staple_and_consensus_agree_on_real_annotations(index):
    rows = index[index["quirk"] == ""].iloc[::150].head(5)
    for row in rows.to_dict("records"):
        c = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]])
        lo, hi = geometry.box_bounds(c, (row["slice_spacing"], row["pixel_spacing"], row["pixel_spacing"]),
                                     (10, 20, 20), 4.0)
        readers, staple = ground_truth.nodule_native_masks(row, lo, hi, "staple")
        _, cons = ground_truth.nodule_native_masks(row, lo, hi, "consensus")
        assert readers.shape[0] == 4 and readers.any()
        dice = 2 * (staple & cons).sum() / (staple.sum() + cons.sum())
        assert dice > 0.95, (row["nodule_id"], dice)


def test_staple_without_padding_trap():
    # two readers draw a big ball, two a smaller one: the 2-of-4 vote is the big ball
    big = _sphere((20, 20, 20), (1, 1, 1), (10, 10, 10), 7)
    small = _sphere((20, 20, 20), (1, 1, 1), (10, 10, 10), 5)
    masks = np.stack([big, big, small, small])
    st = ground_truth.staple(masks)
    assert 2 * (st & big).sum() / (st.sum() + big.sum()) > 0.97
    assert (ground_truth.consensus(masks) == big).all()


# ----------------------------------------------------------------------------- phantom
def test_phantom_deterministic_per_seed(index):
    row = index.iloc[3].to_dict()
    c = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]])
    lo, hi = geometry.box_bounds(c, (row["slice_spacing"], row["pixel_spacing"], row["pixel_spacing"]),
                                 (10, 20, 20), 4.0)
    readers, _, phi = ground_truth.nodule_native_data(row, lo, hi, truth_seed=0)
    a = phantom.render_phantom(row, phi, lo, seed=0)
    b = phantom.render_phantom(row, phi, lo, seed=0)
    other = phantom.render_phantom(row, phi, lo, seed=1)
    assert a.shape == readers.shape[1:] and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a - other).mean() > 5.0
    # CT-like: lung background near -850 HU, nodule brighter than its surroundings
    vote = phi < 0
    assert -950 < np.median(a[~vote]) < -700
    assert a[vote].mean() > np.median(a[~vote]) + 100


# ----------------------------------------------------------------------------- cache + store
@pytest.mark.slow
def test_cache_build_reuse_and_invalid_rebuilt(index, tmp_cache):
    ids = list(index["nodule_id"].iloc[[0, 7]])
    p = cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    man = json.loads((p / "manifest.json").read_text())
    assert man["n_nodules"] == 2 and man["crop_zyx"] == [10, 20, 20]
    images = np.load(p / "images.npy")
    assert images.shape == (2, 10, 20, 20) and images.dtype == np.float16
    assert np.load(p / "readers.npy").shape == (2, 4, 10, 20, 20)
    assert list(pd.read_csv(p / "nodules.csv")["nodule_id"]) == ids
    mtime = (p / "images.npy").stat().st_mtime_ns
    assert cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False) == p
    assert (p / "images.npy").stat().st_mtime_ns == mtime          # reused, not rebuilt
    # tamper with the content: the hash no longer matches, so it is rebuilt
    g = np.load(p / "gt.npy")
    g[0, 0, 0, 0] ^= 1
    np.save(p / "gt.npy", g)
    exp = cache_mod.expected_manifest("phantom", "staple", 4.0, (10, 20, 20), 0, ids, ix.index_hash())
    assert cache_mod.validate_cache(p, exp) == (False, "gt.npy does not match its hash")
    cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    assert cache_mod.validate_cache(p, exp)[0]
    # no manifest: rebuilt as well
    (p / "manifest.json").unlink()
    cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    assert cache_mod.validate_cache(p, exp)[0]


@pytest.mark.slow
def test_load_crops_smoke_preset(smoke_store):
    from benchmark.data.store import load_crops
    cfg, store = smoke_store
    caps = cfg.data.max_nodules
    for s in ("train", "val", "test"):
        assert len(store.indices(s)) == caps[s]
    assert len(store) == sum(caps.values())
    assert {"nodule_id", "patient_id", "split", "diameter_mm", "texture_class", "size_bin"} <= set(store.table)
    rows = store.indices("train")[:3]
    x = store.images[rows]
    assert x.shape == (3, 10, 20, 20) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    hu = store.images_hu[rows]
    assert np.allclose(x, np.clip((hu + 1000) / 1400, 0, 1), atol=1e-6)
    assert store.gt[rows].dtype == np.uint8 and store.readers[rows].shape == (3, 4, 10, 20, 20)
    assert store.split_hash == sp.split_hash() and len(store.data_hash) == 16
    # patient-disjoint inside the store too
    by = store.table.groupby("patient_id")["split"].nunique()
    assert (by == 1).all()
    # a second load reuses the cache and gives identical data
    import os
    assert os.environ["LIDC_BENCH_CACHE"] == str(store.path.parent)
    again = load_crops(cfg.data, progress=False)
    assert again.data_hash == store.data_hash and np.array_equal(again.images[rows], x)


# ----------------------------------------------------------------------------- augmentation
def test_random_window_identical_for_image_and_mask():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(3, 1, 10, 20, 20)
    out_i, out_m = random_window(imgs, imgs.clone(), (8, 16, 16), g)
    assert out_i.shape == (3, 1, 8, 16, 16) and torch.equal(out_i, out_m)
    c_i, c_m = center_window(imgs, imgs, (8, 16, 16))
    assert torch.equal(c_i, imgs[:, :, 1:9, 2:18, 2:18])
    # shifts stay within (crop - patch) and both flips occur over many draws
    seen_flip = set()
    base = torch.arange(10 * 20 * 20, dtype=torch.float32).reshape(1, 1, 10, 20, 20)
    for _ in range(40):
        w, _ = random_window(base, base, (8, 16, 16), g)
        v = w[0, 0]
        seen_flip.add((bool(v[0, 0, 0] > v[0, 0, -1]), bool(v[0, 0, 0] > v[0, -1, 0])))
    assert len(seen_flip) == 4


@pytest.mark.slow
def test_patch_dataset_reproducible(smoke_store):
    cfg, store = smoke_store
    ds = PatchDataset(store, store.indices("train"), cfg.data.patch_zyx, train=True, seed=3)
    a, m, r = ds[1]
    b, m2, r2 = ds[1]
    # raw cache dtypes (HU float16, uint8 mask): converted and normalised on the training device
    assert a.shape == (1, 8, 16, 16) and a.dtype == torch.float16 and m.dtype == torch.uint8 and r == r2
    assert torch.equal(a, b) and torch.equal(m, m2)
    ev = PatchDataset(store, store.indices("val"), cfg.data.patch_zyx, train=False)
    x, y, row = ev[0]
    assert torch.equal(x[0].float(), torch.from_numpy(store.images_hu[row])[1:9, 2:18, 2:18])


def test_code_version_ignores_comments_not_code():
    from pathlib import Path
    src = (Path(cache_mod.__file__).parent / "phantom_anatomy.py").read_text()
    commented = src.replace("def _tube(", "# why, not what\ndef _tube(", 1)
    changed = src.replace("edge = 0.5 * float(", "edge = 0.6 * float(", 1)
    assert changed != src
    assert cache_mod._code_fingerprint(commented) == cache_mod._code_fingerprint(src)
    assert cache_mod._code_fingerprint(changed) != cache_mod._code_fingerprint(src)


def test_every_phantom_module_is_in_the_cache_code_version():
    """Editing any module that shapes the phantom's pixels must rebuild its caches."""
    from pathlib import Path
    from benchmark.data.datasets import get_dataset
    files = {Path(p).name for p in get_dataset("lidc").code_files("phantom")}
    here = Path(cache_mod.__file__).parent
    assert {p.name for p in here.glob("phantom*.py")} <= files
