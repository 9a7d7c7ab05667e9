"""Regression tests for issue 35 ("Bad input", hardening round 3): each reproduces one report.

1 bench import; 2 leaderboard of loss-study runs only; 3 bench predict; 4 rescore digests;
5 config bounds and duplicate YAML keys; 6 checkpoints; 7 one logged model, one registered
version; 8 bench sync record types; 9 stale build folders and a locked store.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import PER_NODULE, _doc

from benchmark.core.errors import DataError, TrackingError, UsageError
from benchmark.results.run_export import ORIGINAL_ID_TAG, import_export, read_export, write_export

RID = _doc()["run_id"]


# ---------------------------------------------------------------------------------------------
# 1 bench import
# ---------------------------------------------------------------------------------------------
def _export_with(tmp_path, name="bad.runs", **over):
    return write_export([(_doc(**over), PER_NODULE)], tmp_path / name)


@pytest.mark.parametrize("over, match", [
    ({"metrics": {"test_dice": 0.7, "params": "abc"}}, "metric 'params' has value 'abc', not a number"),
    ({"status": "PWNED"}, "status 'PWNED' is not one of"),
    ({"history": {"val_dice": [[1, "x"]]}}, "history of metric 'val_dice'"),
    ({"start_time": "yesterday"}, "start_time must be a whole number"),
    ({"tags": {"arch": ["unet3d"]}}, "tag 'arch' has value"),
])
def test_import_checks_every_field_of_a_run_before_creating_it(tmp_path, over, match):
    with pytest.raises(DataError, match=match):
        read_export(_export_with(tmp_path, **over))


def _mutate_manifest(out: Path, fn):
    m = json.loads((out / "manifest.json").read_text())
    fn(m)
    (out / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("fn, match", [
    (lambda m: m.update(runs={RID: 1}), "'runs' must be a list"),
    (lambda m: m.update(files=list(m["files"])), "'files' must map"),
    (lambda m: m.update(studies=["x"]), "'studies' must map"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line(tmp_path, fn, match):
    out = _export_with(tmp_path, "x.runs")
    _mutate_manifest(out, fn)
    with pytest.raises(DataError, match=match):
        read_export(out)


@pytest.mark.parametrize("name", ["abs", "dotdot"])
def test_a_manifest_naming_a_path_outside_the_export_is_refused(tmp_path, name):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    out = _export_with(tmp_path, "x.runs")
    rel = str(secret) if name == "abs" else "../secret.txt"
    import hashlib
    _mutate_manifest(out, lambda m: m["files"].update({rel: hashlib.sha256(b"not yours\n").hexdigest()}))
    with pytest.raises(DataError, match="not a path inside the export"):
        read_export(out)


def test_a_per_nodule_csv_linking_out_of_the_export_is_refused(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text(PER_NODULE)
    out = _export_with(tmp_path, "x.runs")
    csv = out / "per_nodule" / f"{RID}.csv"
    csv.unlink()
    csv.symlink_to(outside)      # same bytes, so the sha256 alone would not catch it
    with pytest.raises(DataError, match="links outside the export folder"):
        read_export(out)


@pytest.mark.slow
def test_an_import_failing_after_creating_a_run_leaves_nothing_and_a_later_import_works(bench_home, tmp_path,
                                                                                         monkeypatch):
    import benchmark.core.tracking as tracking
    from benchmark.core.tracking import client
    good = _export_with(tmp_path, "good.runs")
    real = tracking.log_batch

    def broken(cl, run_id, **kw):
        if kw.get("history"):
            raise RuntimeError("store went away\nsecond line")
        return real(cl, run_id, **kw)
    monkeypatch.setattr(tracking, "log_batch", broken)
    with pytest.raises(TrackingError, match="importing run .* failed \\(store went away\\); the partly created"):
        import_export(good)
    monkeypatch.setattr(tracking, "log_batch", real)
    cl = client()
    exp = cl.get_experiment_by_name("lidc-bench")
    assert cl.search_runs([exp.experiment_id], f"tags.`{ORIGINAL_ID_TAG}` = '{RID}'") == []
    done = import_export(good)
    run = cl.get_run(done.runs[RID])
    assert run.info.status == "FINISHED" and run.data.metrics["test_dice"] == pytest.approx(0.7)


def test_a_half_imported_run_from_an_older_version_is_replaced(bench_home, tmp_path):
    from benchmark.core.tracking import client
    cl = client()
    from benchmark.core.tracking import experiment_id, load_settings
    exp_id = experiment_id(cl, load_settings())
    stale = cl.create_run(exp_id, tags={ORIGINAL_ID_TAG: RID}).info.run_id     # RUNNING, empty
    done = import_export(_export_with(tmp_path, "good.runs"))
    assert done.runs[RID] != stale and cl.get_run(stale).info.lifecycle_stage == "deleted"
    assert cl.get_run(done.runs[RID]).data.metrics["test_dice"] == pytest.approx(0.7)


# ---------------------------------------------------------------------------------------------
# 2 a leaderboard of loss-study runs only
# ---------------------------------------------------------------------------------------------
def test_a_leaderboard_of_loss_study_runs_only_is_one_line_not_an_index_error():
    from test_leaderboard import _synthetic_record

    from benchmark.results.leaderboard import build_sections, table_key
    g = np.random.default_rng(0)
    runs = [_synthetic_record(f"l{s}", "unet3d", "dice", s, g.uniform(0.4, 0.6, 10), part="loss") for s in range(3)]
    with pytest.raises(UsageError, match="only loss-study runs .* the protocol's final runs"):
        build_sections(table_key(runs[0]), runs, n_boot=100)
    # with the final runs beside them the same runs make the loss study below the main table
    runs += [_synthetic_record(f"t{s}", "unet3d", "dice_bce", s, g.uniform(0.4, 0.6, 10), part="final")
             for s in range(3)]
    assert [x.section for x in build_sections(table_key(runs[0]), runs, n_boot=100).sections] == ["loss"]


# ---------------------------------------------------------------------------------------------
# 3 bench predict
# ---------------------------------------------------------------------------------------------
def _nifti(tmp_path, arr=None, spacing=(0.7, 0.8, 2.5), name="scan.nii"):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(np.full((6, 8, 10), -1000.0, np.float32) if arr is None else arr)
    img.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz", "scan.mha"])
def test_predict_refuses_a_ct_of_nan_or_inf(tmp_path, value, name):
    """(ITK's NIfTI reader turns NaN and inf into 0 HU: a NaN scan would be a block of water.)"""
    from benchmark.run.predict import read_ct
    arr = np.full((6, 8, 10), -1000.0, np.float32)
    arr[:3] = value
    with pytest.raises(UsageError, match="240 NaN or infinite voxels of 480"):
        read_ct(_nifti(tmp_path, arr, name=name))


@pytest.mark.parametrize("pixdim", [0.0, -2.0, float("nan")])
def test_predict_refuses_a_nifti_whose_spacing_is_not_positive(tmp_path, pixdim):
    """ITK reads pixdim 0 or NaN as 1 mm and -2 as 2 mm without a word: the raw header decides."""
    import gzip
    import struct

    from benchmark.run.predict import read_ct
    raw = bytearray(_nifti(tmp_path).read_bytes())
    raw[80:84] = struct.pack("<f", pixdim)
    for path in (tmp_path / "bad.nii", tmp_path / "bad.nii.gz"):
        path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))
        with pytest.raises(UsageError, match="voxel spacing .* not positive numbers"):
            read_ct(path)


