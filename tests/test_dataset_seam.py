"""The dataset seam: LIDC behind its adapter unchanged, and a second dataset added from outside.

A dataset is found by name from its folder (``datasets/<name>/dataset.yaml`` naming an adapter
kind): a new split of LIDC reaches ``bench run`` by adding a folder, no Python edited.

The second dataset (``tests/synthetic_dataset.py``: two readers, its own source, strata and
voxel size) is generated into a temporary folder and registered through the public API only;
it builds crops, trains, evaluates, gets its reference rows and a leaderboard with no engine
code that names it.
"""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from benchmark.run.config import build_config
from benchmark.data import cache as cache_mod
from benchmark.data.datasets import DEFAULT_DATASET, dataset_names, get_dataset, register_dataset, unregister_dataset
from benchmark.core.errors import UsageError

SYNTH = ["data.dataset=synth", "data.source=rendered"]
#: small models and one epoch: plumbing, not learning
SMALL = ["model.kwargs.base_channels=4", "train.epochs=1"]


@pytest.fixture()
def synth(tmp_path, tmp_cache, monkeypatch):
    """The synthetic dataset, generated and registered for one test (own crop cache folder)."""
    from synthetic_dataset import make_synthetic
    adapter = register_dataset(make_synthetic(tmp_path / "synth"))
    yield adapter
    unregister_dataset(adapter.name)


# ----------------------------------------------------------------------------- LIDC as it was
def test_lidc_is_the_default_and_its_configs_dump_as_before():
    cfg = build_config("cpu", **{"model.arch": "unet3d"})
    assert cfg.data.dataset == DEFAULT_DATASET == "lidc" and "lidc" in dataset_names()
    # left out of everything derived from the dump: config.yaml, params, fingerprints
    assert "dataset" not in cfg.model_dump()["data"] and "data.dataset" not in cfg.flat()
    assert "dataset" not in cfg.to_yaml()
    # naming it explicitly is the same config
    same = build_config("cpu", ["data.dataset=lidc"], **{"model.arch": "unet3d"})
    assert same.fingerprint() == cfg.fingerprint() and same.to_yaml() == cfg.to_yaml()


def test_lidc_adapter_answers_what_the_engine_used_to_hard_code():
    from benchmark.data import index as ix
    from benchmark.data import split as sp
    from benchmark.data.phantom import PHANTOM_VERSION
    lidc = get_dataset("lidc")
    assert lidc.sources == ("phantom", "dicom") and lidc.ground_truths == ("staple", "consensus")
    assert lidc.n_readers == 4
    assert lidc.index_path() == ix.INDEX_PATH and lidc.split_path() == sp.SPLIT_PATH
    assert lidc.index_hash() == ix.index_hash() and lidc.split_hash() == sp.split_hash()
    assert [lidc.run_name(s) for s in lidc.sources] == ["lidc-phantom", "lidc-dicom"]
    assert [lidc.cache_prefix(s) for s in lidc.sources] == [f"phantom-v{PHANTOM_VERSION}", "dicom"]
    assert lidc.strata.size_bins == {"<6": "lt6", "6-10": "6-10", "10-20": "10-20", ">=20": "ge20"}
    assert lidc.strata.textures == ("ground_glass", "part_solid", "solid")
    # LIDC's cache manifests predate the seam: they name no dataset
    assert "dataset" not in cache_mod.expected_manifest("phantom", "staple", 4.0, (10, 20, 20), 0, ["a"], "x")


def test_names_outside_the_dataset_are_one_line_errors():
    with pytest.raises(UsageError, match=r"data.dataset: unknown dataset 'nope' \(found: .*lidc"):
        build_config("smoke", ["data.dataset=nope"])
    with pytest.raises(UsageError, match=r"data.source: unknown source 'ct' for dataset lidc \(choose from phantom, dicom\)"):
        build_config("smoke", ["data.source=ct"])
    with pytest.raises(UsageError, match=r"data.ground_truth: unknown ground truth 'vote' for dataset lidc"):
        build_config("smoke", ["data.ground_truth=vote"])


