"""The benchmark matrix on a Dask cluster: ``bench suite --scheduler ADDRESS``.

    bench suite --preset paper --seeds 3 --scheduler tcp://head:8786   # a running Dask scheduler
    bench suite --preset cpu --seeds 3 --scheduler local:2             # start 2 worker processes here

Why Dask (docs/scaling.md): one API for a workstation (``local:N``), a few machines
(``dask scheduler`` + ``dask worker`` over SSH) and the batch systems labs already run
(SLURM/PBS/SGE/LSF through dask-jobqueue, whose workers join the same scheduler); a worker
that dies is noticed by the scheduler at once and its task is given to another worker, with no
accounting daemon to poll.

What runs where. The driver (the ``bench suite`` process) plans the matrix, exactly as a local
suite does (so a typo fails before anything is submitted), prepares the tracking store once,
and submits one task per cell. A task runs ``benchmark.campaigns.suite.run_cell`` in the worker: the same
function that the local suite calls, so a cell is skipped, resumed or run by the same rules
(fingerprints in MLflow) wherever it lands. Each cell stays an ordinary MLflow run with its
checkpoints under ``runs/checkpoints/<run_id>``; workers must therefore share the tracking
store (an MLflow server) and ``LIDC_BENCH_HOME`` (or at least ``runs/checkpoints``) on a disk
they can all read, as for torchrun.

Fault tolerance. When a worker dies mid-cell the scheduler hands the task to another worker
(up to ``distributed.scheduler.allowed-failures`` times). The new attempt finds the cell's run
still RUNNING, sees that its owner is gone and resumes the same run from its last checkpoint.
Two attempts never train one cell at once:

* claims are serialised per cell by a ``distributed.Lock`` (held by the scheduler, so for every
  host of the cluster) plus the host lock the local suite uses (so a local ``bench suite`` on a
  worker host is excluded too); the claim is let go once the cell's run exists and names its
  owner;
* a RUNNING run's owner (``benchmark.core.liveness.owner_tags``: host, pid, Dask worker and scheduler
  addresses) counts as dead only when that is proved: its pid is gone on this host, or the
  scheduler it belonged to, which is ours, no longer lists its worker, or lists a worker at that
  address whose pid differs (a restarted worker on a fixed port). Anything unknown counts as
  alive, and the cell is reported as held elsewhere rather than trained twice.

What is left: a worker cut off from the scheduler while its process lives on (a network
partition, not a crash) is dropped by the scheduler, and its cell handed on, before the worker
notices and closes itself; during that window its current epoch overlaps the new attempt's
start. A stopped driver (Ctrl-C) does not stop cells already running on a remote cluster (Dask
cannot interrupt a running task): they finish, and the next ``bench suite`` skips them or reports
them as running elsewhere.

The seam for other runners (e.g. a tuned protocol): open an executor with
``DaskExecutor.connect(spec)`` (a context manager) and either

* ``run_cells(cells, experiment)`` for ``benchmark.campaigns.suite.Cell`` lists, yielding
  ``(cell, CellOutcome)`` as cells end; or
* ``map_unordered(fn, items, names)`` for any picklable, module-level ``fn(item)``, yielding
  ``(item, result_or_exception)``. ``fn`` runs in a worker process; it should itself be
  restartable (the task may run again after a worker dies), which ``run_cell`` is.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional

from benchmark.core.errors import BenchError, UsageError
from benchmark.core.liveness import HostLock, owner_is_dead
from benchmark.core.paths import runs_dir

__all__ = ["DaskExecutor", "parse_scheduler"]

_LOCAL = re.compile(r"^local:(\d+)$")
_REMOTE = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+$")


def parse_scheduler(spec: str) -> tuple[str, Any]:
    """``local:N`` -> ("local", N); ``tcp://host:port`` (or tls://...) -> ("remote", spec)."""
    m = _LOCAL.match(spec)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise UsageError("--scheduler local:N needs at least one worker (N >= 1)")
        return "local", n
    if _REMOTE.match(spec):
        return "remote", spec
    raise UsageError(f"--scheduler {spec!r}: expected tcp://HOST:PORT (a running Dask scheduler) or local:N")