def test_predict_refuses_a_huge_header_before_allocating(tmp_path):
    import struct

    from benchmark.run.predict import read_ct
    raw = bytearray(_nifti(tmp_path).read_bytes())
    raw[42:48] = struct.pack("<3h", 30000, 30000, 30000)      # 2.7e13 voxels, 108 TB of float32
    path = tmp_path / "huge.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="30000 x 30000 x 30000 = 27,000,000,000,000 voxels.*refused before"):
        read_ct(path)


def test_predict_refuses_a_location_outside_the_scan_naming_it_and_the_extent():
    from test_predict import make_ct, standin

    from benchmark.run.predict import predict_at
    ct, centres, _ = make_ct()
    with pytest.raises(UsageError, match=r"location \(5000.0, 0.0, 0.0\) mm LPS is outside the scan "
                                         r"\(LPS mm: x -150.3..-105.6, y -170.4..-119.2, z -311.2..-241.2\)"):
        predict_at(standin(), ct, [centres[0], (5000.0, 0.0, 0.0)])


@pytest.mark.slow
def test_predict_labels_more_than_255_locations_and_refuses_above_the_maximum():
    import SimpleITK as sitk
    from test_predict import make_ct, standin

    from benchmark.run.predict import MAX_LOCATIONS, predict_at
    ct, centres, _ = make_ct()
    labels, counts = predict_at(standin(), ct, [centres[0]] * 300)        # OverflowError with uint8
    assert sitk.GetArrayViewFromImage(labels).max() == 300 and counts[-1] > 0
    with pytest.raises(UsageError, match=f"at most {MAX_LOCATIONS} per scan"):
        predict_at(standin(), ct, [centres[0]] * (MAX_LOCATIONS + 1))


