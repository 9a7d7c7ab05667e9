"""`bench search bixnas`: both phases end to end on train/val only, Optuna's Pareto front, the budget."""
import json

import optuna
import pytest
from conftest import run_cli

from benchmark.campaigns.bixnas_phase1 import prune_epochs
from benchmark.campaigns.nas import _meta, budget, distinct_points, front, knee


def _study_with(points):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for d, m in points:
        study.add_trial(optuna.trial.create_trial(values=[d, m], params={}, distributions={}))
    return study


def test_front_is_optunas_best_trials_and_knee_is_on_it():
    pts = [(0.80, 10.0), (0.70, 2.0), (0.75, 5.0), (0.60, 5.0), (0.80, 12.0), (0.50, 1.0)]
    best = front(_study_with(pts))
    assert [t.number for t in best] == [5, 1, 2, 0]  # cheapest first; 3 and 4 are dominated
    assert distinct_points(best) == 4
    assert knee(best).number in (1, 2)
    # two points have no knee: the better Dice, however small the MACs gap
    assert knee(front(_study_with([(0.233, 0.172e9), (0.300, 0.174e9)]))).number == 1


def test_prune_epochs_spread_over_second_half_before_the_last_epoch():
    assert prune_epochs(6, 2) == [3, 4]
    assert prune_epochs(10, 3) == [5, 6, 8]
    assert prune_epochs(2, 2) == [1]  # too few epochs: the rest is pruned by the logits at the end
    assert prune_epochs(5, 0) == []


