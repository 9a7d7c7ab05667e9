"""Shared fixtures: every test session gets its own MLflow store and runs folder.

The crop cache is shared with normal use (``.cache/crops`` in the project) so the smoke
subset is built once per machine, not once per test.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LIDC_BENCH_CACHE", str(ROOT / ".cache" / "crops"))
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

try:
    import torch
    # the cores shared among pytest-xdist's workers (pyproject: -n 2): one intra-op thread each
    # on two cores, rather than two workers each spinning two threads on them
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = max(1, min(2, (os.cpu_count() or 1) // _workers))
    torch.set_num_threads(_threads)
    # and the same for the `bench` subprocesses the tests start, which would otherwise each take
    # every core: two workers' subprocesses at two threads each on two cores spin-wait on each
    # other (docs/protocol.md: a unet3d epoch took 100-196 s that way, 14-17 s at one thread each)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def migrated_store_template() -> Path:
    """An empty MLflow SQLite store whose schema is already created (no experiment in it yet:
    each home creates its own, with its own artifact folder). Creating the schema runs about a
    hundred alembic migrations, 3-15 s on two cores; nearly every test starts from an empty
    store, so each copies this file instead. It is kept per MLflow version beside the crop cache
    (``.cache/test-stores/``, out of git), so a test session, and each of its workers, starts
    from it rather than migrating again; written whole and renamed, so a reader never sees half."""
    import mlflow

    from benchmark.core.tracking import create_or_migrate_sqlite
    db = ROOT / ".cache" / "test-stores" / f"mlflow-{mlflow.__version__}.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.with_name(f"{db.name}.{os.getpid()}.tmp")
        create_or_migrate_sqlite(f"sqlite:///{tmp}")
        os.replace(tmp, db)
    return db


@pytest.fixture()
def empty_home(tmp_path, monkeypatch):
    """An empty project home, with no tracking store yet (for the tests of creating one)."""
    monkeypatch.setenv("LIDC_BENCH_HOME", str(tmp_path))
    monkeypatch.delenv("LIDC_BENCH_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture()
def bench_home(empty_home, migrated_store_template):
    """A project home of its own: an empty, migrated MLflow SQLite store (``runs/mlflow.db``,
    the default ``mlflow.yaml`` URI relative to the home), and room for checkpoints and journals."""
    import shutil
    (empty_home / "runs").mkdir()
    shutil.copy(migrated_store_template, empty_home / "runs" / "mlflow.db")
    return empty_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(db: Path, artifacts: Path, port: int) -> list[str]:
    """`mlflow server` on 127.0.0.1 with one worker; ``db``: a copy of ``migrated_store_template``
    where the test does not need the migrations themselves (they take 3-15 s)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
            "--default-artifact-root", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def server_env() -> dict:
    """The tests' servers run without MLflow's GenAI job runner (seven processes importing
    MLflow, ~14 CPU s a start), as `bench ui` does (perf/bench_ui_start.py)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, migrated_store_template):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, local artifact root), started as
    ``server_command`` says."""
    import shutil
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    shutil.copy(migrated_store_template, d / "server.db")
    proc = subprocess.Popen(server_command(d / "server.db", d / "artifacts", port), env=server_env(),
                            stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited: " + (d / "server.log").read_text()[-2000:])
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not come up in 90 s")
    yield {"url": url, "proc": proc, "dir": d}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_cli(*args, env=None, timeout=600):
    """Run `python -m benchmark.cli.main ...` as a user would; returns CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "benchmark.cli.main", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def index():
    """The committed nodule index (read once per test module)."""
    from benchmark.data import index as ix
    return ix.load_index()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private, empty crop cache folder."""
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    return tmp_path / "crops"


@pytest.fixture()
def one_thread():
    """One torch thread and a fixed seed: the cores are shared, and the small optimisation tests
    of the architecture files stay deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def sphere_batch(size, batch=2):
    """A bright ball on noise and its mask: a fixed, learnable toy problem, shape (B, 1, D, H, W)."""
    g = torch.Generator().manual_seed(1)
    d, h, w = size
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    r2 = ((zz - d / 2) / (d / 4)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2
    mask = (r2 <= 1).float()[None, None].repeat(batch, 1, 1, 1, 1)
    return mask + 0.3 * torch.randn(mask.shape, generator=g), mask