class DaskExecutor:
    """A connection to a Dask cluster that runs the suite's cells (see the module docstring)."""

    def __init__(self, client, cluster=None):
        self.client = client
        self._cluster = cluster

    @classmethod
    @contextlib.contextmanager
    def connect(cls, spec: str, connect_timeout: str = "20s") -> Iterator["DaskExecutor"]:
        kind, arg = parse_scheduler(spec)
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise BenchError(f"--scheduler needs dask.distributed ({e}); pip install 'dask[distributed]'") from e
        cluster = None
        try:
            if kind == "local":
                # worker processes (not threads): a cell killed with its worker takes only that worker;
                # one thread each, since torch uses the cores itself
                cluster = LocalCluster(n_workers=arg, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
                client = Client(cluster)
            else:
                client = Client(arg, timeout=connect_timeout)
        except (OSError, TimeoutError) as e:
            if cluster is not None:
                cluster.close()
            raise BenchError(f"cannot reach the Dask scheduler at {spec}: {str(e).splitlines()[0]}") from None
        try:
            yield cls(client, cluster)
        finally:
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()

    def map_unordered(self, fn: Callable, items: Iterable, names: Iterable[str]) -> Iterator[tuple[Any, Any]]:
        """Submit ``fn(item)`` for every item and yield ``(item, result)`` as they end; a task that
        failed for good (its own exception, or ``KilledWorker`` after its workers died too often)
        yields the exception instead of a result."""
        from distributed import as_completed
        futures = {}
        for item, name in zip(items, names):
            # unique keys: a matrix submitted twice is two sets of tasks, kept apart by run_cell's claims
            fut = self.client.submit(fn, item, key=f"{name}-{uuid.uuid4().hex[:8]}", pure=False)
            futures[fut] = item
        for fut in as_completed(list(futures)):
            try:
                yield futures[fut], fut.result()
            except Exception as e:  # noqa: BLE001 - reported per item by the caller
                yield futures[fut], e

    def run_cells(self, cells: list, experiment: Optional[str]) -> Iterator[tuple[Any, Any]]:
        """``benchmark.campaigns.suite.run_suite``'s executor protocol: run every cell on the cluster."""
        from benchmark.campaigns.suite import CellOutcome
        from benchmark.core.tracking import client, experiment_id, load_settings
        if not cells:
            return
        settings = load_settings()
        # create the store and the experiment here, once, before any worker touches them
        experiment_id(client(settings), settings, experiment)
        # the driver's experiment and store, resolved here: a worker's own environment must not change them
        jobs = [_CellJob(c, experiment or settings.experiment, settings.tracking_uri) for c in cells]
        names = ["cell-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", c.label) for c in cells]
        for job, out in self.map_unordered(_run_cell_job, jobs, names):
            if isinstance(out, BaseException):
                why = "its workers died" if type(out).__name__ == "KilledWorker" else type(out).__name__
                msg = str(out).splitlines()[0] if str(out) else ""
                out = CellOutcome("failed", job.cell.label, f"on the cluster ({why}): {msg}".rstrip(": "))
            yield job.cell, out


# --------------------------------------------------------------------------------------------
# What runs inside a worker

class _CellJob:
    """One cell as shipped to a worker, with the experiment and tracking URI the driver uses
    (the URI is checked there: it names a store, which a worker cannot be told to switch)."""

    def __init__(self, cell, experiment: Optional[str], tracking_uri: str):
        self.cell, self.experiment, self.tracking_uri = cell, experiment, tracking_uri


_stores: dict[str, Any] = {}    # per worker process: data config -> loaded crops, reused across cells


