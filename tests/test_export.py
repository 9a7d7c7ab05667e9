"""Run exports: what a committed leaderboard is computed from, checkable without our MLflow store."""
from __future__ import annotations

import json

import pytest

from benchmark.errors import DataError, UsageError
from benchmark.export import ORIGINAL_ID_TAG, read_export, write_export

PER_NODULE = "nodule_id,dice,nsd,hd95_mm\nLIDC-0001_n01,0.8,0.7,2.0\nLIDC-0002_n01,0.6,0.5,4.0\n"


def _doc(rid="0123456789abcdef0123456789abcdef", **over):
    doc = {"run_id": rid, "run_name": "unet3d-dice_bce-smoke-s0", "status": "FINISHED", "start_time": 1000,
           "end_time": 2000, "tags": {"arch": "unet3d", "loss": "dice_bce", "seed": "0"},
           "params": {"optim.lr": "0.001"}, "metrics": {"test_dice": 0.7, "val_dice": 0.65},
           "history": {"val_dice": [[1, 0.5], [2, 0.65]], "test_dice": [[2, 0.7]]},
           "config": {"preset": "smoke", "optim": {"lr": 0.001}}}
    doc.update(over)
    return doc


def test_round_trip_keeps_every_field(tmp_path):
    out = write_export([(_doc(), PER_NODULE)], tmp_path / "lb.runs")
    [run] = read_export(out)
    assert run.run_id == _doc()["run_id"] and run.tags["arch"] == "unet3d"
    assert run.history["val_dice"] == [[1, 0.5], [2, 0.65]]
    assert run.config["optim"]["lr"] == 0.001
    assert list(run.per_nodule()["dice"]) == [0.8, 0.6]
    # stable text: writing the same runs again gives the same bytes (diff-friendly)
    first = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_export([(_doc(), PER_NODULE)], out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first


def test_hand_edited_file_is_refused(tmp_path):
    out = write_export([(_doc(), PER_NODULE)], tmp_path / "lb.runs")
    csv = out / "per_nodule" / f"{_doc()['run_id']}.csv"
    csv.write_text(PER_NODULE.replace("0.8", "0.9"))
    with pytest.raises(DataError, match="does not match its sha256"):
        read_export(out)


def test_run_id_cannot_name_a_path(tmp_path):
    with pytest.raises(DataError, match="not a run id"):
        write_export([(_doc(rid="../../evil"), None)], tmp_path / "x.runs")
    out = write_export([(_doc(), None)], tmp_path / "y.runs")
    m = json.loads((out / "manifest.json").read_text())
    m["runs"] = ["../runs/x"]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="not a run id"):
        read_export(out)


def test_not_an_export_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a run export"):
        read_export(tmp_path)


@pytest.mark.slow
def test_import_into_a_fresh_store_through_mlflow(bench_home, tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.tracking import client
    out = write_export([(_doc(), PER_NODULE)], tmp_path / "lb.runs")
    assert main(["import", str(out)]) == 0
    assert main(["import", str(out)]) == 0          # twice: no duplicate
    cl = client()
    exp = cl.get_experiment_by_name("lidc-bench")
    runs = cl.search_runs([exp.experiment_id], f"tags.`{ORIGINAL_ID_TAG}` = '{_doc()['run_id']}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["arch"] == "unet3d"
    assert run.data.metrics["test_dice"] == pytest.approx(0.7)
    assert [(m.step, m.value) for m in cl.get_metric_history(run.info.run_id, "val_dice")] == [(1, 0.5), (2, 0.65)]
    csv = cl.download_artifacts(run.info.run_id, "evaluation/per_nodule.csv", str(tmp_path))
    assert open(csv).read() == PER_NODULE
    assert "1 runs" in capsys.readouterr().out