@pytest.mark.slow
def test_two_phase_search_never_reads_the_test_split(bench_home, monkeypatch):
    """Phase one, phase two and the front in-process, with any test-split access made to fail."""
    from architectures import create_architecture
    from architectures.bixnas import Genotype, load_genotype
    from benchmark.data.store import CropStore
    from benchmark.campaigns.nas import FRONT_FILES, _study, choose, search, search_record_dir
    from benchmark.core.tracking import client
    import torch

    real_indices = CropStore.indices

    def guarded(self, split):
        assert split != "test", "the architecture search read the test split"
        return real_indices(self, split)

    monkeypatch.setattr(CropStore, "indices", guarded)
    meta = _meta("smoke", epochs=1, phase1_epochs=2)
    lean = ["train.batch_size=4", "train.steps_per_epoch=2", "model.kwargs.width=8", "model.kwargs.full_res_width=4"]
    best = search("nas-t", None, 2, meta, lean, population=2, show_progress=False)
    study = _study("nas-t", None, 1, None, create=False)[0]
    assert best and all(t.number in {s.number for s in study.best_trials} for t in best)

    # phase one: the full super-network pruned to <= 3 inputs per block
    p1 = Genotype.from_dict(study.user_attrs["phase1_genotype"])
    assert all(len(ins) <= 3 for stage in p1.encoder + p1.decoder for ins in stage)
    assert sum(len(ins) for stage in p1.encoder + p1.decoder for ins in stage) < \
        sum(len(ins) for stage in Genotype.full().encoder + Genotype.full().decoder for ins in stage)
    # phase two: two candidates, each inside phase one's genotype
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        g = Genotype.from_dict(t.user_attrs["genotype"])
        for stage, stage1 in zip(g.encoder + g.decoder, p1.encoder + p1.decoder):
            assert all(set(ins) <= set(ins1) for ins, ins1 in zip(stage, stage1))
    b = budget(study)
    assert b["phase1_s"] > 0 and b["phase2_s"] > 0 and b["epochs"] == 2 + 2 and b["device_kind"] == "cpu"
    assert b["full_trainings"] == pytest.approx(4 / 2)  # the smoke preset trains 2 epochs

    cl = client()
    parent = study.user_attrs["mlflow_parent_run_id"]
    arts = {a.path for a in cl.list_artifacts(parent, "nas")}
    assert {"nas/pareto_front.csv", "nas/pareto_front.png", "nas/pareto_front.md", "nas/budget.json"} <= arts
    children = cl.search_runs([cl.get_experiment_by_name("lidc-bench").experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 3  # phase one + two candidates
    assert all(not any(k.startswith("test_") for k in c.data.metrics) for c in children)

    out = bench_home / "g.json"
    choose("nas-t", None, "knee", str(out))
    g = load_genotype(out)
    assert g.meta["mlflow_parent_run_id"] == parent and g.meta["budget_seconds"] > 0
    assert g.meta["mlflow_phase1_run_id"] == study.user_attrs["phase1"]["mlflow_run_id"]
    # the search record beside the genotype: the front, its plot, the budget and every trial
    record = search_record_dir(out, "nas-t")
    assert {f.name for f in record.iterdir()} == {*FRONT_FILES, "study.json"}
    doc = json.loads((record / "study.json").read_text())
    assert doc["user_attrs"]["mlflow_parent_run_id"] == parent
    assert [t["number"] for t in doc["trials"]] == [t.number for t in study.trials]
    front_rows = (record / "pareto_front.csv").read_text().splitlines()[1:]
    assert sorted(int(r.split(",")[0]) for r in front_rows) == sorted(t.number for t in study.best_trials)
    net = create_architecture("bixnas", spatial_size=(8, 16, 16), genotype=str(out)).eval()
    assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 1, 8, 16, 16)


def test_committed_genotype_comes_from_a_recorded_cpu_search():
    """The committed genotype names its search, and the search record beside it (every trial)
    holds that very genotype as a front trial of a front with at least MIN_FRONT points."""
    from architectures.bixnas import GENOTYPE_PATH
    from benchmark.campaigns.nas import MIN_FRONT, search_record_dir
    committed = json.loads(GENOTYPE_PATH.read_text())
    meta = committed["meta"]
    if meta["source"] == "bench nas bixnas-evolve":     # the evolutionary search: its record beside it
        from benchmark.campaigns.bixnas_evolve import genotype_key, load_record
        from architectures.bixnas import Genotype
        record = load_record(GENOTYPE_PATH.parent / meta["record"])
        assert meta["preset"] == "cpu" and record["settings"]["preset"] == "cpu" and record["result"] == meta
        chosen = record["candidates"][genotype_key(Genotype.from_dict(committed))]
        assert chosen["mlflow_run_id"] == meta["mlflow_run_id"] and meta["budget_seconds"] > 0
        assert chosen["val_dice"] == pytest.approx(meta["val_dice"], abs=1e-4) and chosen["macs"] == meta["macs_per_patch"]
        return
    assert meta["source"] == "bench search bixnas" and meta["preset"] == "cpu"
    assert meta["mlflow_parent_run_id"] and meta["mlflow_run_id"] and meta["study"] and meta["budget_seconds"] > 0
    assert meta["pareto_size"] >= MIN_FRONT
    record = search_record_dir(GENOTYPE_PATH, meta["study"])
    doc = json.loads((record / "study.json").read_text())
    assert doc["study_name"] == meta["study"] and doc["user_attrs"]["mlflow_parent_run_id"] == meta["mlflow_parent_run_id"]
    trial = next(t for t in doc["trials"] if t["number"] == meta["trial"])
    assert trial["state"] == "COMPLETE" and trial["user_attrs"]["mlflow_run_id"] == meta["mlflow_run_id"]
    assert trial["values"][0] == pytest.approx(meta["val_dice"], abs=1e-4) and int(trial["values"][1]) == meta["macs_per_patch"]
    searched = trial["user_attrs"]["genotype"]
    assert all(committed[k] == searched[k] for k in ("iterations", "levels", "encoder", "decoder"))
    front_rows = [r.split(",") for r in (record / "pareto_front.csv").read_text().splitlines()[1:]]
    assert len({(r[1], r[2]) for r in front_rows}) == meta["pareto_size"]
    assert [r[0] for r in front_rows if r[3] == "1"] == [str(meta["trial"])]


@pytest.mark.slow
def test_unknown_searcher_is_one_line(bench_home):
    r = run_cli("search", "bixnaz", "--trials", "1", env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 2 and "did you mean bixnas" in r.stderr