def test_registration_rules(tmp_path):
    from synthetic_dataset import SyntheticDataset
    with pytest.raises(UsageError, match="already registered"):
        register_dataset(type("Fake", (SyntheticDataset,), {"name": "lidc"})(tmp_path))
    with pytest.raises(UsageError, match="must be lowercase"):
        register_dataset(type("Bad", (SyntheticDataset,), {"name": "My Data"})(tmp_path))
    with pytest.raises(UsageError, match="must be a DatasetAdapter"):
        register_dataset(object())
    a = register_dataset(SyntheticDataset(tmp_path))
    try:
        with pytest.raises(UsageError, match="already registered"):
            register_dataset(SyntheticDataset(tmp_path / "other"))
        assert register_dataset(SyntheticDataset(tmp_path / "other"), replace=True) is not a
    finally:
        unregister_dataset("synth")
    assert "synth" not in dataset_names()


# ----------------------------------------------------------------------------- a second dataset
def test_second_dataset_config_is_its_own(synth):
    cfg = build_config("smoke", SYNTH)
    lidc = build_config("smoke")
    assert cfg.model_dump()["data"]["dataset"] == "synth" and "data.dataset" in cfg.flat()
    assert cfg.fingerprint() != lidc.fingerprint()
    from benchmark.run.reference_rows import reference_fingerprint
    assert reference_fingerprint(cfg) != reference_fingerprint(lidc)
    with pytest.raises(UsageError, match=r"unknown source 'phantom' for dataset synth \(choose from rendered\)"):
        build_config("smoke", ["data.dataset=synth"])
    # the dumped config reads back as the same dataset, and names it for the leaderboard
    from benchmark.run.config import RunConfig
    from benchmark.data.datasets import dataset_of_config
    assert RunConfig.model_validate(cfg.model_dump(mode="json")).fingerprint() == cfg.fingerprint()
    assert dataset_of_config(cfg.model_dump(mode="json")) == "synth"
    assert dataset_of_config(lidc.model_dump(mode="json")) == dataset_of_config({}) == "lidc"


@pytest.mark.slow
def test_second_dataset_crops(synth):
    """The cache of the second dataset: built by spawned workers from the adapter each task
    carries, named and validated by the adapter, with its two readers and its true shapes."""
    from benchmark.data.store import built_data_hash, load_crops
    cfg = build_config("smoke", SYNTH)
    assert built_data_hash(cfg.data) is None
    store = load_crops(cfg.data, progress=False)
    n = len(synth.load_index())
    assert len(store) == n and store.dataset == "synth"
    assert store.path.name.startswith("synth-rendered-v1-staple-4mm")
    assert store.readers.shape == (n, 2, 10, 20, 20) and store.truth is not None
    man = store.manifest
    assert man["dataset"] == "synth" and man["phantom_version"] == "1" and man["phantom_seed"] is None
    assert man["index_sha256"] == synth.index_hash() and store.split_hash == synth.split_hash()
    assert set(store.table["split"]) == {"train", "val", "test"}
    gt, readers, truth = store.gt[:], store.readers[:], store.truth[:]
    # at 4 mm a nodule a few voxels wide may lose its ground truth (the engine counts it as
    # gt_empty); the larger ones never do
    large = (store.table["size_bin"] == ">=8").to_numpy()
    assert large.any() and gt[large].any(axis=(1, 2, 3)).all() and truth.any(axis=(1, 2, 3)).all()
    # the readers disagree: one draws larger, one smaller than the true shape
    assert (readers[:, 0].sum() > truth.sum() > readers[:, 1].sum())
    # reused, not rebuilt; its hash is known without building
    again = load_crops(cfg.data, progress=False)
    assert again.path == store.path and again.data_hash == store.data_hash == built_data_hash(cfg.data)
    expected = cache_mod.expected_manifest("rendered", "staple", 4.0, (10, 20, 20), 0, list(store.table["nodule_id"]),
                                           synth.index_hash(), "synth")
    assert cache_mod.validate_cache(store.path, expected) == (True, "ok")
    assert cache_mod.corruption(store.path) is None
    # an index edited after the split was made is refused, as for LIDC
    synth.index_path().write_text(synth.index_path().read_text().replace("SYN-001_n01", "SYN-001_n09"))
    from benchmark.core.errors import DataError
    with pytest.raises(DataError, match="changed since"):
        load_crops(cfg.data, progress=False)


