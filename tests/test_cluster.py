"""`bench suite --scheduler`: the matrix on a real Dask cluster started here (a scheduler and
two worker processes on 127.0.0.1), with a worker SIGKILLed while it trains a cell."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, free_port

SMOKE = ["--preset", "smoke", "--archs", "unet3d", "--seeds", "2", "--no-references", "--no-progress",
         "train.epochs=6", "train.early_stopping_patience=50", "eval.overlays=false"]


def _start(args, env, log):
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture()
def dask_cluster(bench_home):
    """`dask scheduler` + two `dask worker` (one process, one thread each, under a nanny that
    restarts a killed worker), all with this test's project home."""
    env = dict(os.environ, LIDC_BENCH_HOME=str(bench_home), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false")
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                     "--no-dashboard"], env, bench_home / "scheduler.log")]
    try:
        for i in range(2):
            procs.append(_start(["distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
                                 "--no-dashboard", "--local-directory", str(bench_home / f"dask-{i}")],
                                env, bench_home / f"worker-{i}.log"))
        yield address, env
    finally:
        for p in reversed(procs):
            _stop(p)


def _wait_for_checkpointed_run(bench_home, deadline, driver):
    """The first cell that has written a checkpoint and is still RUNNING: (run id, its owner pid)."""
    from benchmark.core.tracking import client
    cl = client()
    while time.time() < deadline:
        if driver.poll() is not None:      # the matrix ended (or failed) before any cell could be killed
            out, err = driver.communicate()
            pytest.fail(f"the suite exited ({driver.returncode}) before a cell checkpointed: {out[-1500:]} {err[-1500:]}")
        for ckpt in (bench_home / "runs" / "checkpoints").glob("*/last.pt"):
            run = cl.get_run(ckpt.parent.name)
            if run.info.status == "RUNNING" and run.data.tags.get("dask.worker"):
                return run.info.run_id, int(run.data.tags["pid"])
        time.sleep(0.2)
    pytest.fail("no cell reached its first checkpoint on the cluster")


@pytest.mark.slow
def test_killed_workers_cell_is_resumed_by_another_worker(dask_cluster, bench_home, capsys):
    address, env = dask_cluster
    # the crops must exist where the workers run (docs/scaling.md): build them once here
    from benchmark.run.config import build_config
    from benchmark.data import load_crops
    load_crops(build_config("smoke").data, progress=False)
    driver = subprocess.Popen([sys.executable, "-m", "benchmark.cli.main", "suite", *SMOKE, "--scheduler", address],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim, pid = _wait_for_checkpointed_run(bench_home, time.time() + 600, driver)
        os.kill(pid, signal.SIGKILL)                 # the worker process, mid-training
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert re.search(r"2 runs planned: 1 ran, 1 resumed, 0 already done, 0 failed", out), out

    from benchmark.core.tracking import client, load_settings
    cl = client()
    runs = cl.search_runs([cl.get_experiment_by_name(load_settings().experiment).experiment_id])
    # no cell ran twice: one run per seed, the killed one finished in place by another process
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and "test_dice" in r.data.metrics for r in runs)
    resumed = cl.get_run(victim)
    assert int(resumed.data.tags["resumed_from_epoch"]) >= 1
    assert resumed.data.tags["pid"] != str(pid) and resumed.data.tags["dask.scheduler"] == address
    assert resumed.data.metrics["epochs_completed"] == 6
    # every epoch logged once although the run was trained by two processes
    assert [m.step for m in cl.get_metric_history(victim, "train_loss")] == list(range(1, 7))

    # the same command again (in this process: the driver's process boundary was tested above):
    # every cell is found finished in the shared store, nothing runs
    from benchmark.cli.main import main
    capsys.readouterr()
    assert main(["suite", *SMOKE, "--scheduler", address]) == 0
    assert "2 runs planned: 0 ran, 0 resumed, 2 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["host:8786", "local:0", "local:two", "http://host:8786", "tcp://"])
