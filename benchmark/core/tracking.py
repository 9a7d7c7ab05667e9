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
import contextlib
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

from benchmark import PROJECT_ROOT, __version__
from benchmark.core.errors import TrackingError, UsageError
from benchmark.core.interrupts import held
from benchmark.core.offline_buffer import buffered_artifact
from benchmark.core.paths import home, offline_dir

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000

# MLflow draws its own tqdm bars when it moves artifacts (checkpoint downloads in `bench predict`,
# model logging): carriage returns in a log file, and a second bar under ours on a terminal. The
# project's own bars (benchmark.core.progress) say what is happening; a user who wants MLflow's
# back sets the variable to true.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
        _check_setting_types(cfg_path, data)
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


#: mlflow.yaml keys and the types they accept
_SETTING_TYPES = {"tracking_uri": (str,), "experiment": (str,), "artifact_location": (str, type(None)),
                  "system_metrics": (bool,), "system_metrics_interval_s": (int, float)}


def _check_setting_types(path: Path, data: dict) -> None:
    for key, value in data.items():
        if key not in _SETTING_TYPES:
            continue  # unknown keys are left for newer versions
        types = _SETTING_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = {str: "a string", bool: "true/false", int: "a number", float: "a number", type(None): "null"}
            want = " or ".join(dict.fromkeys(names[t] for t in types))
            raise UsageError(f"{path}: {key} must be {want}, got {value!r}")
    interval = data.get("system_metrics_interval_s")
    if interval is not None and not interval > 0:
        raise UsageError(f"{path}: system_metrics_interval_s must be > 0, got {interval!r}")


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
    if settings.tracking_uri.startswith("sqlite:///"):
        prepare_sqlite_store(settings.tracking_uri)
    import mlflow
    mlflow.set_tracking_uri(settings.tracking_uri)
    _quiet_store_tracebacks()
    return MlflowClient(tracking_uri=settings.tracking_uri)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