def _run_cell_job(job: _CellJob):
    from benchmark.data import load_crops
    from benchmark.campaigns.suite import CellOutcome, run_cell
    from benchmark.core.tracking import load_settings
    c = job.cell
    try:
        settings = load_settings()
        if settings.tracking_uri != job.tracking_uri:
            raise BenchError(f"this worker tracks to {settings.tracking_uri} but the suite to {job.tracking_uri}: "
                             f"start the workers with LIDC_BENCH_TRACKING_URI={job.tracking_uri}")
        key = c.cfg.data.model_dump_json()
        if key not in _stores:
            _stores[key] = load_crops(c.cfg.data)
    except Exception as e:  # noqa: BLE001 - reported as the cell's failure, like run_cell's own
        msg = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        return CellOutcome("failed", c.label, msg.splitlines()[0] if msg else type(e).__name__)
    with _ClusterClaim(_claim_name(settings.tracking_uri, job.experiment or settings.experiment, c)) as claim:
        return run_cell(c, store=_stores[key], claim=claim, experiment=job.experiment,
                        is_dead=_ClusterLiveness().owner_is_dead)


def _claim_name(tracking_uri: str, experiment: str, c) -> str:
    """One lock per cell and store: what ``StoreView.held_elsewhere`` matches on (the budget
    fingerprint; a reference run's own fingerprint)."""
    from benchmark.run.reference_rows import reference_fingerprint
    what = f"ref:{c.arch}:{reference_fingerprint(c.cfg)}" if c.reference else c.cfg.budget_fingerprint()
    digest = hashlib.sha256(f"{tracking_uri}\0{experiment}\0{what}".encode()).hexdigest()[:20]
    return f"lidc-bench-claim-{digest}"


class _ClusterClaim:
    """The scheduler's lock for this cell, then this host's suite lock (the order is fixed, so
    no deadlock); ``release`` lets both go and may be called early and again."""

    def __init__(self, name: str):
        from distributed import Lock
        self._lock = Lock(name)
        self._host: Optional[HostLock] = None

    def __enter__(self) -> "_ClusterClaim":
        self._lock.acquire()
        try:
            self._host = HostLock(runs_dir() / "suite.lock").__enter__()
        except BaseException:
            self._lock.release()
            raise
        return self

    def release(self, *_args) -> None:
        if self._host is not None:
            self._host.release()
            self._host = None
            self._lock.release()

    def __exit__(self, *exc) -> None:
        self.release()


class _ClusterLiveness:
    """Judges a RUNNING run's owner from inside a worker (see the module docstring)."""

    def __init__(self):
        from distributed import get_client, get_worker
        self._worker = get_worker()
        self._client = get_client()
        self._workers: Optional[set] = None

    def owner_is_dead(self, tags: dict) -> Optional[bool]:
        return owner_is_dead_on_cluster(tags, owner_is_dead(tags), self._worker.scheduler.address,
                                        self._live_workers, self._pid_of)

    def _live_workers(self) -> set:
        if self._workers is None:                   # once per look at the store
            self._workers = set(self._client.scheduler_info(n_workers=-1).get("workers", {}))
        return self._workers

    def _pid_of(self, address: str) -> Optional[int]:
        try:
            return self._client.run(os.getpid, workers=[address]).get(address)
        except Exception:  # noqa: BLE001 - cannot tell
            return None


def owner_is_dead_on_cluster(tags: dict, dead_here: Optional[bool], our_scheduler: str,
                             live_workers: Callable[[], set], pid_of: Callable[[str], Optional[int]]
                             ) -> Optional[bool]:
    """The rule, apart from the calls that feed it. ``dead_here``: the host+pid verdict
    (``liveness.owner_is_dead``), decisive when the owner ran on this host. Otherwise a run owned
    by a worker of our scheduler is dead when the scheduler no longer lists that worker, or lists
    a different process at its address (a restarted worker on a fixed port). A worker of another
    scheduler, or a question that cannot be answered, counts as alive: never train a cell twice."""
    if dead_here is not None:
        return dead_here
    address, scheduler = tags.get("dask.worker"), tags.get("dask.scheduler")
    if not address:
        return None                                 # not a Dask worker's run: nothing to ask
    if scheduler != our_scheduler:
        return False
    if address not in live_workers():
        return True
    pid = pid_of(address)
    return pid is not None and str(pid) != tags.get("pid")
