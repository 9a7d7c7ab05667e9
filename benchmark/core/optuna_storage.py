"""Where Optuna studies live: the default journal file, SQLite for one worker, PostgreSQL for many.

Both the tuner (``campaigns.tune``) and the study export (``results.study_export``) open storages,
so the one way of doing it sits here, below both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from benchmark.core.errors import UsageError
from benchmark.core.paths import runs_dir

#: the default journal file's name, under runs/optuna/
JOURNAL_NAME = "journal.log"


def default_storage_path() -> Path:
    return runs_dir() / "optuna" / JOURNAL_NAME


def open_storage(url: Optional[str], workers: int = 1):
    import optuna
    if not url:
        path = default_storage_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path))), str(path)
    if url.startswith("sqlite"):
        if workers > 1:
            raise UsageError("SQLite storage is not safe for parallel Optuna workers; use the default journal "
                             "file or a PostgreSQL URL")
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}), url
    if "://" in url:
        url = _postgres_driver(url)
        try:
            # heartbeats let a surviving worker fail the trial of a machine that died
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120), url
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot open Optuna storage {url}: {str(e).splitlines()[0][:200]}") from None
    path = Path(url)
    if not path.parent.is_dir():
        raise UsageError(f"folder for the journal file does not exist: {path.parent}")
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path))), str(path)


def _postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 defaults ``postgresql://`` to psycopg 3; use psycopg2 when only it is installed."""
    if url.startswith("postgresql://"):
        import importlib.util
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url