@pytest.mark.slow
def test_second_dataset_trains_evaluates_and_gets_a_leaderboard(synth, bench_home, tmp_path):
    from benchmark.results.leaderboard import generate
    from benchmark.campaigns.suite import run_suite
    from benchmark.core.tracking import client
    res = run_suite("smoke", archs=["unet3d"], losses=["dice_bce"], seeds=2, overrides=SMALL + SYNTH,
                    show_progress=False)
    assert not res.failed, res.failed
    # two model runs, the threshold baseline, the inter-reader row and (the source knows the
    # true shape) the phantom ceiling
    assert len(res.ran) == 5
    cl = client()
    exp = cl.get_experiment_by_name("lidc-bench")
    runs = {r.data.tags["arch"] + "/" + r.data.tags.get("seed", ""): r
            for r in cl.search_runs([exp.experiment_id], "", max_results=100)}
    model = runs["unet3d/0"]
    tags, metrics = model.data.tags, model.data.metrics
    assert tags["data.dataset"] == "synth-rendered" and tags["data.source"] == "rendered"
    assert tags["data.split_hash"] == synth.split_hash() and model.data.params["data.dataset"] == "synth"
    # aggregates by the dataset's own strata, none by LIDC's
    assert {"test_size_lt8/dice_mean", "test_size_ge8/dice_mean", "test_texture_solid/dice_mean",
            "test_texture_cystic/dice_mean",
            "test_dice_vs_truth"} <= set(metrics)
    assert not any(k.startswith(("test_size_lt6", "test_texture_ground_glass")) for k in metrics)
    inputs = {d.dataset.name for d in cl.get_run(model.info.run_id).inputs.dataset_inputs}
    assert {n.split("@")[0] for n in inputs} == {"synth-rendered-train", "synth-rendered-val", "synth-rendered-test"}

    per_nodule = pd.read_csv(cl.download_artifacts(model.info.run_id, "evaluation/per_nodule.csv", str(tmp_path)))
    test_ids = {n for n, s in synth.load_split()["nodules"].items() if s == "test"}
    assert set(per_nodule["nodule_id"]) == test_ids
    assert set(per_nodule["size_bin"]) <= {"<8", ">=8"} and per_nodule["dice"].between(0, 1).all()

    # the human reference: each of the two readers against the other
    human = next(r for r in runs.values() if r.data.tags.get("reference") == "human")
    rows = pd.read_csv(cl.download_artifacts(human.info.run_id, "evaluation/per_nodule.csv", str(tmp_path / "h")))
    assert set(rows["nodule_id"]) == test_ids
    scored = rows[~rows["gt_empty"].astype(bool)]
    assert len(scored) >= 3 and (scored["n_readers"] == 2).all()
    assert {"dice_reader0", "dice_reader1", "dice_vs_truth"} <= set(rows.columns)
    assert "dice_reader2" not in rows.columns
    assert 0.3 < scored["dice"].mean() < 1.0     # close, not identical

    [lb] = generate(preset="smoke", out_dir=tmp_path / "lb", log_to_mlflow=False, n_boot=200)
    assert lb.leaderboard.key.name == "synth-rendered-smoke"
    table = pd.read_csv(tmp_path / "lb" / "synth-rendered-smoke.csv", keep_default_na=False, na_values=[""])
    # with true shapes, the readers are scored against them as well: a readers_vs_truth row
    assert set(table["arch"]) == {"unet3d", "inter_reader", "readers_vs_truth", "threshold_baseline", "phantom_ceiling"}
    assert table.loc[table["arch"] == "unet3d", "n_seeds"].item() == 2
    assert list(table["reference"].fillna("")).count("human") == 2
    staple = table["arch"] != "readers_vs_truth"    # that row's scores are against the truth only
    assert np.isfinite(table.loc[staple, "dice_mean"]).all()
    assert np.isfinite(table.loc[~staple, "dice_vs_truth_mean"]).all() and table.loc[~staple, "dice_mean"].isna().all()


# ----------------------------------------------------------------------------- a dataset folder
#: a new split of LIDC, declared by a folder alone: the lidc adapter kind with its own files
RESPLIT_YAML = "# the same LIDC nodules, another split\nadapter: lidc\nindex: nodules.csv\nsplit: split.json\n"


@pytest.fixture()
def resplit(bench_home, tmp_cache):
    """``<LIDC_BENCH_HOME>/datasets/lidc_resplit/``: LIDC's index and a split of another seed."""
    from benchmark.data import index as ix
    from benchmark.data.split import build_split, write_split
    folder = bench_home / "datasets" / "lidc_resplit"
    folder.mkdir(parents=True)
    shutil.copy(ix.INDEX_PATH, folder / "nodules.csv")
    write_split(build_split(seed=7, index_path=folder / "nodules.csv"), folder / "split.json")
    (folder / "dataset.yaml").write_text(RESPLIT_YAML)
    return folder