class _NoStoreTracebacks(logging.Filter):
    """MLflow's SQL store logs every failed statement with its whole traceback (some 60 lines;
    a store locked for 45 s printed 148) before raising it; the exception reaches our caller,
    which reports it in one line, so the log record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SQLAlchemy database error")


def _quiet_store_tracebacks() -> None:
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoStoreTracebacks) for f in store_log.filters):
        store_log.addFilter(_NoStoreTracebacks())


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


_PREPARED_STORES: set[str] = set()


def prepare_sqlite_store(uri: str) -> None:
    """Create, migrate or repair a SQLite tracking store once, under a file lock beside it.

    MLflow creates a fresh store's schema in whichever process opens it first, without a
    lock: two processes starting together (two suite workers, tune workers) both migrate,
    and one fails on alembic's temporary tables, sometimes leaving the store broken for every
    later command. Here the first process of the host creates it while the others wait; a
    store left half-migrated (a process killed during creation) is repaired: alembic's
    leftover temporary tables are dropped and the migrations finish. A store that still
    cannot be brought up is moved aside when it holds no run, and reported otherwise.
    """
    if uri in _PREPARED_STORES:
        return
    from benchmark.core.liveness import HostLock
    db = Path(uri[len("sqlite:///"):])
    with HostLock(db.with_name(db.name + ".lock")):
        try:
            create_or_migrate_sqlite(uri)
        except Exception as e:  # noqa: BLE001 - any schema failure: decide below
            _recover_store(uri, db, e)
    _PREPARED_STORES.add(uri)


def create_or_migrate_sqlite(uri: str) -> None:
    """Create or upgrade the schema of the SQLite store at ``uri`` (no lock: see prepare_sqlite_store)."""
    import sqlalchemy
    from mlflow.store.db import utils as dbu
    engine = sqlalchemy.create_engine(uri)
    try:
        leftovers = [t for t in sqlalchemy.inspect(engine).get_table_names() if t.startswith("_alembic_tmp_")]
        if leftovers:
            with engine.begin() as conn:
                for t in leftovers:
                    conn.exec_driver_sql(f'DROP TABLE "{t}"')
        if not dbu._all_tables_exist(engine):
            dbu._initialize_tables(engine)          # what MLflow does on first use, now under our lock
        elif dbu._get_schema_version(engine) != dbu._get_latest_schema_revision():
            dbu._upgrade_db(engine)
    finally:
        engine.dispose()


def _recover_store(uri: str, db: Path, error: Exception) -> None:
    import sqlalchemy
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            n_runs = conn.exec_driver_sql("SELECT COUNT(*) FROM runs").scalar()
    except Exception:  # noqa: BLE001 - no runs table: nothing was ever logged
        n_runs = 0
    finally:
        engine.dispose()
    if n_runs:
        raise TrackingError(f"tracking store {db} is half-migrated and could not be repaired ({first}); it holds "
                            f"{n_runs} runs, so it was left as is: back it up, then run "
                            f"`mlflow db upgrade {uri}`") from None
    aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(db, aside)
    print(f"warning: tracking store {db} was half-created and held no run ({first}); moved it to {aside} "
          f"and created a new one", file=sys.stderr)
    create_or_migrate_sqlite(uri)


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


# ------------------------------------------------------------------------------------------
# What makes a run usable beyond its numbers: the MLflow UI's view of it, standard source
# tags, the split as a dataset input, the selected model as an MLflow model, the registry.
# ------------------------------------------------------------------------------------------
#: the experiment tag MLflow 3's UI reads to choose between its GenAI pages (traces,
#: evaluations) and its classic model-training pages (the runs table)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
#: a saved view of the runs table (MLflow's "share view" mechanism: an experiment tag
#: ``mlflow.sharedViewState.<key>`` holding the view as JSON, opened with ``?viewStateShareKey=<key>``):
#: the UI's default columns are Source/Models/Dataset only; this one shows the headline numbers
#: instead, and only those, so that all of them fit a 1600 px window beside the run's name (the UI
#: orders metrics by name and puts tags after them; any other column is one click away)
RUNS_VIEW_KEY = "lidc-bench-runs"
HEADLINE_METRICS = ("test_dice", "test_dice_vs_truth", "test_hd95_mm")
RUNS_VIEW_TAGS = ("arch", "loss", "seed")
#: name of the logged MLflow model (a LoggedModel of the run, loaded by its ``models:/<model_id>`` URI)
MODEL_ARTIFACT = "model"
#: a run's per-nodule test table as evaluation wrote it, and as ``bench rescore --log`` wrote it again
PER_NODULE_ARTIFACT = "evaluation/per_nodule.csv"
RESCORED_PER_NODULE_ARTIFACT = "evaluation/per_nodule_rescored.csv"
RESCORED_TAG = "evaluation.rescored"


def per_nodule_artifact(tags: dict) -> str:
    """The per-nodule table a run is scored by: the rescored one once ``bench rescore --log`` has
    written it (it holds every column the metric specification has now), else the original."""
    return RESCORED_PER_NODULE_ARTIFACT if tags.get(RESCORED_TAG) == "true" else PER_NODULE_ARTIFACT


@contextlib.contextmanager
def _temporary_env(name: str, value: str):
    """Set an environment variable MLflow reads, and put back what was there."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def no_download_bars():
    """No MLflow progress bar per downloaded artifact: reading a few hundred runs' tables
    would bury the console in bars of one file each."""
    return _temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_mlflow_logging(level: str = "WARNING"):
    """Keep MLflow's INFO lines ("Creating initial MLflow database tables", ...) off the console.

    Setting ``logging.getLogger("mlflow")``'s level is not enough: ``import mlflow``
    (re)configures its own loggers from ``MLFLOW_LOGGING_LEVEL`` (default INFO), undoing a
    level set before the import. So the variable is set (also for the ``mlflow ui``
    subprocess) and, if mlflow is already imported, its loggers are lowered as well.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)
    wanted = os.environ["MLFLOW_LOGGING_LEVEL"].upper()
    if "mlflow" in sys.modules:
        for name in ("mlflow", "alembic", "huey"):
            logging.getLogger(name).setLevel(wanted)


def mark_training_experiment(cl, exp_id: str):
    """Tag the experiment as a model-training one so the UI opens on its runs table."""
    try:
        exp = cl.get_experiment(exp_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_EXPERIMENT_KIND:
            cl.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
        view = runs_view_state()
        if exp.tags.get(f"mlflow.sharedViewState.{RUNS_VIEW_KEY}") != view:
            cl.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{RUNS_VIEW_KEY}", view)
    except Exception as e:  # noqa: BLE001 - a UI nicety, never worth failing a run for
        log.warning("could not tag experiment %s as a training experiment: %s", exp_id, e)


def runs_view_state() -> str:
    """The saved runs-table view: sorted by test Dice, headline metrics and tags as columns."""
    def key(kind, name):
        return f"{kind}.`{name}`"
    # no Source/Models/Dataset columns: wide, and the same for every run of the project
    columns = [key("metrics", m) for m in HEADLINE_METRICS] + [key("tags", t) for t in RUNS_VIEW_TAGS]
    return json.dumps({"orderByKey": key("metrics", "test_dice"), "orderByAsc": False, "selectedColumns": columns})


def runs_page_url(base_url: str, exp_id: str) -> str:
    """Where to point a browser: the experiment's runs table in the view above."""
    return f"{base_url.rstrip('/')}/#/experiments/{exp_id}/runs?viewStateShareKey={RUNS_VIEW_KEY}"


