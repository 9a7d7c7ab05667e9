"""MLflow tracking: configuration from ``mlflow.yaml``, explicit-run-id logging, offline buffer.

Everything goes through :class:`Tracker`, a thin layer over ``MlflowClient`` with an
explicit run id (never MLflow's process-global "active run", which breaks under parallel
trials and resume). If the tracking server goes away mid-run, metrics are appended to
``runs/offline/<run_id>.jsonl`` and training goes on; ``bench sync`` replays them later.
An unreachable server at start is an error before any training happens.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import PROJECT_ROOT, __version__
from .errors import TrackingError, UsageError
from .paths import home, offline_dir

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000


@dataclass
class TrackingSettings:
    tracking_uri: str
    experiment: str
    artifact_location: str | None
    system_metrics: bool
    system_metrics_interval_s: float


def load_settings(path: str | Path | None = None) -> TrackingSettings:
    """Read ``mlflow.yaml`` (project root, or LIDC_BENCH_MLFLOW_YAML); env vars override the URI."""
    cfg_path = Path(path or os.environ.get("LIDC_BENCH_MLFLOW_YAML", PROJECT_ROOT / "mlflow.yaml"))
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            data = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{cfg_path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{cfg_path} must hold a mapping of settings")
    base = home()
    uri = (os.environ.get("LIDC_BENCH_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")
           or data.get("tracking_uri") or "sqlite:///runs/mlflow.db")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((base / uri[len("sqlite:///"):]).resolve())
    art = data.get("artifact_location", "runs/artifacts")
    if art and "://" not in str(art):
        art = (base / art).resolve().as_uri()
    return TrackingSettings(
        tracking_uri=uri,
        experiment=os.environ.get("LIDC_BENCH_EXPERIMENT", data.get("experiment", "lidc-bench")),
        artifact_location=art if _is_local(uri) else None,
        system_metrics=bool(data.get("system_metrics", True)),
        system_metrics_interval_s=float(data.get("system_metrics_interval_s", 10)),
    )


def _is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def check_reachable(uri: str, timeout: float = 5.0):
    """Fail fast (before any training) when a remote tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({e}); start it or fix "
                                f"LIDC_BENCH_TRACKING_URI / mlflow.yaml") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)


def client(settings: TrackingSettings | None = None):
    from mlflow import MlflowClient
    settings = settings or load_settings()
    check_reachable(settings.tracking_uri)
    import mlflow
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri)


def experiment_id(cl, settings: TrackingSettings, name: str | None = None) -> str:
    name = name or settings.experiment
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return cl.create_experiment(name, artifact_location=settings.artifact_location)
    except Exception:  # another process created it first
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def environment_tags() -> dict[str, str]:
    import torch
    tags = {
        "lidc_bench.version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"),
    }
    for pkg in ("monai", "mlflow", "optuna", "SimpleITK", "timm", "numpy"):
        try:
            from importlib.metadata import version
            tags[f"pkg.{pkg}"] = version(pkg)
        except Exception:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        if commit:
            tags["git.commit"] = commit
            tags["git.dirty"] = str(bool(dirty))
    except Exception:
        pass
    return tags


