"""`bench suite` and `bench leaderboard` on a small MLflow store built by the real engine.

One store is built per module (unet3d x {dice_bce, dice} x 2 seeds on a few nodules, plus the
two reference runs), because training is the slow part; tests that change tags work on a
copy of its database in their own ``bench_home``, so they never disturb the others.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import UsageError

ARCH_LOSSES = [("unet3d", "dice_bce"), ("unet3d", "dice")]
SEEDS = 2
#: small models and few epochs; the smoke preset's nodule subset; no test overlays (nothing here
#: looks at them: tests/test_engine.py checks that a run draws them)
SMALL = ["model.kwargs.base_channels=4", "train.epochs=1", "eval.overlays=false"]


def _client():
    from benchmark.core.tracking import client
    return client()


def _all_runs(cl):
    exp = cl.get_experiment_by_name("lidc-bench")
    return cl.search_runs([exp.experiment_id], "", max_results=1000) if exp else []


def _csv_mean(cl, run_id: str, metric: str, tmp: Path) -> float:
    path = cl.download_artifacts(run_id, "evaluation/per_nodule.csv", str(tmp))
    return float(pd.read_csv(path)[metric].mean())


#: reference runs per data config on the phantom: threshold baseline, inter-reader, phantom ceiling
N_REFERENCES = 3


@pytest.fixture(scope="module")
def store_home(tmp_path_factory):
    """A project home whose MLflow store holds one small suite (what bench_home gives a test,
    but shared by this module's tests)."""
    home = tmp_path_factory.mktemp("suite-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIDC_BENCH_HOME", str(home))
    mp.delenv("LIDC_BENCH_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    from benchmark.campaigns.suite import run_suite
    res = run_suite("smoke", archs=["unet3d"], losses=["dice_bce", "dice"], seeds=SEEDS, overrides=SMALL,
                    show_progress=False)
    assert not res.failed, res.failed
    assert len(res.ran) == len(ARCH_LOSSES) * SEEDS + N_REFERENCES and not res.skipped
    yield home, res
    mp.undo()


@pytest.fixture()
def at_store(store_home, monkeypatch):
    home, res = store_home
    monkeypatch.setenv("LIDC_BENCH_HOME", str(home))
    monkeypatch.delenv("LIDC_BENCH_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home, res


@pytest.mark.slow
def test_leaderboard_numbers_match_the_per_nodule_csvs(at_store, tmp_path, capsys):
    from benchmark.cli.main import main
    home, res = at_store
    assert main(["leaderboard", "--preset", "smoke", "--out", str(tmp_path / "lb")]) == 0
    printed = capsys.readouterr().out
    files = {p.suffix: p for p in (tmp_path / "lb").iterdir()}
    assert set(files) == {".md", ".csv", ".html"} and files[".md"].stem == "lidc-phantom-smoke"
    assert files[".md"].read_text() in printed + "\n"   # the markdown is what was printed

    table = pd.read_csv(files[".csv"], keep_default_na=False, na_values=[""])
    cl = _client()
    labels = {f"{a} / {lo}" for a, lo in ARCH_LOSSES}
    models = table[table["reference"].isna()]
    assert set(models["row"]) == labels
    # ranks follow mean Dice (ties share the better rank)
    from scipy.stats import rankdata
    assert list(models["rank"].astype(int)) == list(rankdata(-models["dice_mean"].to_numpy(), method="min"))
    for _, row in table.iterrows():     # models and references alike
        ids = row["run_ids"].split(";")
        assert row["n_seeds"] == len(ids) == (1 if isinstance(row["reference"], str) else SEEDS)
        if row["arch"] == "readers_vs_truth":   # the inter_reader run's scores against the true shape
            assert np.isnan(row["dice_mean"]) and np.isnan(row["hd95_mm_mean"])
            csv = pd.read_csv(cl.download_artifacts(ids[0], "evaluation/per_nodule.csv", str(tmp_path / ids[0])))
            # NaN where a smoke-sized true shape vanishes at the preset's spacing, as on the model rows
            assert row["dice_vs_truth_mean"] == pytest.approx(csv["dice_vs_truth"].to_numpy().mean(), nan_ok=True)
            assert cl.get_run(ids[0]).data.tags["arch"] == "inter_reader"
            continue
        for metric in ("dice", "nsd", "hd95_mm"):
            per_seed = [_csv_mean(cl, rid, metric, tmp_path / rid) for rid in ids]
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(per_seed), rel=1e-5, abs=1e-6)
            if len(ids) > 1:
                assert row[f"{metric}_std"] == pytest.approx(np.std(per_seed, ddof=1), rel=1e-4, abs=1e-6)
            assert row[f"{metric}_ci_low"] - 1e-6 <= row[f"{metric}_mean"] <= row[f"{metric}_ci_high"] + 1e-6
        assert {cl.get_run(r).data.tags["arch"] for r in ids} == {row["arch"]}
        assert {cl.get_run(r).data.tags["loss"] for r in ids} == {row["loss"]}
    top, second = models.iloc[0], models.iloc[1]
    assert top["dice_mean"] >= second["dice_mean"]
    assert np.isnan(top["wilcoxon_p_holm"]) and 0.0 <= second["wilcoxon_p_holm"] <= 1.0

    refs = table[table["reference"].notna()].set_index("arch")
    assert set(refs.index) == {"inter_reader", "readers_vs_truth", "threshold_baseline", "phantom_ceiling"}
    assert refs.loc["phantom_ceiling", "reference"] == "phantom"
    assert refs.loc["inter_reader", "reference"] == "human"
    assert np.isnan(pd.to_numeric(refs["rank"], errors="coerce")).all()   # shown, not ranked

    html = files[".html"].read_text()
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 3
    assert "http://" not in html and "https://" not in html     # renders offline
    assert "inter_reader" in files[".md"].read_text()

    # deterministic given the runs
    from benchmark.results.leaderboard import generate
    generate(preset="smoke", out_dir=tmp_path / "again", log_to_mlflow=False)
    for suffix, path in files.items():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), suffix

    # logged as artifacts of a `leaderboard` run
    lb_runs = [r for r in _all_runs(cl) if r.data.tags.get("kind") == "leaderboard"]
    assert lb_runs
    arts = {a.path for a in cl.list_artifacts(lb_runs[0].info.run_id, "leaderboards")}
    assert {f"leaderboards/lidc-phantom-smoke{s}" for s in (".md", ".csv", ".html")} <= arts


@pytest.mark.slow
def test_incompatible_runs_are_kept_apart(store_home, bench_home, tmp_path):
    from benchmark.results.leaderboard import generate
    home, res = store_home
    shutil.copy(home / "runs" / "mlflow.db", bench_home / "runs" / "mlflow.db")   # artifacts stay where they are
    cl = _client()
    model_runs = [rid for label, rid in res.ran if label.startswith("unet3d/dice_bce")]
    real_split = cl.get_run(model_runs[0]).data.tags["data.split_hash"]
    cl.set_tag(model_runs[0], "data.split_hash", "0ther5plit")

    with pytest.raises(UsageError) as e:
        generate(preset="smoke", out_dir=tmp_path / "mixed", log_to_mlflow=False)
    assert "incompatible" in str(e.value) and "0ther5plit" in str(e.value) and "--split-hash" in str(e.value)
    assert not (tmp_path / "mixed").exists()

    [main] = generate(preset="smoke", split_hash=real_split, out_dir=tmp_path / "main", log_to_mlflow=False)
    row = main.leaderboard.table.set_index("row").loc["unet3d / dice_bce"]
    assert row["n_seeds"] == SEEDS - 1 and model_runs[0] not in row["run_ids"]
    [other] = generate(preset="smoke", split_hash="0ther5plit", out_dir=tmp_path / "other", log_to_mlflow=False)
    assert list(other.leaderboard.table["run_ids"]) == [model_runs[0]]

    # a different ground truth is refused the same way; a different preset gets its own file
    cl.set_tag(model_runs[0], "data.split_hash", real_split)
    cl.set_tag(model_runs[0], "data.ground_truth", "consensus")
    with pytest.raises(UsageError, match="--ground-truth"):
        generate(preset="smoke", out_dir=tmp_path / "mixed", log_to_mlflow=False)
    cl.set_tag(model_runs[0], "data.ground_truth", "staple")
    cl.set_tag(model_runs[0], "preset", "cpu")
    written = generate(out_dir=tmp_path / "all", log_to_mlflow=False)
    by_name = {g.leaderboard.key.name: g.leaderboard for g in written}
    assert set(by_name) == {"lidc-phantom-smoke", "lidc-phantom-cpu"}
    assert list(by_name["lidc-phantom-cpu"].table["run_ids"]) == [model_runs[0]]
    assert model_runs[0] not in ";".join(by_name["lidc-phantom-smoke"].table["run_ids"])


@pytest.mark.slow
def test_second_suite_invocation_creates_no_runs(at_store, capsys):
    from benchmark.cli.main import main
    cl = _client()
    before = {r.info.run_id for r in _all_runs(cl) if r.data.tags.get("kind") != "leaderboard"}
    # overrides after --losses are handed back to the overrides, as a user would type them
    argv = ["suite", "--preset", "smoke", "--archs", "unet3d", "--seeds", str(SEEDS), "--no-progress",
            "--losses", "dice_bce", "dice", *SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"0 ran, 0 resumed, {len(before)} already done, 0 failed" in out
    after = {r.info.run_id for r in _all_runs(cl) if r.data.tags.get("kind") != "leaderboard"}
    assert after == before


def test_plan_applies_per_architecture_overrides_and_rejects_typos():
    from benchmark.campaigns.suite import plan_cells
    cells = plan_cells("smoke", archs=["unet3d", "transfuse"], seeds=2,
                       overrides=["train.epochs=1", "unet3d:model.kwargs.base_channels=4"])
    models = [c for c in cells if not c.reference]
    assert [c.reference for c in cells[:3]] == ["threshold_baseline", "inter_reader", "phantom_ceiling"]
    assert len(models) == 4 and {c.cfg.train.epochs for c in models} == {1}
    assert [(c.seed, c.arch) for c in models] == [(0, "unet3d"), (0, "transfuse_s"), (1, "unet3d"), (1, "transfuse_s")]
    assert all((c.cfg.model.kwargs.get("base_channels") == 4) == (c.arch == "unet3d") for c in models)
    assert len({c.cfg.fingerprint() for c in models}) == 4
    with pytest.raises(UsageError, match="unet3"):
        plan_cells("smoke", archs=["unet3"])
    with pytest.raises(UsageError, match="not in this suite"):
        plan_cells("smoke", archs=["unet3d"], overrides=["transfuse:model.kwargs.depth=2"])


def test_holm_matches_hand_computation():
    from benchmark.results.leaderboard import holm
    # sorted p: .01 (x3 = .03), .02 (x2 = .04), .04 (x1 = .04, kept monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    got = holm([0.5, float("nan"), 0.6])
    assert got[0] == pytest.approx(1.0) and np.isnan(got[1]) and got[2] == pytest.approx(1.0)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _copy_store(store_home, bench_home) -> None:
    """Give this test's home a private copy of the module's small suite store."""
    home, _ = store_home
    shutil.copy(home / "runs" / "mlflow.db", bench_home / "runs" / "mlflow.db")


def _interrupted_run() -> str:
    """Train the next seed's cell until Ctrl-C after its first epoch; its run id (KILLED)."""
    from benchmark.run.config import build_config
    from benchmark.run.train import run_experiment
    cfg = build_config("smoke", SMALL, **{"model.arch": "unet3d", "loss.name": "dice_bce", "train.seed": SEEDS})

    def stop(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, show_progress=False, on_epoch_end=stop)
    [killed] = [r.info.run_id for r in _all_runs(_client()) if r.info.status == "KILLED"]
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "sigkill"])
def test_interrupted_cell_is_resumed_not_restarted(store_home, bench_home, how):
    """ctrl_c: the run marked itself KILLED. sigkill: it could not, so it still reads RUNNING,
    but the pid it recorded on this host is gone."""
    from benchmark.campaigns.suite import run_suite
    _copy_store(store_home, bench_home)
    killed = _interrupted_run()
    cl = _client()
    assert cl.get_run(killed).data.tags["pid"] == str(os.getpid())
    if how == "sigkill":
        cl.update_run(killed, status="RUNNING")
        cl.set_tag(killed, "pid", str(_dead_pid()))
    res = run_suite("smoke", archs=["unet3d"], losses=["dice_bce"], seeds=SEEDS + 1, overrides=SMALL,
                    show_progress=False)
    assert res.resumed == [(f"unet3d/dice_bce/s{SEEDS}", killed)]
    assert not res.ran and not res.failed and len(res.skipped) == SEEDS + N_REFERENCES
    run = cl.get_run(killed)
    assert run.info.status == "FINISHED" and "test_dice" in run.data.metrics