# ---------------------------------------------------------------------------------------------
# 4 bench rescore: stored predictions carry a digest
# ---------------------------------------------------------------------------------------------
def _run_with_predictions(tmp_path, digest: bool):
    """A run as evaluation leaves it: config.yaml, evaluation/predictions.npz and (now) its digest."""
    from benchmark.core.tracking import client, experiment_id, load_settings
    from benchmark.run.config import build_config
    from benchmark.core.provenance import sha256_file
    from benchmark.run.evaluate import PREDICTIONS_DIGEST_TAG, save_predictions
    cl = client()
    run_id = cl.create_run(experiment_id(cl, load_settings())).info.run_id
    cl.log_text(run_id, build_config("smoke", []).to_yaml(), "config.yaml")
    pred = save_predictions(tmp_path / "predictions.npz", ["a", "b"], np.zeros((2, 4, 4, 4), bool))
    cl.log_artifact(run_id, str(pred), "evaluation")
    if digest:
        cl.set_tag(run_id, PREDICTIONS_DIGEST_TAG, sha256_file(pred))
    cl.set_terminated(run_id, "FINISHED")
    return cl, run_id


def test_rescore_refuses_tampered_predictions(bench_home, tmp_path):
    from benchmark.run.evaluate import save_predictions
    from benchmark.run.rescore import rescore_run
    cl, run_id = _run_with_predictions(tmp_path, digest=True)
    (tmp_path / "forged").mkdir()
    forged = save_predictions(tmp_path / "forged" / "predictions.npz", ["a", "b"], np.ones((2, 4, 4, 4), bool))
    cl.log_artifact(run_id, str(forged), "evaluation")          # replaces the stored file
    with pytest.raises(DataError, match="does not match the sha256 recorded when it was evaluated"):
        rescore_run(run_id)


def test_rescore_log_of_a_run_without_a_digest_needs_an_explicit_flag(bench_home, tmp_path, capsys):
    from benchmark.cli.main import main
    _, run_id = _run_with_predictions(tmp_path, digest=False)
    assert main(["rescore", run_id, "--log"]) == 2
    err = capsys.readouterr().err.strip()
    assert "predates prediction digests" in err and "--accept-unverified" in err and len(err.splitlines()) == 1
    assert main(["rescore", run_id, "--accept-unverified"]) == 2        # --log only


