"""Logging one run by its explicit id (``Tracker``), and the offline buffer it falls back to."""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmark import PROJECT_ROOT, __version__
from benchmark.core.errors import TrackingError, UsageError
from benchmark.core.interrupts import held
from benchmark.core.offline_buffer import buffered_artifact
from benchmark.core.paths import offline_dir
from benchmark.core.tracking.settings import MAX_PARAM_LEN, TrackingSettings, _first_line, client, load_settings
from benchmark.core.tracking.settings import experiment_id
from benchmark.core.tracking.conventions import mark_training_experiment, source_tags

log = logging.getLogger(__name__)

def environment_tags() -> dict[str, str]:
    import torch
    tags = {
        "lidc_bench.version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"),
    }
    from benchmark.core.provenance import TAG, training_code_sha
    tags[TAG] = training_code_sha()       # lets the leaderboard flag a row trained by changed code
    for pkg in ("monai", "mlflow", "optuna", "SimpleITK", "timm", "numpy", "scipy"):
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
        mark_training_experiment(cl, exp_id)
        all_tags = {**environment_tags(), **source_tags(), **tags}
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
    def _guard(self, what: str, fn, record):
        """Run ``fn``; once the server is gone, append ``record`` (or ``record()``) to the buffer.
        Ctrl-C and SIGTERM wait until the call or the buffer line is complete (``interrupts``)."""
        with held():
            self._log_or_buffer(what, fn, record)

    def _log_or_buffer(self, what: str, fn, record):
        if not self._warned:
            try:
                fn()
                return
            except Exception as e:  # noqa: BLE001 - the server went away; keep training
                # From now on write locally only: retrying every call against a dead server
                # would stall training for minutes per epoch.
                self._warned = True
                self.stop_system_metrics()
                print(f"warning: MLflow logging failed ({type(e).__name__}: {_first_line(e)}); training goes on and "
                      f"logs are buffered in {self.offline_path}; once the server is back run: "
                      f"bench sync {self.offline_path}", file=sys.stderr)
        self.offline_path.parent.mkdir(parents=True, exist_ok=True)
        if callable(record):
            record = record()
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
                    lambda: {"path": str(buffered_artifact(self.run_id, path)), "artifact_path": artifact_path})

    def log_text(self, text: str, name: str):
        self._guard("text", lambda: self.client.log_text(self.run_id, text, name), {"text": text, "name": name})

    def finish(self, status: str = "FINISHED"):
        self.stop_system_metrics()
        self._guard("status", lambda: self.client.set_terminated(self.run_id, status), {"status": status})
        if self._warned:
            self._replay_buffer()

    def _replay_buffer(self):
        """Logging fell back to the buffer during the run (a SQLite store locked for longer than
        its 20 s busy timeout, a server restart): try once to send it now, so that a store that
        answers again gets the whole run and its final status, instead of a run left RUNNING
        until someone runs ``bench sync``."""
        try:
            with held():
                n = sync_offline(self.offline_path, self.settings)
        except Exception as e:  # noqa: BLE001 - still unreachable: the buffer stays for bench sync
            print(f"warning: the tracking store still fails ({type(e).__name__}: {_first_line(e)}); run "
                  f"{self.run_id} stays as the store last saw it until: bench sync {self.offline_path}",
                  file=sys.stderr)
            return
        print(f"note: the tracking store answers again: the {n} buffered records of run {self.run_id} were sent",
              file=sys.stderr)

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


