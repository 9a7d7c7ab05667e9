"""MLflow logging overhead per epoch: local SQLite store and a local ``mlflow server``.

What ``run_experiment`` does at the end of every epoch, timed piece by piece:
  * the metric logging (``run_tracking.log_epoch``: two ``Tracker.log_metrics`` batches, 8 metrics);
  * the checkpoint (``Trainer.state`` + atomic ``save_checkpoint`` of ``last.pt``, and of
    ``best.pt`` too on epochs that improve validation Dice), with the cpu preset's unet3d.
Stores: a fresh SQLite file in the script's work folder, and an ``mlflow server`` on
127.0.0.1 (a free port) that the script starts with its own SQLite store and stops at the end.
The per-epoch total is set against a cpu-preset epoch as ``bench run --preset cpu`` runs it:
``train.steps_per_epoch`` steps (the preset's, 20) plus validation over the whole validation
split, timed per step and per validation nodule on the script's subset in the same run and
scaled to those counts. System-metrics sampling is off here (it runs in a
background thread every 10 s in real runs; its cost is not part of the epoch path).

    python perf/bench_mlflow.py
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    log = open(folder / "server.log", "w")
    # own session: the whole server (uvicorn and its children) can be stopped by this group id
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {folder / 'server.log'}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri, time.time() - t0
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not answer within 120 s; see {folder / 'server.log'}")


def stop_server(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tracker(uri: str, artifacts: Path):
    from benchmark.core.tracking import Tracker, TrackingSettings
    settings = TrackingSettings(tracking_uri=uri, experiment="perf-bench",
                                artifact_location=artifacts.as_uri() if uri.startswith("sqlite") else None,
                                system_metrics=False, system_metrics_interval_s=10)
    return Tracker.start("bench-mlflow", {"purpose": "logging overhead"}, settings=settings)


def main():
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    C.setup(args)
    reps = args.reps or 15
    print(f"machine: {C.machine()}")

    from benchmark.core.checkpoint import save_checkpoint
    from benchmark.run.run_tracking import log_epoch
    from benchmark.run.train import DistInfo, Trainer
    import torch

    folder = args.work_dir / f"mlflow-bench-{os.getpid()}"
    cfg, store = C.subset_store("cpu", overrides=["model.arch=unet3d", "train.device=cpu"])
    trainer = Trainer(cfg, store, torch.device("cpu"), DistInfo())
    print(f"model: {cfg.model.arch} {cfg.model.kwargs} (cpu preset size), "
          f"{sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f} M parameters")

    # the denominator: a real cpu-preset epoch, i.e. the preset's steps per epoch and its whole
    # validation split, from per-step and per-nodule times measured on the subset
    from benchmark.data.split import load_split
    steps_run = len(trainer.batches)
    n_val_subset = len(store.indices("val"))
    n_val_preset = sum(1 for s in load_split()["nodules"].values() if s == "val")
    ep = C.interleaved({"train": lambda: (trainer.train_epoch(0, False), steps_run)[1],
                        "val": lambda: (trainer.validate(), n_val_subset)[1]}, 3, progress="reference epoch")
    preset_steps = cfg.train.steps_per_epoch or steps_run
    epoch_s = C.med(ep["train"]["wall"]) * preset_steps + C.med(ep["val"]["wall"]) * n_val_preset
    print(f"cpu-preset epoch: {preset_steps} steps x {1000 * C.med(ep['train']['wall']):.0f} ms + validation of "
          f"{n_val_preset} nodules x {1000 * C.med(ep['val']['wall']):.1f} ms = {epoch_s:.2f} s "
          f"(batch {cfg.train.batch_size}, channels_last={cfg.train.channels_last}, {torch.get_num_threads()} thread(s))")

    proc, server_uri, startup = start_server(folder / "server")
    try:
        trackers = {"sqlite": tracker(f"sqlite:///{folder / 'local.db'}", folder / "artifacts"),
                    "server": tracker(server_uri, folder / "artifacts")}
        step = {"n": 0}
        best = {"val_dice": 0.5, "epoch": 1, "bad_epochs": 0}

        def log(t):
            def run():
                step["n"] += 1
                log_epoch(t, {"epoch": step["n"], "train_loss": 0.4, "val_dice": 0.6, "val_loss": 0.3,
                               "lr": 1e-3, "epoch_seconds": 12.0}, best)
                return 1
            return run

        def ckpt(both):
            def run():
                state = trainer.state(step["n"], best, [], 0.0, "bench")
                if both:
                    save_checkpoint(state, folder / "ckpt" / "best.pt")
                save_checkpoint(state, folder / "ckpt" / "last.pt")
                return 1
            return run

        res = C.interleaved({"metrics -> SQLite": log(trackers["sqlite"]), "metrics -> server": log(trackers["server"]),
                             "checkpoint last.pt": ckpt(False), "checkpoint last.pt + best.pt": ckpt(True)},
                            reps, warmup=2, progress="mlflow")
        for t in trackers.values():
            t.finish("FINISHED")
    finally:
        stop_server(proc)

    size_mb = (folder / "ckpt" / "last.pt").stat().st_size / 1e6
    rows = []
    for name, v in res.items():
        ms = 1000 * C.med(v["wall"])
        rows.append({"per-epoch action": name, "ms": ms, "noise": C.spread(v["wall"]),
                     "% of a cpu-preset epoch": f"{100 * ms / 1000 / epoch_s:.2f}%"})
    for store_name in ("SQLite", "server"):
        total = C.med(res[f"metrics -> {store_name}"]["wall"]) + C.med(res["checkpoint last.pt"]["wall"])
        rows.append({"per-epoch action": f"TOTAL, {store_name} (metrics + last.pt)", "ms": 1000 * total,
                     "% of a cpu-preset epoch": f"{100 * total / epoch_s:.2f}%"})
    print(C.table(rows, list(rows[0]), f"MLflow + checkpoint overhead per epoch (checkpoint {size_mb:.1f} MB; "
                                       f"cpu-preset epoch {epoch_s:.2f} s measured here)"))
    print(f"mlflow server start-up (until /health answered): {startup:.1f} s; stopped at the end")


if __name__ == "__main__":
    main()