@pytest.mark.parametrize("damage", ["garbage", "truncated", "ids"])
def test_a_malformed_predictions_file_is_one_line(tmp_path, damage):
    from benchmark.run.evaluate import load_predictions, save_predictions
    path = tmp_path / "predictions.npz"
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    else:
        preds = np.ones((2, 8, 8, 8), bool)
        packed = np.packbits(preds, axis=None)
        np.savez_compressed(path, nodule_id=np.asarray(["a", "b"] if damage == "truncated" else ["a"]),
                            shape=np.asarray(preds.shape, np.int64),
                            packed=packed[:-10] if damage == "truncated" else packed)
    with pytest.raises(DataError, match="predictions.npz is not a predictions file of lidc-bench"):
        load_predictions(path)
    save_predictions(path, ["a", "b"], np.ones((2, 8, 8, 8), bool))
    assert load_predictions(path)[1].all()


# ---------------------------------------------------------------------------------------------
# 5 config bounds and duplicate YAML keys
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, match", [
    ("data.crop_xyz=[2000,2000,1000]", "data.crop_xyz: every size must be <= 512 voxels per axis"),
    ("data.patch_xyz=[600,64,32]", "data.patch_xyz: every size must be <= 512 voxels per axis"),
    ("data.patch_xyz=[96,64,32]", "data.patch_xyz .* is larger than data.crop_xyz"),
    ("data.spacing_mm=0.001", "spacing_mm must be between 0.25 and 5 mm, got 0.001"),
    ("data.spacing_mm=50", "spacing_mm must be between 0.25 and 5 mm"),
])
def test_config_sizes_and_spacing_are_bounded(override, match):
    from benchmark.run.config import build_config
    with pytest.raises(UsageError, match=match):
        build_config("cpu", [override])
    for preset in ("smoke", "cpu", "paper"):              # every preset stays inside the bounds
        build_config(preset)


def test_data_build_spacing_is_bounded(capsys):
    from benchmark.cli.main import main
    assert main(["data", "build", "--spacing", "0.001"]) == 2
    assert "--spacing must be between 0.25 and 5 mm" in capsys.readouterr().err


def test_a_run_config_with_a_key_written_twice_is_refused_naming_it(tmp_path, capsys):
    from benchmark.cli.main import main
    from benchmark.run.config import load_config_file
    cfg = tmp_path / "x.yaml"
    cfg.write_text("model:\n  arch: unet3d\ntrain:\n  epochs: 5\n  batch_size: 2\n  epochs: 50\n")
    with pytest.raises(UsageError, match="duplicate key 'epochs' on line 6 \\(first on line 4\\)"):
        load_config_file(cfg)
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "duplicate key 'epochs'" in err


def test_the_strict_loader_is_safe_load_otherwise():
    import yaml

    from benchmark.core.yaml_strict import DuplicateKeyError, strict_safe_load
    text = "base: &b {lr: 1, wd: 2}\nrun:\n  <<: *b\n  lr: 3\nlist: [1, 1]\nsame: {a: 1}\nother: {a: 1}\n"
    assert strict_safe_load(text) == yaml.safe_load(text)          # merge keys still override
    with pytest.raises(DuplicateKeyError, match="duplicate key 'a'"):
        strict_safe_load("x: {a: 1, a: 2}")
    with pytest.raises(yaml.YAMLError):                              # nothing is constructed
        strict_safe_load("!!python/object/apply:os.system ['true']")


# ---------------------------------------------------------------------------------------------
# 6 checkpoints: the resumed epoch, and a weights-only best.pt
# ---------------------------------------------------------------------------------------------
TINY = ["train.epochs=1", "train.steps_per_epoch=1", "model.kwargs.base_channels=4", "eval.overlays=false",
        "eval.latency_repeats=1"]


def _training_state(epoch=1):
    """What Trainer.state holds after a step of Adam: weights, optimiser moments, progress."""
    from benchmark.run.config import build_config
    from benchmark.run.train import build_model
    cfg = build_config("smoke", TINY, **{"model.arch": "unet3d"})
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 1, *cfg.data.patch_zyx)).float().mean().backward()
    opt.step()
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {},
            "scaler": {}, "best": {"val_dice": 0.1, "epoch": 1, "bad_epochs": 0}, "history": [],
            "train_seconds": 1.0, "config": cfg.model_dump(mode="json"), "run_id": None}