def search_all_runs(cl, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run of these experiments matching the MLflow filter, oldest first (all pages)."""
    runs, token = [], None
    while True:
        page = cl.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token,
                              order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metric_history(cl, run_id: str, key: str) -> list[tuple[int, float]]:
    """A run's (step, value) points of one metric, in step order ([] when it never logged it)."""
    points = cl.get_metric_history(run_id, key)
    return [(int(m.step), float(m.value)) for m in sorted(points, key=lambda m: (m.step, m.timestamp))]


def logged_metric_steps(cl, run) -> set[tuple[str, int]]:
    """Every (metric, step) pair a run already holds."""
    out: set[tuple[str, int]] = set()
    for key in run.data.metrics:
        out.update((key, m.step) for m in cl.get_metric_history(run.info.run_id, key))
    return out


def log_batch(cl, run_id: str, *, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
              metrics: dict[str, float] | None = None, step: int = 0, timestamp_ms: int | None = None,
              history: dict[str, list[tuple[int, float]]] | None = None) -> None:
    """Write tags, params and metrics to a run in as few requests as MLflow's batch limits allow
    (100 params, 1000 metrics per request), for code that writes to runs it does not hold open as
    a ``Tracker`` (Optuna callbacks, imports). ``metrics`` are logged at ``step``; ``history``
    gives whole metric histories as (step, value) lists. Times default to now."""
    import time

    from mlflow.entities import Metric, Param, RunTag
    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
    metric_list = [Metric(k, float(v), ts, int(step)) for k, v in (metrics or {}).items()]
    metric_list += [Metric(k, float(v), ts, int(s)) for k, points in (history or {}).items() for s, v in points]
    if tag_list:
        cl.log_batch(run_id, tags=tag_list)
    for i in range(0, len(param_list), 100):
        cl.log_batch(run_id, params=param_list[i:i + 100])
    for i in range(0, len(metric_list), 1000):
        cl.log_batch(run_id, metrics=metric_list[i:i + 1000])


def sync_offline(path: str | Path, settings: TrackingSettings | None = None) -> int:
    """Replay a buffered ``runs/offline/<run_id>.jsonl`` into its MLflow run; returns records sent.

    Everything is checked first (``offline_buffer.parse_buffer``), so a bad buffer replays nothing. The
    replayed records move to ``<run_id>.synced``; a torn last line stays in the buffer.
    """
    from benchmark.core.offline_buffer import parse_buffer
    from benchmark.core.paths import validate_run_id
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no offline buffer at {p}")
    if p.suffix != ".jsonl":
        raise UsageError(f"{p} is not an offline buffer (runs/offline/<run_id>.jsonl)")
    run_id = validate_run_id(p.stem)
    records, torn = parse_buffer(p, run_id)
    cl = client(settings)
    try:
        cl.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own types for a missing run
        if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"the tracking store does not answer ({_first_line(e)}); nothing was replayed, "
                                f"try again later") from None
        raise UsageError(f"no MLflow run {run_id} in {(settings or load_settings()).tracking_uri}; "
                         f"{p} belongs to another tracking store") from None
    for rec in records:
        kind = rec["kind"]
        if kind == "metrics":
            log_batch(cl, run_id, metrics=rec["metrics"], step=rec["step"], timestamp_ms=rec["timestamp"])
        elif kind == "params":
            log_batch(cl, run_id, params=rec["params"])
        elif kind == "tags":
            log_batch(cl, run_id, tags=rec["tags"])
        elif kind == "artifact":
            cl.log_artifact(run_id, rec["path"], rec["artifact_path"])
        elif kind == "text":
            cl.log_text(run_id, rec["text"], rec["name"])
        elif kind == "status":
            cl.set_terminated(run_id, rec["status"])
    synced = p.with_suffix(".synced")
    with open(synced, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    if torn is None:
        p.unlink()
    else:
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(torn)
        os.replace(tmp, p)
        print(f"warning: the last line of {p} is incomplete (a torn write); it was skipped and kept there "
              f"for a later sync", file=sys.stderr)
    return len(records)


def log_split_inputs(tracker: "Tracker", table, split_hash: str, dataset_name: str, split_file: str | Path):
    """The split as MLflow dataset inputs: one per split (context train/val/test), each the
    nodule table of that split, with the split file as its source and the split hash in its name."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
    cols = [c for c in ("nodule_id", "patient_id", "split", "diameter_mm", "texture_class", "size_bin")
            if c in table.columns]
    inputs = []
    for split in ("train", "val", "test"):
        part = table.loc[table["split"] == split, cols].reset_index(drop=True)
        if part.empty:
            continue
        ds = mlflow.data.from_pandas(part, source=Path(split_file).resolve().as_uri(),
                                     name=f"{dataset_name}-{split}@{split_hash[:8]}")
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    if not inputs:
        return
    try:
        tracker.client.log_inputs(tracker.run_id, datasets=inputs)
    except Exception as e:  # noqa: BLE001 - the split hash is in the tags too; never fail a run here
        print(f"warning: could not log the split as MLflow dataset inputs ({type(e).__name__}: {str(e)[:120]})",
              file=sys.stderr)