def source_tags(argv: list[str] | None = None) -> dict[str, str]:
    """MLflow's standard ``mlflow.source.*`` and ``mlflow.user`` tags (the UI's Source/User columns)."""
    import getpass
    from mlflow.utils.mlflow_tags import (MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE,
                                          MLFLOW_USER)
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).name if argv else ""
    # `bench run ...` and `python -m benchmark.cli.main run ...` are the same entry point
    if script in ("bench", "cli.py", "__main__.py", "-m", "-c") or script.endswith("benchmark.cli.main"):
        name = "bench " + (argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "")
    else:
        name = script or "python"
    tags = {MLFLOW_SOURCE_NAME: name.strip(), MLFLOW_SOURCE_TYPE: "LOCAL"}
    try:
        tags[MLFLOW_USER] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        return out or None
    except Exception:  # noqa: BLE001 - not a git checkout (installed from a wheel)
        return None


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


def logged_model_uri(tracker: "Tracker") -> str | None:
    """The URI of the MLflow model this run already logged, or None. The publish step calls it
    (``log_pytorch_model`` does) so that a run killed after logging its model and then resumed
    does not log a second one and orphan the first. Besides the ``model_uri`` tag it finds a
    finished model whose tag was never written (a kill between the two), and writes the tag."""
    try:
        run = tracker.client.get_run(tracker.run_id)
        if run.data.tags.get("model_uri"):
            return run.data.tags["model_uri"]
        models = tracker.client.search_logged_models([run.info.experiment_id],
                                                     filter_string=f"source_run_id = '{tracker.run_id}'")
    except Exception:  # noqa: BLE001 - no answer: log_model decides (and reports) as before
        return None
    ready = [m for m in models if m.name == MODEL_ARTIFACT and str(m.status).endswith("READY")]
    if not ready:
        return None
    model_id = max(ready, key=lambda m: m.creation_timestamp).model_id
    tracker.set_tags({"model_uri": f"models:/{model_id}", "model_id": model_id})
    return f"models:/{model_id}"


def log_pytorch_model(tracker: "Tracker", model, input_example, metadata: dict | None = None) -> str | None:
    """Log ``model`` as the run's MLflow PyTorch model; returns its URI (``models:/<model_id>``,
    also in the run's ``model_uri`` tag).

    The flavour pickles the whole module (class references into ``architectures``), so
    ``mlflow.pytorch.load_model`` needs lidc-bench importable and must only be used on runs you
    trust: unpickling executes code. Our own checkpoints stay ``weights_only`` state dicts.
    ``input_example``: one normalised patch (1, 1, Z, Y, X) float32, logged as the example. The
    signature leaves the batch and spatial sizes free (-1): a network takes other patch sizes than
    the one it was trained on; the logged module is wrapped in ``SpatialSizeCheck``, which refuses,
    in one line, a size that is not a multiple of what the network needs.
    """
    import copy

    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from benchmark.core.model_wrapper import SpatialSizeCheck, required_multiple
    already = logged_model_uri(tracker)
    if already:
        return already          # a resumed run evaluated again: its model is logged once
    bare = copy.deepcopy(model).cpu().eval()
    cpu_model = SpatialSizeCheck(bare, required_multiple(bare)).eval()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    with torch.no_grad():
        out = cpu_model(torch.from_numpy(example))
        out = out[0] if isinstance(out, (list, tuple)) else out
    free = (-1, example.shape[1], -1, -1, -1)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), free)]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out.shape[1], -1, -1, -1))]))
    # MLflow warns about pickle on every call; the trade-off is documented here and in docs/tracking.md
    flavour_log = logging.getLogger("mlflow.pytorch")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)
    # MLflow 3 files a LoggedModel under the fluent API's experiment, not its source run's: with
    # none set that is experiment 0, whose artifacts go to ./mlruns of whatever folder the
    # process started in, outside the project's store. The run's own experiment keeps it there.
    try:
        run_experiment = tracker.client.get_run(tracker.run_id).info.experiment_id
        with _temporary_env("MLFLOW_EXPERIMENT_ID", run_experiment):
            info = mlflow.pytorch.log_model(
                cpu_model, name=MODEL_ARTIFACT, run_id=tracker.run_id, signature=signature,
                input_example=example, metadata=metadata or {},
                # the flavour's default in MLflow 3.17 is torch.export ("pt2"): it returned a graph
                # with the batch size fixed to the example's (seen on unet3d), and export cannot
                # trace every model; pickle keeps the module as trained
                serialization_format="pickle",
                # listed, not inferred: inference loads the model in a subprocess (slow) and would
                # list every package of the environment
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={_version('mlflow')}",
                                  f"lidc-bench=={__version__}"])
    except Exception as e:  # noqa: BLE001 - the checkpoint is logged as well; the run stays valid
        print(f"warning: could not log the MLflow model ({type(e).__name__}: {str(e)[:160]}); "
              f"the weights are in the run's checkpoints/best.pt", file=sys.stderr)
        return None
    finally:
        flavour_log.setLevel(level)
    # MLflow 3 stores a model as a LoggedModel of its own (``models:/<model_id>``); that URI is
    # what load_model and the registry resolve reliably
    model_id = getattr(info, "model_id", None)
    uri = f"models:/{model_id}" if model_id else info.model_uri
    tracker.set_tags({"model_uri": uri, "model_id": model_id or ""})
    return uri


