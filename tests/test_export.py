"""Run exports: what a committed leaderboard is computed from, checkable without our MLflow store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.core.errors import DataError, UsageError
from benchmark.results.run_export import ORIGINAL_ID_TAG, read_export, write_export

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
    """A fresh clone: `bench import` loads the runs and the study; `bench tune --report` reads it."""
    from benchmark.cli.main import main
    from benchmark.results.study_export import export_studies
    from benchmark.core.tracking import client
    _make_study(tmp_path / "theirs.log")
    studies = export_studies([STUDY], str(tmp_path / "theirs.log"))
    out = write_export([(_doc(), PER_NODULE)], tmp_path / "lb.runs", studies=studies)
    assert main(["import", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 runs" in printed and f"Optuna study {STUDY}: recreated" in printed
    assert main(["import", str(out)]) == 0          # twice: no duplicate
    assert f"Optuna study {STUDY}: already there" in capsys.readouterr().out
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
    # the study is in the project's journal; its MLflow parent run stayed on the exporting machine
    assert main(["tune", "--report", STUDY]) == 0
    captured = capsys.readouterr()
    assert "best trial 2: val Dice 0.6600" in captured.out
    assert f"parent run {'f' * 32} is not in" in captured.err


@pytest.mark.slow
def test_an_imported_run_keeps_its_first_id_and_its_commit_wherever_it_goes(bench_home, tmp_path):
    """A run carried from store to store (`bench import`, then exported again, e.g. by `bench
    protocol export` on the second machine) is cited and filed under the id it was trained as,
    and keeps MLflow's source tags; only the link to a parent run that stayed behind is dropped."""
    from benchmark.results.run_export import export_runs, import_export
    from benchmark.results.leaderboard.collect import collect_runs
    from benchmark.core.tracking import client
    first = _doc()["run_id"]
    tags = {**_doc()["tags"], "mlflow.source.git.commit": "a" * 40, "mlflow.parentRunId": "e" * 32,
            "preset": "smoke", "data.source": "phantom", "data.ground_truth": "staple",
            "data.split_hash": "s" * 8, "data.content_hash": "c" * 16}
    done = import_export(write_export([(_doc(tags=tags), PER_NODULE)], tmp_path / "lb.runs"))
    here = done.runs[first]
    assert here != first
    cl = client()
    run = cl.get_run(here)
    assert run.data.tags["mlflow.source.git.commit"] == "a" * 40 and "mlflow.parentRunId" not in run.data.tags
    [rec] = collect_runs(cl, [run.info.experiment_id], "")
    assert (rec.run_id, rec.local_id) == (first, here)       # cited by its first id, read by this store's
    [back] = read_export(export_runs(cl, [rec.local_id], tmp_path / "again.runs"))
    assert back.run_id == first and ORIGINAL_ID_TAG not in back.tags
    assert back.tags["mlflow.source.git.commit"] == "a" * 40 and back.metrics["test_dice"] == pytest.approx(0.7)


def test_a_store_importing_its_own_export_keeps_one_copy_of_each_run(bench_home, tmp_path):
    """A protocol session imports the committed progress before it trains; on the machine that
    trained those runs the store holds them already, under their own ids. The import must not add
    a second copy (the next export then listed two runs twice and a leaderboard read from it
    counted two finals twice); an export or a manifest that holds a run twice yields it once."""
    from benchmark.core.tracking import client, experiment_id, load_settings, search_all_runs
    from benchmark.results.run_export import export_runs, import_export
    settings = load_settings()
    cl = client(settings)
    exp = experiment_id(cl, settings, None)
    native = cl.create_run(exp, tags={"arch": "unet3d", "seed": "0"}).info.run_id
    cl.log_metric(native, "test_dice", 0.7)
    cl.set_terminated(native)
    out = export_runs(cl, [native], tmp_path / "progress.runs")
    done = import_export(out)
    assert done.runs == {native: native}
    assert [r.info.run_id for r in search_all_runs(cl, [exp])] == [native]
    # the same run arriving in another export maps to it as well
    copy = import_export(write_export([(_doc(rid=native), None)], tmp_path / "other.runs"))
    assert copy.runs == {native: native}
    twice = write_export([(_doc(), PER_NODULE), (_doc(), PER_NODULE)], tmp_path / "twice.runs")
    assert json.loads((twice / "manifest.json").read_text())["runs"] == [_doc()["run_id"]]
    # and an older export whose manifest lists a run twice is read as one run
    manifest = json.loads((twice / "manifest.json").read_text())
    manifest["runs"] = manifest["runs"] * 2
    (twice / "manifest.json").write_text(json.dumps(manifest))
    assert [r.run_id for r in read_export(twice)] == [_doc()["run_id"]]