@pytest.mark.slow
def test_run_alive_in_another_process_is_left_alone(store_home, bench_home):
    from benchmark.campaigns.suite import run_suite
    _copy_store(store_home, bench_home)
    running = _interrupted_run()
    cl = _client()
    cl.update_run(running, status="RUNNING")   # as if a second suite were training it now (pid: this test)
    res = run_suite("smoke", archs=["unet3d"], losses=["dice_bce"], seeds=SEEDS + 1, overrides=SMALL,
                    show_progress=False)
    assert res.elsewhere == [(f"unet3d/dice_bce/s{SEEDS}", running)]
    assert not res.ran and not res.resumed and not res.failed
    assert cl.get_run(running).info.status == "RUNNING"
    # a worker started with a larger patience sees the same cell as held, not as new
    res = run_suite("smoke", archs=["unet3d"], losses=["dice_bce"], seeds=SEEDS + 1,
                    overrides=[*SMALL, "train.early_stopping_patience=9"], show_progress=False)
    assert res.elsewhere == [(f"unet3d/dice_bce/s{SEEDS}", running)] and not res.ran and not res.resumed


@pytest.mark.slow
def test_two_suite_workers_share_the_matrix_without_duplicates(store_home, bench_home):
    """Two `bench suite` processes on one host, one thread each: every new cell is trained
    exactly once, and both processes finish cleanly."""
    from conftest import ROOT
    _copy_store(store_home, bench_home)
    new_seeds = 2
    env = dict(os.environ, LIDC_BENCH_HOME=str(bench_home), OMP_NUM_THREADS="1",
               MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false")
    cmd = [sys.executable, "-m", "benchmark.cli.main", "suite", "--preset", "smoke", "--archs", "unet3d",
           "--losses", "dice_bce", "--seeds", str(SEEDS + new_seeds), "--no-progress", *SMALL]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    cl = _client()
    new = [r for r in _all_runs(cl) if r.data.tags.get("loss") == "dice_bce"
           and int(r.data.tags.get("seed", -1)) >= SEEDS]
    assert sorted(int(r.data.tags["seed"]) for r in new) == list(range(SEEDS, SEEDS + new_seeds))
    assert all(r.info.status == "FINISHED" and r.data.tags["torch.threads"] == "1" for r in new)
    ran = sum(int(re.search(r"(\d+) ran", out).group(1)) for out, _ in outs)
    assert ran == new_seeds


@pytest.mark.slow
def test_cell_whose_worker_dies_during_the_pass_is_resumed_on_the_second_look(store_home, bench_home,
                                                                               monkeypatch):
    import benchmark.campaigns.suite as suite
    _copy_store(store_home, bench_home)
    held = _interrupted_run()
    cl = _client()
    other_worker = subprocess.Popen(["sleep", "600"])   # stands in for a live suite worker
    cl.update_run(held, status="RUNNING")
    cl.set_tag(held, "pid", str(other_worker.pid))
    real_run_cell = suite._run_cell

    def worker_dies_meanwhile(*args, **kwargs):   # the other worker dies while we train the next cell
        other_worker.kill()
        other_worker.wait()
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(suite, "_run_cell", worker_dies_meanwhile)
    res = suite.run_suite("smoke", archs=["unet3d"], losses=["dice_bce"], seeds=SEEDS + 2, overrides=SMALL,
                          show_progress=False)
    assert [label for label, _ in res.ran] == [f"unet3d/dice_bce/s{SEEDS + 1}"]
    assert res.resumed == [(f"unet3d/dice_bce/s{SEEDS}", held)] and not res.elsewhere and not res.failed
    assert cl.get_run(held).info.status == "FINISHED"


@pytest.mark.slow
def test_a_run_never_cut_short_counts_for_a_larger_patience(store_home, bench_home):
    """Raising only the early-stopping patience does not retrain runs that early stopping never
    stopped (also for runs logged before the budget-fingerprint tag existed)."""
    from benchmark.campaigns.suite import run_suite
    _copy_store(store_home, bench_home)
    cl = _client()
    models = [r for r in _all_runs(cl) if "config.budget_fingerprint" in r.data.tags and r.data.tags["preset"] == "smoke"]
    cl.delete_tag(models[0].info.run_id, "config.budget_fingerprint")   # as logged by an older version
    more_patience = [*SMALL, "train.early_stopping_patience=9"]
    res = run_suite("smoke", archs=["unet3d"], losses=["dice_bce", "dice"], seeds=SEEDS, overrides=more_patience,
                    show_progress=False, dry_run=True)
    assert not res.ran and len(res.skipped) == len(ARCH_LOSSES) * SEEDS + N_REFERENCES
    assert {rid for _, rid in res.skipped} <= {r.info.run_id for r in _all_runs(cl)}
    assert cl.get_run(models[0].info.run_id).data.tags["config.budget_fingerprint"]
    # a smaller patience than the runs had is a different experiment: they might have stopped
    less = run_suite("smoke", archs=["unet3d"], losses=["dice_bce"], seeds=1,
                     overrides=[*SMALL, "train.early_stopping_patience=0"], show_progress=False, dry_run=True)
    assert [label for label, _ in less.ran] == ["unet3d/dice_bce/s0"]


def test_leaderboard_merges_runs_that_differ_only_in_an_unused_patience():
    from benchmark.results.leaderboard import RunRecord, make_rows

    def record(rid, seed, patience, stopped):
        cfg = {"name": None, "train": {"seed": seed, "epochs": 20, "early_stopping_patience": patience}}
        return RunRecord(rid, {"arch": "unet3d", "loss": "dice_bce", "seed": str(seed), "stopped_early": str(stopped)},
                         {"epochs_completed": 7.0 if stopped else 20.0}, cfg, 0, pd.DataFrame())

    rows = make_rows([record("a", 0, 6, False), record("b", 1, 20, False), record("c", 1, 6, True),
                      record("d", 0, 20, False)])
    by_members = sorted(sorted(r.run_id for r in row.runs) for row in rows)
    # a (patience 6, never fired) and d (patience 20) are the same seed-0 experiment: one of them
    # stands for it; c was cut short at patience 6, a different experiment with its own row
    assert len(rows) == 2 and ["c"] in by_members
    main = next(row for row in rows if "c" not in [r.run_id for r in row.runs])
    assert sorted(r.seed for r in main.runs) == ["0", "1"]


def test_seeds_of_one_config_stay_one_row_when_early_stopping_fires_in_one_of_them():
    """cpu-v7's loss study: focal seed 1 collapsed and early stopping (patience 20) ended it at
    epoch 21 of 30, while seed 0 trained all 30 epochs under the same config. They are one
    declared experiment and one row; a run that ran in full under a larger patience (30) may have
    been stopped under 20, so it is another experiment and keeps its own row."""
    from benchmark.results.leaderboard import RunRecord, make_rows

    def record(rid, seed, patience, stopped):
        cfg = {"name": None, "train": {"seed": seed, "epochs": 30, "early_stopping_patience": patience}}
        return RunRecord(rid, {"arch": "unet3d", "loss": "focal", "seed": str(seed), "stopped_early": str(stopped)},
                         {"epochs_completed": 21.0 if stopped else 30.0}, cfg, 0, pd.DataFrame())

    rows = make_rows([record("s0", 0, 20, False), record("s1", 1, 20, True), record("s2", 2, 20, False)])
    assert [sorted(r.run_id for r in row.runs) for row in rows] == [["s0", "s1", "s2"]]
    assert rows[0].label == "unet3d / focal"
    rows = make_rows([record("s0", 0, 20, False), record("s1", 1, 20, True), record("x2", 2, 30, False)])
    assert sorted(sorted(r.run_id for r in row.runs) for row in rows) == [["s0", "s1"], ["x2"]]


def _synthetic_record(run_id, arch, loss, seed, dice, part=None, empty=None, variant=0):
    """A RunRecord with a made-up per-nodule table (no MLflow, no training)."""
    from benchmark.results.leaderboard import RunRecord
    n = len(dice)
    df = pd.DataFrame({"nodule_id": [f"n{i}" for i in range(n)], "dice": dice, "nsd": dice,
                       "hd95_mm": np.where(np.asarray(dice) == 0, 96.0, 3.0),
                       "empty_pred": empty if empty is not None else [False] * n, "size_bin": ["6-10"] * n})
    tags = {"arch": arch, "loss": loss, "seed": str(seed), "preset": "cpu", "data.source": "phantom",
            "data.ground_truth": "staple", "data.split_hash": "s", "data.content_hash": "c"}
    if part:
        tags.update({"protocol.part": part, "tuned": "true", "optuna.study": f"cpu-v1-{arch}",
                     "tuning.budget": "12 trials x 6 epochs, median pruner", "tuning.seconds": "3600"})
    config = {"model": {"arch": arch, "kwargs": {"w": variant}}, "loss": {"name": loss}, "train": {"seed": seed}}
    return RunRecord(run_id, tags, {"test_dice": 0.0, "train_seconds": 100.0}, config, seed, df)


def test_sections_gain_loss_study_and_empty_count_on_synthetic_runs():
    from benchmark.results.leaderboard import build_sections, render_markdown, table_key
    g = np.random.default_rng(0)
    n = 30
    base = g.uniform(0.4, 0.6, n)
    runs = []
    for s in range(3):
        runs.append(_synthetic_record(f"d{s}", "unet3d", "dice_bce", s, base + g.normal(0, .01, n)))
        runs.append(_synthetic_record(f"t{s}", "unet3d", "dice_bce", s, base + 0.2 + g.normal(0, .01, n),
                                      part="final", variant=1))
        empty = [i < 2 for i in range(n)]
        runs.append(_synthetic_record(f"l{s}", "unet3d", "dice", s,
                                      np.where(empty, 0.0, base + 0.1), part="loss", empty=empty, variant=1))
    lb = build_sections(table_key(runs[0]), runs, n_boot=500)
    assert lb.section == "tuned" and [x.section for x in lb.sections] == ["default", "loss"]
    assert [r.label for r in lb.rows] == ["unet3d / dice_bce"] and lb.rows[0].runs[0].run_id.startswith("t")
    gain = lb.sections[0].rows[0].stats
    assert gain["gain"] == pytest.approx(0.2, abs=0.01) and 0 < gain["gain_ci_low"] < 0.2 < gain["gain_ci_high"]
    loss = {r.loss: r.stats for r in lb.sections[1].rows}
    assert loss["dice"]["n_empty"] == 6 and loss["dice"]["n_predictions"] == 3 * n   # 2 nodules x 3 seeds
    assert loss["dice"]["p_vs_comparator_holm"] < 0.001 and "p_vs_comparator_holm" not in loss["dice_bce"]
    assert loss["dice"]["hd95_mm_median"] == 3.0 and loss["dice"]["hd95_mm_mean"] > 3.0
    md = render_markdown(lb)
    assert "cpu-v1-unet3d: 12 trials x 6 epochs, median pruner" in md and "1.0 + 0.1 CPU h" in md
    assert "+0.200 [" in md and "| unet3d | dice | 3 |" in md and "6/90" in md


def test_a_rows_latency_is_its_fastest_seeds_and_its_training_time_the_mean():
    """Three seeds time one network: a pass slowed by other work on the cores (bixnas: 425 ms
    beside 16 and 17 ms) must not become the row's latency, as the mean made it (152.9 ms)."""
    from benchmark.results.leaderboard import build_sections, render_markdown, table_key
    g = np.random.default_rng(0)
    runs = []
    for s, (ms, train_s) in enumerate(((425.0, 100.0), (17.0, 200.0), (16.0, 300.0))):
        r = _synthetic_record(f"b{s}", "bixnas", "dice_bce", s, g.uniform(0.2, 0.4, 20))
        r.metrics.update(latency_ms_median=ms, train_seconds=train_s, params=133e3)
        runs.append(r)
    lb = build_sections(table_key(runs[0]), runs, n_boot=100)
    stats = lb.rows[0].stats
    assert stats["latency_ms_median"] == 16.0 and stats["train_seconds"] == 200.0 and stats["params"] == 133e3
    assert "latency is the fastest seed's median forward pass" in render_markdown(lb)


def test_a_searched_network_is_set_against_its_parent_on_both_pages():
    """bixnas's parent is bionet (architecture metadata): the page pairs their tuned rows, with
    the paired Dice difference and its interval, the costs and a reading in words."""
    from benchmark.results.leaderboard import build_sections, render_html, render_markdown, table_key
    from architectures import searched_parents
    assert searched_parents() == {"bixnas": "bionet", "dints": "dints_fixed"}
    g = np.random.default_rng(2)
    n = 40
    base = g.uniform(0.3, 0.6, n)
    runs = []
    for s in range(3):
        for arch, shift, macs in (("bionet", 0.0, 4e8), ("bixnas", 0.1, 2e8), ("unet3d", 0.05, 5e8),
                                  ("dints_fixed", 0.0, 1e8)):
            rec = _synthetic_record(f"{arch}{s}", arch, "dice_bce", s, base + shift + g.normal(0, .01, n),
                                    part="final", variant=1)
            rec.metrics.update(macs_per_patch=macs, params=macs / 100)
            runs.append(rec)
    lb = build_sections(table_key(runs[0]), runs, n_boot=300)
    [c] = lb.comparisons                           # dints has no row: no pair for dints_fixed
    assert (c.searched.arch, c.parent.arch) == ("bixnas", "bionet")
    assert c.dice_diff == pytest.approx(0.1, abs=0.01) and 0 < c.dice_diff_low < 0.1 < c.dice_diff_high
    assert c.p_holm < 0.001 and c.verdict() == "beats its parent (Dice difference interval above 0), at fewer MACs"
    md = render_markdown(lb)
    section = md.split("## Searched networks against their parents", 1)[1].split("##", 1)[0]
    assert "| bixnas / dice_bce | bionet / dice_bce | 3 / 3 |" in section and "| 2 M / 4 M | 200 M / 400 M |" in section, section
    assert re.search(r"\| \+0\.(09|10)\d \[\+0\.\d{3}, \+0\.\d{3}\] \|", section), section
    assert "Searched networks against their parents" in render_html(lb, {})


def test_readers_vs_truth_is_a_reference_row_of_its_own():
    """Model rows and the inter_reader run carry dice_vs_truth; phantom_ceiling (the true shape
    itself) does not. The inter_reader run's two scores become two reference rows, each number in
    its own column: inter_reader against the STAPLE, readers_vs_truth against the truth. The
    ceiling's cell against the truth stays empty, the guide says what each means, and neither
    split changes the other rows' p-values."""
    from benchmark.results.leaderboard import build_sections, render_markdown, table_key
    g = np.random.default_rng(3)
    n = 25
    base = g.uniform(0.4, 0.6, n)
    runs = []
    for s in range(2):
        rec = _synthetic_record(f"m{s}", "unet3d", "dice_bce", s, base + g.normal(0, .01, n))
        rec.per_nodule["dice_vs_truth"] = base + 0.05
        runs.append(rec)
    readers = _synthetic_record("ir", "inter_reader", "none", 0, base + 0.2)
    readers.per_nodule["dice_vs_truth"] = np.full(n, 0.83)
    runs += [readers, _synthetic_record("pc", "phantom_ceiling", "none", 0, base + 0.3)]
    lb = build_sections(table_key(runs[0]), runs, n_boot=200)
    assert "dice_vs_truth" in lb.metrics
    stats = {r.arch: r.stats for r in lb.rows}
    assert stats["readers_vs_truth"]["dice_vs_truth_mean"] == pytest.approx(0.83)
    assert np.isnan(stats["readers_vs_truth"]["dice_mean"])
    assert stats["inter_reader"]["dice_mean"] == pytest.approx((base + 0.2).mean())
    assert np.isnan(stats["inter_reader"]["dice_vs_truth_mean"]) and np.isnan(stats["phantom_ceiling"]["dice_vs_truth_mean"])
    assert [r.arch for r in lb.rows if r.reference] == ["phantom_ceiling", "inter_reader", "readers_vs_truth"]
    assert "wilcoxon_p_holm" not in stats["readers_vs_truth"]       # no Dice against the STAPLE to test
    md = render_markdown(lb)
    details = md.split("## Details", 1)[1]       # the wide table, with the columns against the truth
    line = {a: next(x for x in details.splitlines() if x.startswith(f"| ref | {a} ")) for a in
            ("phantom_ceiling", "inter_reader", "readers_vs_truth")}
    assert "| 0.830 [0.830, 0.830] |" in line["readers_vs_truth"] and "| 0.830" not in line["inter_reader"]
    assert line["readers_vs_truth"].split(" | ")[3] == "–"           # its Dice against the STAPLE
    assert "The readers_vs_truth row is each radiologist's mask against the true shape" in md
    assert "- readers_vs_truth: `ir`" in md                         # the run behind it is listed
    # the same runs with no score against the truth for the readers (no split): every other row's
    # Holm-corrected test is the same, so the new row joined no family
    from dataclasses import replace

    import benchmark.results.leaderboard.statistics as statistics
    unsplit_runs = [replace(r, per_nodule=r.per_nodule.drop(columns=["dice_vs_truth"]))
                    if r.arch == "inter_reader" else r for r in runs]
    unsplit = build_sections(table_key(runs[0]), unsplit_runs, n_boot=200)
    assert "readers_vs_truth" not in {r.arch for r in unsplit.rows}
    for r in unsplit.rows:
        assert r.stats.get("wilcoxon_p_holm") == pytest.approx(
            next(x for x in lb.rows if x.label == r.label).stats.get("wilcoxon_p_holm"), nan_ok=True)
    assert statistics.split_readers_vs_truth(runs[:2]) == runs[:2]   # model runs pass unchanged


def _page_with_references(n_models=4):
    """A default-settings table of ``n_models`` models (with MACs) and two reference rows."""
    from benchmark.results.leaderboard import build_sections, table_key
    g = np.random.default_rng(1)
    base = g.uniform(0.3, 0.7, 20)
    runs = []
    for i in range(n_models):
        for s in range(2):
            rec = _synthetic_record(f"m{i}s{s}", f"arch{i}", "dice_bce", s, base + 0.02 * i + g.normal(0, .01, 20))
            rec.metrics.update(macs_per_patch=1e9 * (i + 1), params=1e6 * (i + 1))
            runs.append(rec)
    runs.append(_synthetic_record("ir", "inter_reader", "none", 0, base + 0.1))
    runs.append(_synthetic_record("tb", "threshold_baseline", "none", 0, base - 0.2))
    return build_sections(table_key(runs[0]), runs, n_boot=200)


def _colours_by_row(fig, labels) -> dict:
    """Row label -> the colour its artist is drawn in (error bars, lines or scattered points)."""
    from matplotlib.colors import to_hex
    ax = fig.axes[0]
    drawn = [(c.get_label(), c.lines[0].get_color()) for c in ax.containers]
    drawn += [(line.get_label(), line.get_color()) for line in ax.get_lines()]
    drawn += [(coll.get_label(), coll.get_facecolor()[0]) for coll in ax.collections
              if coll.get_label() in labels]      # not the error bars' own line collections
    out = {}
    for name, colour in drawn:
        name = name.removesuffix(" (ref)")
        if name in labels:
            out[name] = to_hex(colour)
    return out


def test_every_plot_gives_each_row_its_own_colour_and_the_same_one_in_every_plot():
    import matplotlib.pyplot as plt

    from benchmark.results.leaderboard.plots import make_figures, row_styles
    lb = _page_with_references()
    labels = [r.label for r in lb.rows]
    styles = {label: s.colour.lower() for label, s in row_styles(lb.rows).items()}
    assert len(set(styles.values())) == len(labels) == 6
    figures = make_figures(lb)
    try:
        for name, fig in figures.items():
            drawn = _colours_by_row(fig, labels)
            # Dice vs MACs draws the models as points and the references as lines: every row
            assert drawn == styles, name
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_more_rows_than_colours_still_tells_rows_apart():
    from benchmark.results.leaderboard.plots import PALETTE, row_styles
    rows = [SimpleNamespace(label=f"row{i}") for i in range(2 * len(PALETTE) + 3)]
    styles = list(row_styles(rows).values())
    assert len({s.colour for s in styles[:len(PALETTE)]}) == len(PALETTE)
    assert len({(s.colour, s.marker) for s in styles}) == len(rows)


def test_page_says_how_to_read_the_table_and_keeps_intervals_apart_in_html():
    from html import escape

    from benchmark.results.leaderboard import render_html, render_markdown
    lb = _page_with_references()
    md, page = render_markdown(lb), render_html(lb, {})
    assert "## How to read this table" in md and "<h2>How to read this table</h2>" in page
    for term in ("Value", "[low, high]", "# and P(best)", "Wilcoxon p vs #1 (Holm)", "Empty",
                 "Reference rows (ref)"):
        assert f"- **{term}**:" in md and f"<li><b>{escape(term)}</b>:" in page, term
    assert "inter_reader: how well radiologists agree" in md and "threshold_baseline: a non-learned" in md
    assert "Gain from tuning" not in md and "Loss study" not in md      # only for columns the page shows
    # Markdown keeps "value [interval]" in one cell; HTML puts the interval on its own line
    top = lb.rows[0].stats
    interval = f"[{top['dice_ci_low']:.3f}, {top['dice_ci_high']:.3f}]"
    assert f"{top['dice_mean']:.3f} ± {top['dice_std']:.3f} {interval}" in md
    assert f"{top['dice_mean']:.3f} ± {top['dice_std']:.3f}<span class='ci'>{interval}</span></td>" in page
    assert "td{white-space:nowrap" in page


@pytest.mark.slow
def test_export_recomputes_the_page_byte_for_byte_and_registers_the_top_model(at_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from benchmark.results.leaderboard import generate
    from benchmark.core.tracking import load_settings
    [made] = generate(preset="smoke", out_dir=tmp_path / "a", export=True, log_to_mlflow=False, register_top=True)
    export = tmp_path / "a" / "lidc-phantom-smoke.runs"
    assert export in made.files and (export / "manifest.json").is_file()
    # the registry holds the top row's best seed, described by its row
    versions = MlflowClient(load_settings().tracking_uri).search_model_versions("name = 'lidc-phantom-smoke'")
    top = made.leaderboard.rows[0]
    assert [v.run_id for v in versions] == [max(top.runs, key=lambda x: x.metrics["test_dice"]).run_id]
    assert top.label in versions[0].description
    # no MLflow store at all: the export alone gives the same bytes
    monkeypatch.setenv("LIDC_BENCH_TRACKING_URI", "http://127.0.0.1:9")     # nothing answers there
    [again] = generate(preset="smoke", out_dir=tmp_path / "b", from_export=export)
    for suffix in (".md", ".csv", ".html"):
        a = (tmp_path / "a" / f"lidc-phantom-smoke{suffix}").read_bytes()
        b = (tmp_path / "b" / f"lidc-phantom-smoke{suffix}").read_bytes()
        assert a == b, suffix


@pytest.mark.slow
def test_export_keeps_the_studies_behind_tuned_rows(store_home, bench_home, tmp_path, capsys):
    """--export writes the Optuna studies named by the runs' tag optuna.study (from the project's
    journal); a study that is gone is a one-line warning; --from still gives the page byte for byte."""
    import json

    import optuna

    from benchmark.results.leaderboard import generate
    from benchmark.core.optuna_storage import default_storage_path
    _copy_store(store_home, bench_home)
    cl = _client()
    for run in _all_runs(cl):
        if run.data.tags.get("arch") == "unet3d":
            study = "smoke-v1-unet3d" if run.data.tags.get("loss") == "dice_bce" else "deleted-study"
            cl.set_tag(run.info.run_id, "optuna.study", study)
    journal = default_storage_path()
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(storage=storage, study_name="smoke-v1-unet3d", direction="maximize") \
        .add_trial(optuna.trial.create_trial(value=0.5))

    [made] = generate(preset="smoke", out_dir=tmp_path / "a", export=True, log_to_mlflow=False)
    export = tmp_path / "a" / "lidc-phantom-smoke.runs"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["studies"] == {"smoke-v1-unet3d": "studies/smoke-v1-unet3d.json"}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "deleted-study" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")
    [again] = generate(preset="smoke", out_dir=tmp_path / "b", from_export=export)
    for suffix in (".md", ".csv", ".html"):
        name = f"lidc-phantom-smoke{suffix}"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), suffix


@pytest.mark.slow
def test_a_metric_the_specification_marks_as_a_column_reaches_every_table(monkeypatch):
    """Adding a leaderboard column is one entry in ``benchmark.run.metrics.METRIC_SPECS``: ASSD made a
    column (with a median, and in the loss study) shows up in the main and loss tables and the CSV
    with its heading, digits, interval and median, and a run without the column is refused."""
    import dataclasses

    import benchmark.run.metrics as metrics
    from benchmark.results.leaderboard import build_sections, render_csv, table_cells, table_key
    from benchmark.results.leaderboard.collect import _record
    specs = [dataclasses.replace(s, leaderboard=3, median=True, loss_study=True) if s.key == "assd_mm" else s
             for s in metrics.METRIC_SPECS]
    monkeypatch.setattr(metrics, "METRIC_SPECS", tuple(specs))
    g = np.random.default_rng(3)
    base = g.uniform(0.4, 0.6, 12)
    runs = []
    for s in range(2):
        for rec in (_synthetic_record(f"t{s}", "unet3d", "dice_bce", s, base + 0.1, part="final"),
                    _synthetic_record(f"l{s}", "unet3d", "dice", s, base, part="loss")):
            rec.per_nodule["assd_mm"] = 1.25 + s       # seed 0: 1.25 mm everywhere, seed 1: 2.25 mm
            runs.append(rec)
    lb = build_sections(table_key(runs[0]), runs, n_boot=100)
    header, body = table_cells(lb)
    col = header.index("ASSD (mm)")
    assert header[col + 1] == "ASSD median (mm)" and header[col - 1] == "HD95 median (mm)"
    assert str(body[0][col]).startswith("1.75 ± 0.71 [") and str(body[0][col + 1]) == "1.75"
    loss_header, loss_body = table_cells(lb.sections[0])
    assert "ASSD (mm)" in loss_header and "ASSD median (mm)" in loss_header
    csv_header = render_csv(lb).splitlines()[0].split(",")
    assert {"assd_mm_mean", "assd_mm_ci_low", "assd_mm_median"} <= set(csv_header)
    # a run logged before the column existed is left out with a warning (bench rescore adds it)
    warnings = []
    df = runs[0].per_nodule.drop(columns=["assd_mm"])
    assert _record("old", runs[0].tags, runs[0].metrics, 0, lambda: df, lambda: {}, warnings.append) is None
    assert "lacks assd_mm" in warnings[0]


def test_metric_specification_names_every_metric_once():
    from benchmark.run.metrics import METRIC_SPECS, METRICS, leaderboard_columns, metric_spec, truth_columns
    assert len(set(METRICS)) == len(METRICS) == len(METRIC_SPECS)
    assert leaderboard_columns() == ("dice", "nsd", "hd95_mm") and truth_columns() == ("dice_vs_truth",)
    assert metric_spec("dice_vs_truth").heading(what="vs truth") == "Dice vs truth"
    assert metric_spec("nsd").heading(2.0) == "NSD@2mm"
    with pytest.raises(ValueError, match="unknown metric column 'dsc'"):
        metric_spec("dsc")


@pytest.mark.slow
def test_a_cells_own_look_at_the_store_settles_it_as_the_full_scan_does(store_home, bench_home):
    """`run_cell` reads only the runs that bear on its cell (by config and by budget
    fingerprint, or by reference fingerprint); for every cell of the module's suite, under its own
    patience and a larger one, with one run interrupted and one older run without the budget tag,
    that narrow look decides as the scan of the whole experiment does."""
    from benchmark.campaigns.suite import _existing_runs, plan_cells
    from benchmark.data.store import built_data_hash
    _copy_store(store_home, bench_home)
    held = _interrupted_run()
    cl = _client()
    untagged = next(r for r in _all_runs(cl) if "config.budget_fingerprint" in r.data.tags)
    cl.delete_tag(untagged.info.run_id, "config.budget_fingerprint")   # as logged by an older version
    exp = cl.get_experiment_by_name("lidc-bench").experiment_id
    decided = []
    for patience in ([], ["train.early_stopping_patience=9"]):
        cells = plan_cells("smoke", ["unet3d"], ["dice_bce", "dice"], SEEDS + 1, [*SMALL, *patience], True)
        data = built_data_hash(cells[0].cfg.data)
        full = _existing_runs(cl, exp, data)
        for c in cells:
            narrow = _existing_runs(cl, exp, data, only=c)
            assert (narrow.done_for(c), narrow.interrupted(c), narrow.held_elsewhere(c)) == \
                (full.done_for(c), full.interrupted(c), full.held_elsewhere(c)), c.label
            decided.append((c.reference, bool(full.done_for(c)), full.interrupted(c)))
    # the comparison covered done, interrupted and to-start cells, and done reference rows
    assert any(done for _, done, _ in decided) and any(i == held for _, _, i in decided)
    assert any(not done and i is None for _, done, i in decided)
    assert any(ref and done for ref, done, _ in decided)