def load_pytorch_model(uri: str):
    """The PyTorch model behind an MLflow model URI, on the CPU, and its metadata dict.
    Unpickles the module (see ``log_pytorch_model``): only for models you trust."""
    import mlflow.pytorch
    from mlflow.models import get_model_info
    meta = get_model_info(uri).metadata or {}
    return mlflow.pytorch.load_model(uri, map_location="cpu"), meta


def _version(pkg: str) -> str:
    from importlib.metadata import version
    return version(pkg)


def register_model(run_id: str, name: str, description: str | None = None,
                   settings: TrackingSettings | None = None, force: bool = False):
    """Register a finished run's MLflow model under ``name`` in the model registry; the
    description (e.g. its leaderboard row) goes on the new version. Returns the ModelVersion.
    A run already registered under ``name`` is not registered again unless ``force``: a
    warning names its version, which is returned."""
    import re
    from mlflow.exceptions import MlflowException
    if not re.fullmatch(r"[0-9a-f]{32}", run_id or ""):
        raise UsageError(f"{run_id!r} is not a run id (32 hex digits)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
        raise UsageError(f"model name {name!r}: use letters, digits, '.', '_' and '-'")
    cl = client(settings)
    try:
        run = cl.get_run(run_id)
    except MlflowException:
        raise UsageError(f"no MLflow run {run_id!r} in {cl.tracking_uri}") from None
    if run.info.status != "FINISHED":
        raise UsageError(f"run {run_id} is {run.info.status}, not FINISHED: register finished runs only")
    if "model_uri" not in run.data.tags:
        raise UsageError(f"run {run_id} has no MLflow model (runs from before models were logged: "
                         f"re-run it, or use its checkpoints/best.pt)")
    existing = None if force else registered_version(cl, name, run_id)
    if existing is not None:
        print(f"warning: run {run_id} is already {name} version {existing.version}; no duplicate version was made "
              f"(--force makes one)", file=sys.stderr)
        return existing
    try:
        cl.get_registered_model(name)
    except MlflowException:
        cl.create_registered_model(name, tags={"project": "lidc-bench"},
                                   description="lidc-bench models; each version's description is its leaderboard row")
    model_id = run.data.tags.get("model_id") or None
    source = f"models:/{model_id}" if model_id else run.data.tags["model_uri"]
    version = cl.create_model_version(name, source, run_id=run_id, description=description,
                                      tags={k: run.data.tags[k] for k in ("arch", "loss", "preset", "seed")
                                            if k in run.data.tags},
                                      model_id=model_id)
    return version


def registered_version(cl, name: str, run_id: str):
    """The newest version of registered model ``name`` made from ``run_id``, or None
    (``name`` and ``run_id`` are validated by the caller: they go into a filter string)."""
    from mlflow.exceptions import MlflowException
    try:
        versions = cl.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)