def test_a_bad_scheduler_address_is_a_usage_error(spec):
    from benchmark.campaigns.cluster import parse_scheduler
    from benchmark.core.errors import UsageError
    with pytest.raises(UsageError, match="--scheduler"):
        parse_scheduler(spec)


def test_scheduler_addresses():
    from benchmark.campaigns.cluster import parse_scheduler
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("remote", "tcp://10.0.0.5:8786")
    assert parse_scheduler("tls://head.example.org:8786") == ("remote", "tls://head.example.org:8786")


OURS = "tcp://10.0.0.1:8786"
WORKER = {"host": "node7", "pid": "4242", "dask.worker": "tcp://10.0.0.7:40001", "dask.scheduler": OURS}


def _verdict(tags, dead_here=None, live=("tcp://10.0.0.7:40001",), pid=4242):
    from benchmark.campaigns.cluster import owner_is_dead_on_cluster
    return owner_is_dead_on_cluster(tags, dead_here, OURS, lambda: set(live), lambda address: pid)


def test_owner_on_this_host_is_judged_by_its_pid():
    assert _verdict(WORKER, dead_here=True) is True
    assert _verdict(WORKER, dead_here=False, live=()) is False     # alive here although the scheduler dropped it


def test_owner_on_another_host_is_judged_by_our_scheduler():
    assert _verdict(WORKER) is False                                 # listed, same process
    assert _verdict(WORKER, live=()) is True                         # the scheduler no longer lists it
    assert _verdict(WORKER, pid=999) is True                         # a new worker reuses the address
    assert _verdict(WORKER, pid=None) is False                       # cannot ask it: alive, never train twice


def test_owner_of_another_cluster_or_none_is_never_declared_dead():
    assert _verdict({**WORKER, "dask.scheduler": "tcp://elsewhere:8786"}, live=()) is False
    assert _verdict({**WORKER, "dask.worker": "", "dask.scheduler": ""}, live=()) is None   # a plain process


TINY_PROTOCOL = """
name: tiny
version: 1
preset: smoke
architectures: [unet3d, transfuse_s]
tuning: {n_trials: 1, epochs: 1, pruner: none}
final: {seeds: 2, overrides: [eval.overlays=false]}
"""


@pytest.mark.slow
def test_protocol_runs_its_studies_and_cells_on_the_cluster(bench_home, tmp_path, monkeypatch):
    """`bench protocol run --scheduler local:2`: both studies are tuned in worker processes (side
    by side), the final cells are trained there, and a plain local rerun finds nothing to do."""
    import optuna

    from benchmark.campaigns.cluster import DaskExecutor
    from benchmark.data import load_crops
    from benchmark.run.config import build_config
    from benchmark.campaigns.protocol import run_protocol
    from benchmark.core.tracking import client
    from benchmark.core.optuna_storage import open_storage
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    load_crops(build_config("smoke").data)          # as docs/scaling.md asks of every worker machine
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PROTOCOL)
    with DaskExecutor.connect("local:2") as ex:
        res = run_protocol(path, show_progress=False, executor=ex)
    final = dict(res.suites)["final"]
    assert not final.failed and len(final.ran) == 4, final.failed
    storage = open_storage(None)[0]
    pids = set()
    for arch in ("unet3d", "transfuse_s"):
        study = optuna.load_study(study_name=f"tiny-v1-{arch}", storage=storage)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
        pids |= {t.user_attrs["worker_pid"] for t in study.trials}
    assert os.getpid() not in pids                 # tuned in the workers, not in the driver
    run = client().get_run(final.ran[0][1])
    assert run.data.tags["protocol.name"] == "tiny" and run.data.tags["protocol.part"] == "final"
    again = run_protocol(path, show_progress=False)
    assert all(not r.ran and not r.resumed and not r.failed for _, r in again.suites)
