"""Faults: SIGKILL mid-epoch + resume, NaN loss, full disk, tracking server lost mid-run,
a tuning worker killed mid-trial, and DDP under torchrun (gloo) matching one process."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port, server_command, server_env

from benchmark.run.config import build_config
from benchmark.core.errors import TrainingError
from benchmark.run.train import run_experiment

SLOW_SMOKE = ["train.epochs=4", "model.kwargs.base_channels=8", "train.batch_size=4",
              "train.early_stopping_patience=10", "eval.overlays=false"]   # no test here looks at the overlays


def _client():
    from benchmark.core.tracking import client
    return client()


def _bench(*args, env):
    e = dict(os.environ, **env)
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli.main", *args], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(home: Path, epoch: int, proc, timeout=300):
    """The run id once its last.pt holds ``epoch``. A checkpoint is read again only when the file
    changed: reading one (~4 MB) every 20 ms took most of a core from the run being waited on."""
    deadline = time.time() + timeout
    read: dict = {}                     # path -> (mtime, size) of the version last read whole
    while time.time() < deadline:
        for p in (home / "runs" / "checkpoints").glob("*/last.pt"):
            try:
                st = p.stat()
                if read.get(p) == (st.st_mtime_ns, st.st_size):
                    continue
                if torch.load(p, weights_only=False)["epoch"] >= epoch:
                    return p.parent.name
                read[p] = (st.st_mtime_ns, st.st_size)
            except Exception:
                pass
        if proc.poll() is not None:
            raise AssertionError("run ended before it could be killed: " + proc.stderr.read()[-2000:])
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(bench_home, capsys):
    env = {"LIDC_BENCH_HOME": str(bench_home)}
    proc = _bench("run", "--arch", "unet3d", "--preset", "smoke", "--no-progress", *SLOW_SMOKE, env=env)
    run_id = _wait_for_checkpoint(bench_home, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # resumed by another process: this one (the killed one is gone; starting a third would only
    # add its start-up)
    from benchmark.cli.main import main
    capsys.readouterr()
    assert main(["run", "--resume", run_id, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"run {run_id}")
    cl = _client()
    steps = [m.step for m in cl.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4]
    # the same config without interruption gives the same numbers
    capsys.readouterr()
    assert main(["run", "--arch", "unet3d", "--preset", "smoke", "--no-progress", *SLOW_SMOKE]) == 0
    ref_id = capsys.readouterr().out.split()[1].rstrip(":")
    a, b = cl.get_run(run_id).data.metrics, cl.get_run(ref_id).data.metrics
    for key in ("train_loss", "val_dice", "test_dice", "test_hd95_mm"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_sigterm_closes_the_run_as_killed_and_it_resumes(bench_home):
    """kill (SIGTERM) is handled like Ctrl-C: exit 143, the run is KILLED, not left RUNNING."""
    env = {"LIDC_BENCH_HOME": str(bench_home)}
    proc = _bench("run", "--arch", "unet3d", "--preset", "smoke", "--no-progress", *SLOW_SMOKE, env=env)
    run_id = _wait_for_checkpoint(bench_home, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated" in err and f"bench run --resume {run_id}" in err
    assert _client().get_run(run_id).info.status == "KILLED", err[-3000:]


@pytest.mark.slow
def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(bench_home):
    from benchmark.losses import LOSSES, create_loss
    calls = {"n": 0}

    class NanAfter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = create_loss("dice_bce")

        def forward(self, logits, target):
            calls["n"] += 1
            loss = self.inner(logits, target)
            return loss * float("nan") if calls["n"] > 6 else loss

    # the registry declares its losses up front (lazy): a test-only loss goes in as a built entry
    from benchmark.core.registry import Entry
    LOSSES._entries.setdefault("test_nan_after", Entry("test_nan_after", factory=lambda: NanAfter()))
    cfg = build_config("smoke", ["train.epochs=5", "model.kwargs.base_channels=4", "train.batch_size=4"],
                       **{"model.arch": "unet3d", "loss.name": "test_nan_after"})
    try:
        with pytest.raises(TrainingError, match="non-finite loss") as e:
            run_experiment(cfg, show_progress=False)
    finally:
        LOSSES._entries.pop("test_nan_after", None)  # keep the registry as other tests expect it
    assert "last.pt" in str(e.value)
    ckpt = Path(str(e.value).rsplit("(", 1)[1].rstrip(")"))
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] >= 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    runs = _client().search_runs([_client().get_experiment_by_name("lidc-bench").experiment_id])
    assert runs[0].info.status == "FAILED"


def test_disk_full_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    from benchmark.core import checkpoint
    target = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    before = target.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(TrainingError, match="disk full"):
        checkpoint.save_checkpoint({"epoch": 2}, target)
    assert target.read_bytes() == before
    # no temp file left behind, and the digest still names the intact checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
    import hashlib
    assert checkpoint.digest_path(target).read_text().split()[0] == hashlib.sha256(before).hexdigest()


@pytest.mark.slow
def test_tracking_server_lost_mid_run_buffers_and_syncs(bench_home, tmp_path, migrated_store_template, monkeypatch):
    import shutil
    port = free_port()
    db = tmp_path / "srv.db"
    shutil.copy(migrated_store_template, db)

    def start_server():
        p = subprocess.Popen(server_command(db, tmp_path / "art", port), env=server_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        import urllib.request
        for _ in range(180):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                return p
            except Exception:
                time.sleep(0.5)
        raise AssertionError("server did not start")

    server = start_server()
    url = f"http://127.0.0.1:{port}"
    env = {"LIDC_BENCH_HOME": str(bench_home), "LIDC_BENCH_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    proc = _bench("run", "--arch", "unet3d", "--preset", "smoke", "--no-progress", *SLOW_SMOKE, env=env)
    run_id = _wait_for_checkpoint(bench_home, 1, proc)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "bench sync" in err
    buffer = bench_home / "runs" / "offline" / f"{run_id}.jsonl"
    assert buffer.exists()
    kinds = {json.loads(l)["kind"] for l in buffer.read_text().splitlines()}
    assert "metrics" in kinds
    server = start_server()
    try:
        # `bench sync` in this process (the run's process and the server's were the ones that mattered)
        from benchmark.cli.main import main
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert main(["sync", str(buffer)]) == 0
        from mlflow import MlflowClient
        run = MlflowClient(url).get_run(run_id)
        assert "test_dice" in run.data.metrics and run.info.status == "FINISHED"
        assert sorted(m.step for m in MlflowClient(url).get_metric_history(run_id, "train_loss")) == [1, 2, 3, 4]
    finally:
        os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_tuning_worker_killed_mid_trial_leaves_study_usable(bench_home):
    import optuna
    from benchmark.campaigns.tune import open_study
    env = {"LIDC_BENCH_HOME": str(bench_home)}
    args = ["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "kill", "--pruner", "none", "--no-progress",
            "--fix", "arch.base_channels=8", "--fix", "train.batch_size=2", "train.epochs=5"]
    proc = _bench(*args, "--trials", "2", env=env)
    _wait_for_checkpoint(bench_home, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from benchmark.cli.main import main                # the study goes on in another process: this one
    assert main([*args, "--trials", "2"]) == 0
    study = open_study("kill", None, 1, None, create=False)[0]
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    killed_run = _client().get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert killed_run.data.tags["optuna.state"] == "FAIL" and killed_run.info.status == "FAILED"


@pytest.mark.slow
def test_torchrun_two_processes_match_one(bench_home):
    env = dict(os.environ, LIDC_BENCH_HOME=str(bench_home), OMP_NUM_THREADS="1")
    common = ["run", "--arch", "unet3d", "--preset", "smoke", "--no-progress", "train.epochs=3",
              "model.kwargs.base_channels=8", "model.kwargs.norm=instance", "train.batch_size=4"]
    one = subprocess.run([sys.executable, "-m", "benchmark.cli.main", *common], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                          str(free_port()), "-m", "benchmark.cli.main", *common], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    cl = _client()
    exp = cl.get_experiment_by_name("lidc-bench").experiment_id
    runs = cl.search_runs([exp], order_by=["start_time ASC"])
    assert len(runs) == 2, "torchrun logged exactly one MLflow run"
    a, b = runs[0].data.metrics, runs[1].data.metrics
    assert runs[1].data.tags["world_size"] == "2"
    # instance norm has no batch statistics, so the only difference is float summation order
    assert a["test_dice"] == pytest.approx(b["test_dice"], abs=0.02)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)


def test_data_workers_start_clean_beside_threads_and_a_sigterm_handler():
    """The data stages' workers must not inherit the parent's threads or signal handlers.

    A forked worker once blocked on a lock held by one of the parent's threads, and the
    SIGTERM that Pool.terminate() sends only set the flag of the inherited `bench` handler, so
    CI waited 15 minutes in join. Here the parent has both a busy extra thread and a handler
    that swallows SIGTERM; the workers must still start with one thread and the default
    SIGTERM action, and terminate() must end them at once."""
    import threading

    from benchmark.data.pool import worker_pool
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        t0 = time.monotonic()
        with worker_pool(2) as pool:     # __exit__ is terminate(): SIGTERM, then join
            handlers = pool.map(signal.getsignal, [signal.SIGTERM] * 2)
            threads = pool.starmap(threading.active_count, [()] * 2)
        assert time.monotonic() - t0 < 60
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
    assert handlers == [signal.SIG_DFL] * 2
    assert threads == [1, 1]


def test_cli_puts_the_previous_sigterm_handler_back():
    from benchmark.cli.main import main

    def mine(*_):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["losses"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_data_workers_do_not_rerun_the_callers_script():
    """A spawned worker would normally re-run the caller's main script first: an unguarded
    script would then run (and start pools) again in every worker, and code piped to
    `python -` has no file to re-run, so the pool would respawn failing workers for ever."""
    script = ("import os, sys\n"
              "print('body', file=sys.stderr)\n"
              "from benchmark.data.pool import worker_pool\n"
              "with worker_pool(2) as pool:\n"
              "    print(os.getpid() not in pool.starmap(os.getpid, [()] * 8))\n")
    r = subprocess.run([sys.executable, "-"], input=script, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "True"
    assert r.stderr.count("body") == 1