@pytest.mark.parametrize("epoch", [10 ** 9, -5, 1.0, True, "1"])
def test_a_checkpoint_with_an_impossible_epoch_is_refused_on_resume(empty_home, epoch):
    from benchmark.core.checkpoint import save_checkpoint
    from benchmark.core.errors import TrainingError
    from benchmark.core.paths import checkpoints_dir
    from benchmark.run.resume import load_resume_state
    rid = "a" * 32
    save_checkpoint(_training_state(epoch), checkpoints_dir(rid) / "last.pt")
    with pytest.raises(TrainingError, match="not a whole number between 0 and the run's 1 epochs"):
        load_resume_state(rid, check_run=False)


def test_the_published_best_checkpoint_holds_weights_only(tmp_path):
    from benchmark.core.checkpoint import load_checkpoint, published_state, save_checkpoint
    state = _training_state()
    save_checkpoint(state, tmp_path / "last.pt")
    save_checkpoint(published_state(state), tmp_path / "best.pt")
    best = load_checkpoint(tmp_path / "best.pt")
    assert set(best) == {"model", "config", "epoch", "run_id", "best"}
    # Adam keeps two moments per weight: the full state was ~3x the weights (4.43 MB vs 1.50 MB)
    weights = sum(t.numel() * t.element_size() for t in state["model"].values())
    assert (tmp_path / "best.pt").stat().st_size < 1.2 * weights < (tmp_path / "last.pt").stat().st_size / 2


# ---------------------------------------------------------------------------------------------
# 7 one logged model per run, one registered version per run and name
# ---------------------------------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.slow
def test_publishing_a_model_twice_logs_one_and_registering_twice_makes_one_version(bench_home, capsys):
    from benchmark.core.tracking import (MODEL_ARTIFACT, Tracker, client, experiment_id, load_settings,
                                         log_pytorch_model, register_model)
    cl = client()
    settings = load_settings()
    exp = experiment_id(cl, settings)
    tracker = Tracker(cl, cl.create_run(exp).info.run_id, settings)
    example = np.zeros((1, 1, 2, 2, 2), np.float32)
    first = log_pytorch_model(tracker, _Tiny(), example)
    # resumed after a kill that came after the model was logged: the publish step runs again
    assert log_pytorch_model(tracker, _Tiny(), example) == first
    # killed between log_model and its tag: the model is found by its source run
    cl.delete_tag(tracker.run_id, "model_uri")
    assert log_pytorch_model(tracker, _Tiny(), example) == first
    assert cl.get_run(tracker.run_id).data.tags["model_uri"] == first
    models = cl.search_logged_models([exp], filter_string=f"source_run_id = '{tracker.run_id}'")
    assert [m.name for m in models] == [MODEL_ARTIFACT]

    cl.set_terminated(tracker.run_id, "FINISHED")
    capsys.readouterr()
    v1 = register_model(tracker.run_id, "round3")
    assert capsys.readouterr().err == ""
    again = register_model(tracker.run_id, "round3")
    err = capsys.readouterr().err.strip()
    assert again.version == v1.version and len(err.splitlines()) == 1
    assert f"already round3 version {v1.version}" in err and "--force" in err
    assert len(cl.search_model_versions("name = 'round3'")) == 1
    assert register_model(tracker.run_id, "round3", force=True).version != v1.version