class Tracker:
    """Logs to one MLflow run by id; buffers to disk when the server stops answering."""

    def __init__(self, cl, run_id: str, settings: TrackingSettings):
        self.client = cl
        self.run_id = run_id
        self.settings = settings
        self.offline_path = offline_dir() / f"{run_id}.jsonl"
        self._warned = False
        self._monitor = None
        #: (metric, step) pairs the run already holds; set on resume so nothing is logged twice
        self._logged: set[tuple[str, int]] | None = None

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def start(cls, run_name: str, tags: dict[str, str], experiment: str | None = None,
              parent_run_id: str | None = None, settings: TrackingSettings | None = None) -> "Tracker":
        settings = settings or load_settings()
        cl = client(settings)
        exp_id = experiment_id(cl, settings, experiment)
        all_tags = {**environment_tags(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = cl.create_run(exp_id, run_name=run_name, tags=all_tags)
        return cls(cl, run.info.run_id, settings)

    @classmethod
    def resume(cls, run_id: str, settings: TrackingSettings | None = None) -> "Tracker":
        settings = settings or load_settings()
        cl = client(settings)
        try:
            run = cl.get_run(run_id)
        except Exception:
            raise UsageError(f"no MLflow run {run_id!r} in {settings.tracking_uri}") from None
        cl.update_run(run_id, status="RUNNING")
        tracker = cls(cl, run_id, settings)
        tracker._logged = logged_metric_steps(cl, run)
        return tracker

    @property
    def offline(self) -> bool:
        """True once logging fell back to the local buffer (the server stopped answering)."""
        return self._warned

    # -- logging ----------------------------------------------------------------------------
    def _guard(self, what: str, fn, record: dict):
        if not self._warned:
            try:
                fn()
                return
            except Exception as e:  # noqa: BLE001 - the server went away; keep training
                # From now on write locally only: retrying every call against a dead server
                # would stall training for minutes per epoch.
                self._warned = True
                self.stop_system_metrics()
                print(f"warning: MLflow logging failed ({type(e).__name__}: {str(e)[:120]}); training goes on and "
                      f"logs are buffered in {self.offline_path}; once the server is back run: "
                      f"bench sync {self.offline_path}", file=sys.stderr)
        self.offline_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.offline_path, "a") as f:
            f.write(json.dumps({"kind": what, **record}) + "\n")

    def log_params(self, params: dict[str, Any]):
        from mlflow.entities import Param
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            self._guard("params", lambda: self.client.log_batch(self.run_id, params=chunk),
                        {"params": {p.key: p.value for p in chunk}})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None):
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        if self._logged is not None:
            # a resumed run re-runs whatever came after its last checkpoint: log only what is new
            items = [m for m in items if (m.key, m.step) not in self._logged]
            self._logged.update((m.key, m.step) for m in items)
        if not items:
            return
        self._guard("metrics", lambda: self.client.log_batch(self.run_id, metrics=items),
                    {"metrics": {m.key: m.value for m in items}, "step": step or 0, "timestamp": ts})

    def set_tags(self, tags: dict[str, Any]):
        from mlflow.entities import RunTag
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._guard("tags", lambda: self.client.log_batch(self.run_id, tags=items), {"tags": {t.key: t.value for t in items}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None):
        self._guard("artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                    {"path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_text(self, text: str, name: str):
        self._guard("text", lambda: self.client.log_text(self.run_id, text, name), {"text": text, "name": name})

    def finish(self, status: str = "FINISHED"):
        self.stop_system_metrics()
        self._guard("status", lambda: self.client.set_terminated(self.run_id, status), {"status": status})

    # -- system metrics -----------------------------------------------------------------------
    def start_system_metrics(self):
        if not self.settings.system_metrics or os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() == "false":
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.settings.system_metrics_interval_s,
                                                 resume_logging=True, tracking_uri=self.settings.tracking_uri)
            self._monitor.start()
        except Exception as e:  # noqa: BLE001 - system metrics are a nicety, never fatal
            log.warning("system metrics disabled: %s", e)
            self._monitor = None

    def stop_system_metrics(self):
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:
                pass
            self._monitor = None


def logged_metric_steps(cl, run) -> set[tuple[str, int]]:
    """Every (metric, step) pair a run already holds."""
    out: set[tuple[str, int]] = set()
    for key in run.data.metrics:
        out.update((key, m.step) for m in cl.get_metric_history(run.info.run_id, key))
    return out


def sync_offline(path: str | Path, settings: TrackingSettings | None = None) -> int:
    """Replay a buffered ``runs/offline/<run_id>.jsonl`` into its MLflow run; returns records sent."""
    from mlflow.entities import Metric, Param, RunTag
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no offline buffer at {p}")
    run_id = p.stem
    cl = client(settings)
    sent = 0
    for line in p.read_text().splitlines():
        rec = json.loads(line)
        kind = rec.pop("kind")
        if kind == "metrics":
            cl.log_batch(run_id, metrics=[Metric(k, v, rec["timestamp"], rec["step"]) for k, v in rec["metrics"].items()])
        elif kind == "params":
            cl.log_batch(run_id, params=[Param(k, v) for k, v in rec["params"].items()])
        elif kind == "tags":
            cl.log_batch(run_id, tags=[RunTag(k, v) for k, v in rec["tags"].items()])
        elif kind == "artifact":
            cl.log_artifact(run_id, rec["path"], rec["artifact_path"])
        elif kind == "text":
            cl.log_text(run_id, rec["text"], rec["name"])
        elif kind == "status":
            cl.set_terminated(run_id, rec["status"])
        sent += 1
    p.rename(p.with_suffix(".synced"))
    return sent