def test_lidc_itself_is_a_dataset_folder():
    from benchmark.data.datasets import DATASET_FILE, dataset_roots
    from benchmark.data.lidc import LidcDataset
    import yaml
    folder = dataset_roots()[0] / "lidc"
    assert yaml.safe_load((folder / DATASET_FILE).read_text()) == {"adapter": "lidc"}
    assert isinstance(get_dataset("lidc"), LidcDataset) and get_dataset("lidc") is get_dataset()


def test_a_dataset_folder_is_found_by_name_and_validates(resplit):
    from benchmark.data.lidc import LidcDataset
    assert "lidc_resplit" in dataset_names()
    ds, lidc = get_dataset("lidc_resplit"), get_dataset("lidc")
    assert isinstance(ds, LidcDataset) and ds.name == "lidc_resplit"
    assert ds.index_path() == resplit / "nodules.csv" and ds.split_path() == resplit / "split.json"
    assert ds.load_split()["seed"] == 7 and ds.split_hash() != lidc.split_hash()
    assert ds.index_hash() == lidc.index_hash()
    ds.check_index_matches_split()
    # its own names: runs, caches and manifests never mistake it for LIDC
    assert ds.run_name("phantom") == "lidc_resplit-phantom"
    assert ds.cache_prefix("phantom").startswith("lidc_resplit-phantom-v")
    assert ds.manifest_fields("phantom", 0)["dataset"] == "lidc_resplit"
    cfg = build_config("smoke", ["data.dataset=lidc_resplit"], **{"model.arch": "unet3d"})
    assert cfg.data.dataset == "lidc_resplit" and cfg.model_dump()["data"]["dataset"] == "lidc_resplit"
    assert cfg.fingerprint() != build_config("smoke", **{"model.arch": "unet3d"}).fingerprint()
    # the smoke subset is drawn from its own split
    from benchmark.data.store import select_nodules
    caps = dict(cfg.data.max_nodules)
    ids = select_nodules(ds.load_index(), ds.load_split(), caps)
    assert sorted(ids) != sorted(select_nodules(lidc.load_index(), lidc.load_split(), caps))
    assert any(ds.load_split()["nodules"][n] == "test" for n in ids)
    with pytest.raises(UsageError, match=r"unknown dataset 'nope' \(found: lidc, lidc_resplit; a dataset is a folder"):
        get_dataset("nope")


@pytest.mark.parametrize("text,message", [
    ("adapter: nifti\n", r"dataset.yaml: unknown dataset adapter 'nifti'.*\(registered: lidc\)"),
    ("adapter: lidc\nindex: ../lidc/nodules.csv\n", "index must be a file name inside the dataset folder"),
    ("adapter: lidc\nimages: /data\n", "adapter lidc: got an unexpected keyword argument 'images'"),
    ("index: nodules.csv\n", "must be a mapping with 'adapter: <kind>'"),
    ("adapter: [lidc\n", "not a readable YAML file"),
    ("adapter: lidc\nsplit: split.json\nsplit: other.json\n", "duplicate key 'split' on line 3"),
])
def test_a_bad_dataset_file_is_one_line_naming_it(resplit, text, message):
    (resplit / "dataset.yaml").write_text(text)
    with pytest.raises(UsageError, match=message) as e:
        build_config("smoke", ["data.dataset=lidc_resplit"])
    assert "\n" not in str(e.value) and str(resplit / "dataset.yaml") in str(e.value)


@pytest.mark.slow
def test_a_dataset_folder_trains_with_bench_run(resplit, capsys):
    """`bench run data.dataset=lidc_resplit` end to end after adding only the folder."""
    from benchmark.cli.main import main
    from benchmark.core.tracking import client
    assert main(["run", "--arch", "unet3d", "--preset", "smoke", "--no-progress", "train.epochs=1",
                 "model.kwargs.base_channels=4", "data.dataset=lidc_resplit"]) == 0
    run_id = capsys.readouterr().out.split()[1].rstrip(":")
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and "test_dice" in run.data.metrics
    assert run.data.tags["data.dataset"] == "lidc_resplit-phantom"
    assert run.data.tags["data.split_hash"] == get_dataset("lidc_resplit").split_hash()