# ---------------------------------------------------------------------------------------------
# Optuna studies behind the tuned rows
# ---------------------------------------------------------------------------------------------
STUDY = "smoke-v1-unet3d"


def _journal(path):
    import optuna
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _make_study(journal, name=STUDY):
    """A small finished study (complete, pruned and failed trials), built without training."""
    import datetime

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=_journal(journal), study_name=name, direction="maximize")
    study.set_user_attr("meta", {"arch": "unet3d", "loss": "dice_bce", "preset": "smoke"})
    study.set_user_attr("mlflow_parent_run_id", "f" * 32)      # a run of the exporting machine's store
    space = {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True), "model.kwargs.base_channels": IntDistribution(4, 16),
             "optim.optimizer": CategoricalDistribution(["adam", "sgd", None])}
    start = datetime.datetime(2025, 3, 1, 12, 0, 0, 123456)
    S = optuna.trial.TrialState
    for i, (state, value) in enumerate([(S.COMPLETE, 0.61), (S.PRUNED, None), (S.COMPLETE, 0.66), (S.FAIL, None)]):
        trial = optuna.trial.create_trial(
            state=state, value=value, distributions=space,
            params={"optim.lr": 10 ** -(2 + i / 2), "model.kwargs.base_channels": 4 + i,
                    "optim.optimizer": ["adam", "sgd", None, "adam"][i]},
            intermediate_values={} if state == S.FAIL else {0: 0.3 + i / 100, 1: 0.5 + i / 100},
            user_attrs={"overrides": [f"optim.lr={10 ** -(2 + i / 2)}"], "mlflow_run_id": f"{i:032x}"})
        trial.datetime_start = start + datetime.timedelta(minutes=10 * i)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(minutes=7)
        study.add_trial(trial)
    return study


def _same_trials(a, b):
    fields = ("number", "state", "params", "distributions", "values", "intermediate_values", "user_attrs",
              "datetime_start", "datetime_complete")
    return [[getattr(t, f) for f in fields] for t in a.trials] == [[getattr(t, f) for f in fields] for t in b.trials]


def test_export_writes_each_study_beside_the_runs_and_lists_it_in_the_manifest(tmp_path):
    from benchmark.results.run_export import read_studies
    from benchmark.results.study_export import export_studies
    _make_study(tmp_path / "journal.log")
    warnings = []
    docs = export_studies([STUDY, "deleted-study"], str(tmp_path / "journal.log"), warn=warnings.append)
    assert [d["study_name"] for d in docs] == [STUDY]
    assert len(warnings) == 1 and "deleted-study" in warnings[0] and "\n" not in warnings[0]
    out = write_export([(_doc(), PER_NODULE)], tmp_path / "lb.runs", studies=docs)
    manifest = json.loads((out / "manifest.json").read_text())
    rel = f"studies/{STUDY}.json"
    assert manifest["studies"] == {STUDY: rel} and rel in manifest["files"]
    text = (out / rel).read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"     # diff-friendly
    assert doc["directions"] == ["MAXIMIZE"] and doc["user_attrs"]["meta"]["arch"] == "unet3d"
    first = doc["trials"][0]
    assert first["state"] == "COMPLETE" and first["values"] == [0.61]
    assert first["params"]["optim.lr"]["distribution"]["name"] == "FloatDistribution"
    assert first["intermediate_values"] == [[0, 0.3], [1, 0.5]]
    assert first["datetime_start"] == "2025-03-01T12:00:00.123456"
    assert [t["state"] for t in doc["trials"]] == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    assert read_studies(out) == docs
    # the leaderboard's reading of the export does not see the studies
    assert [r.run_id for r in read_export(out)] == [_doc()["run_id"]]


def test_a_study_name_cannot_name_a_path(tmp_path):
    from benchmark.results.run_export import read_studies
    doc = {"study_name": "../../evil", "directions": ["MAXIMIZE"], "user_attrs": {}, "trials": []}
    out = write_export([(_doc(), None)], tmp_path / "x.runs", studies=[doc])
    [written] = (out / "studies").iterdir()
    assert written.name.startswith("study-") and not (tmp_path / "evil.json").exists()
    assert read_studies(out) == [doc]