# ---------------------------------------------------------------------------------------------
# 8 bench sync: values of the wrong type are found before anything is sent
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("record, match", [
    ({"kind": "metrics", "metrics": {"val_dice": "abc"}, "step": 1, "timestamp": 1}, "metric 'val_dice' is 'abc'"),
    ({"kind": "metrics", "metrics": {"val_dice": 0.5}, "step": "1", "timestamp": 1}, "step and timestamp"),
    ({"kind": "status", "status": "PWNED"}, "status 'PWNED' is not a run status"),
    ({"kind": "tags", "tags": {"arch": ["x"]}}, "tags must map names to strings"),
    ({"kind": "params", "params": "lr=1"}, "params must map names to strings"),
    ({"kind": "text", "text": 5, "name": "a.txt"}, "text and name must be strings"),
])
def test_sync_refuses_a_value_of_the_wrong_type_before_sending_anything(bench_home, record, match, capsys):
    from benchmark.cli.main import main
    from benchmark.core.paths import offline_dir
    from benchmark.core.tracking import Tracker
    tracker = Tracker.start("probe", {})
    buf = offline_dir() / f"{tracker.run_id}.jsonl"
    buf.parent.mkdir(parents=True, exist_ok=True)
    good = {"kind": "metrics", "metrics": {"val_dice": 0.5}, "step": 1, "timestamp": 1}
    buf.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n" + json.dumps(good) + "\n")
    assert main(["sync", str(buf)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 2:" in err and "nothing was replayed" in err
    assert re.search(match, err), err
    assert tracker.client.get_metric_history(tracker.run_id, "val_dice") == []      # line 1 was not sent
    assert buf.exists()


# ---------------------------------------------------------------------------------------------
# 9 a killed `bench data build --force` leaves no folder for ever
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_next_build_removes_temporary_folders_of_dead_builds(index, tmp_cache):
    import subprocess
    import sys

    from benchmark.data import cache as cache_mod
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_cache.mkdir(parents=True)
    # what a SIGKILL during a build leaves (its pid in the name), for this cache and another one
    stale = [tmp_cache / f".phantom-staple-4mm-sub1234.tmp-{dead.pid}-0123abcd",
             tmp_cache / f".phantom-staple-2mm.old-{dead.pid}-89abcdef"]
    live = tmp_cache / f".phantom-staple-1mm.tmp-{os.getpid()}-0123abcd"       # a build going on
    unrelated = tmp_cache / ".notes-1"
    for folder in (*stale, live, unrelated):
        (folder / "images.npy").parent.mkdir()
        (folder / "images.npy").write_bytes(b"x" * 1000)
    ids = list(index["nodule_id"].iloc[[0]])
    p = cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False)
    assert not any(f.exists() for f in stale)
    assert live.exists() and unrelated.exists() and (p / "manifest.json").is_file()
    # and a valid cache reused as it is cleans up too (the next `bench data build` finds it valid)
    stale[0].mkdir()
    assert cache_mod.build_cache("phantom", "staple", 4.0, nodule_ids=ids, workers=1, progress=False) == p
    assert not stale[0].exists()


# ---------------------------------------------------------------------------------------------
# 9 a store locked for longer than SQLite's busy timeout (MLflow sets 20 s)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_store_locked_for_a_while_prints_a_few_lines_and_the_run_still_finishes(bench_home, capfd):
    """Before: 148 lines (MLflow's SQL tracebacks, a multi-line warning) and a run left RUNNING
    until `bench sync`. Now: one warning line, and the run's end replays its buffer."""
    import subprocess
    import sys

    from benchmark.core.tracking import Tracker, load_settings
    tracker = Tracker.start("probe", {})
    db = load_settings().tracking_uri[len("sqlite:///"):]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, time\n"
        f"c = sqlite3.connect({db!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(24); c.execute('COMMIT')\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capfd.readouterr()
        tracker.log_metrics({"val_dice": 0.5}, step=1)       # waits out the 20 s busy timeout, then buffers
        assert tracker.offline
        tracker.log_metrics({"val_dice": 0.6}, step=2)
        tracker.finish("FINISHED")                            # the lock is gone by the end of the replay
    finally:
        holder.wait(60)
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert "database is locked); training goes on" in err and "buffered records of run" in err
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, "val_dice")] == [0.5, 0.6]
    assert not tracker.offline_path.exists()
