"""Where runs go: ``mlflow.yaml``'s settings, the client, the experiment, a local SQLite store kept
healthy (created, migrated, recovered from a torn schema)."""
from __future__ import annotations

import logging
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmark import PROJECT_ROOT
from benchmark.core.errors import TrackingError, UsageError
from benchmark.core.paths import home

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