def test_import_recreates_the_study_and_a_second_import_changes_nothing(tmp_path):
    import optuna

    from benchmark.results.study_export import export_studies, import_studies
    original = _make_study(tmp_path / "theirs.log")
    docs = export_studies([STUDY], str(tmp_path / "theirs.log"))
    mine = tmp_path / "mine.log"
    assert import_studies(docs, str(mine)) == {STUDY: "created"}
    copy = optuna.load_study(study_name=STUDY, storage=_journal(mine))
    assert _same_trials(copy, original) and copy.directions == original.directions
    assert copy.user_attrs == original.user_attrs and copy.best_trial.number == 2
    before = mine.read_bytes()
    assert import_studies(docs, str(mine)) == {STUDY: "present"}
    assert mine.read_bytes() == before


def test_an_import_cut_short_is_completed_not_refused(tmp_path):
    import optuna

    from benchmark.results.study_export import export_studies, frozen_trials, import_studies
    original = _make_study(tmp_path / "theirs.log")
    [doc] = export_studies([STUDY], str(tmp_path / "theirs.log"))
    mine = tmp_path / "mine.log"
    partial = optuna.create_study(storage=_journal(mine), study_name=STUDY, direction="maximize")
    partial.add_trials(frozen_trials(doc)[:2])
    assert import_studies([doc], str(mine)) == {STUDY: "completed"}
    assert _same_trials(optuna.load_study(study_name=STUDY, storage=_journal(mine)), original)


def test_import_refuses_a_different_study_of_the_same_name_in_one_line(tmp_path):
    import optuna

    from benchmark.results.study_export import export_studies, import_studies
    _make_study(tmp_path / "theirs.log")
    docs = export_studies([STUDY], str(tmp_path / "theirs.log"))
    mine = tmp_path / "mine.log"
    own = optuna.create_study(storage=_journal(mine), study_name=STUDY, direction="maximize")
    own.add_trial(optuna.trial.create_trial(value=0.5))
    before = mine.read_bytes()
    with pytest.raises(UsageError, match="already holds other trials") as e:
        import_studies(docs, str(mine))
    assert "\n" not in str(e.value) and mine.read_bytes() == before


def test_missing_journal_is_a_warning_not_a_crash(bench_home, capsys):
    from benchmark.results.study_export import export_studies
    from benchmark.core.optuna_storage import default_storage_path
    assert export_studies([STUDY]) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: no Optuna journal") and STUDY in err
    assert not default_storage_path().exists()       # looking did not create one


COMMITTED_EXPORTS = sorted((Path(__file__).resolve().parent.parent / "leaderboards").rglob("*.runs"))


@pytest.mark.slow   # ~10 s per export of a hundred runs: the full suite's work, not the fast subset's
@pytest.mark.parametrize("export", COMMITTED_EXPORTS, ids=lambda p: str(p.parent.name + "/" + p.name))
def test_committed_leaderboard_is_recomputed_byte_for_byte_from_its_export(export, tmp_path):
    """Every leaderboard committed with its run export (`bench leaderboard --export`) is what
    `bench leaderboard --from` computes from that export alone: no MLflow store, no number typed."""
    import matplotlib
    import matplotlib.pyplot as plt

    from benchmark.results.leaderboard import generate
    stem = export.name.removesuffix(".runs")
    with matplotlib.rc_context():
        plt.style.use("ggplot")     # what Optuna's plots leave in a process: the page must not care
        generate(from_export=export, out_dir=tmp_path, log_to_mlflow=False)
    for suffix in (".md", ".csv", ".html"):
        committed = export.with_name(stem + suffix)
        assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed


def test_a_page_recomputed_from_an_export_is_written_beside_that_export(monkeypatch, tmp_path):
    """`bench leaderboard --from leaderboards/nas-control/x.runs` must not overwrite the main
    leaderboards/x.md of the same name: without --out the page goes to the export's folder."""
    import argparse

    import benchmark.cli.leaderboard as cli
    seen = []
    monkeypatch.setattr(cli, "generate", lambda **kw: seen.append(kw["out_dir"]) or [])
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    export = tmp_path / "nas-control" / "lidc-phantom-cpu.runs"
    cli._cmd(parser.parse_args(["leaderboard", "--from", str(export)]))
    cli._cmd(parser.parse_args(["leaderboard", "--from", str(export), "--out", str(tmp_path / "elsewhere")]))
    cli._cmd(parser.parse_args(["leaderboard"]))
    assert seen == [str(tmp_path / "nas-control"), str(tmp_path / "elsewhere"), None]
