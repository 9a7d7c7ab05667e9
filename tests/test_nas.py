"""`bench search bixnas`: the multi-objective search end to end, the Pareto front, the chosen genotype."""
import json

import pytest
from conftest import run_cli

from benchmark.nas import knee, pareto_front, stage_plan


def test_pareto_front_and_knee():
    pts = [(0.80, 10.0), (0.70, 2.0), (0.75, 5.0), (0.60, 5.0), (0.80, 12.0), (0.50, 1.0)]
    front = pareto_front(pts)
    assert sorted(front) == [0, 1, 2, 5]
    assert knee(pts, front) in (1, 2)


def test_stage_plan_splits_budget_last_stage_first():
    plan = stage_plan(7)
    assert [s for s, _ in plan] == [5, 4, 3, 2, 1]
    assert sum(n for _, n in plan) == 7 and [n for _, n in plan] == [2, 2, 1, 1, 1]


def test_smoke_search_end_to_end(bench_home):
    env = {"LIDC_BENCH_HOME": str(bench_home)}
    r = run_cli("search", "bixnas", "--trials", "3", "--preset", "smoke", "--epochs", "1", "--study", "nas-t",
                "--no-progress", "train.batch_size=4", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Pareto" not in r.stderr and "| trial |" in r.stdout
    from benchmark.tracking import client
    from benchmark.nas import _study
    study = _study("nas-t", None, 1, None, create=False)[0]
    assert len(study.trials) == 3 and {t.user_attrs["nas.stage"] for t in study.trials} == {5, 4, 3}
    parent = study.user_attrs["mlflow_parent_run_id"]
    cl = client()
    arts = {a.path for a in cl.list_artifacts(parent, "nas")}
    assert {"nas/pareto_front.csv", "nas/pareto_front.png", "nas/pareto_front.md"} <= arts
    children = cl.search_runs([cl.get_experiment_by_name("lidc-bench").experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 3 and all("test_dice" not in c.data.metrics for c in children)
    out = bench_home / "g.json"
    r = run_cli("search", "bixnas", "--choose", "--study", "nas-t", "--preset", "smoke", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads(out.read_text())["meta"]
    assert meta["study"] == "nas-t" and meta["mlflow_parent_run_id"] == parent and meta["source"] == "bench search bixnas"
    from architectures import create_architecture
    import torch
    net = create_architecture("bixnas", spatial_size=(8, 16, 16), genotype=str(out)).eval()
    assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 1, 8, 16, 16)


def test_committed_genotype_comes_from_a_recorded_cpu_search():
    from architectures.bixnas import GENOTYPE_PATH
    meta = json.loads(GENOTYPE_PATH.read_text())["meta"]
    assert meta["source"] == "bench search bixnas" and meta["preset"] == "cpu"
    assert meta["mlflow_parent_run_id"] and meta["mlflow_run_id"] and meta["study"]


def test_unknown_searcher_is_one_line(bench_home):
    r = run_cli("search", "bixnaz", "--trials", "1", env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 2 and "did you mean bixnas" in r.stderr
