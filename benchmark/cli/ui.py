"""``bench ui``: the MLflow UI on the project's store, at an address that is really its own.

* The port is checked by binding it first: when another server (another store's UI, anything)
  listens there, one line says so and a free port is used instead, so the address printed never
  shows someone else's store. Two ``bench ui`` on one machine each serve their own store.
* The address is printed once the server answers (``/health``), not before it starts.
* The server (``mlflow ui``: a uvicorn process and its workers) runs in a process
  group of its own. It stops with ``bench ui``: on Ctrl-C or SIGTERM ``bench ui`` stops the group
  itself; if ``bench ui`` is killed outright (SIGKILL, a crash), a small watchdog process, which
  only waits for ``bench ui`` to go, stops the group. ``prctl(PR_SET_PDEATHSIG)`` alone would not
  do: it reaches only the direct child, not the uvicorn processes that hold the port.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from benchmark.core.errors import UsageError

#: how long the server may take to answer before ``bench ui`` gives up (MLflow's first start
#: migrates the store and builds its app: tens of seconds on a busy machine)
START_TIMEOUT_S = 240.0


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``: bind it (SO_REUSEADDR, so connections that
    linger in TIME_WAIT after a server stopped do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def choose_port(host: str, wanted: int) -> int:
    """``wanted`` if nothing listens there, else a free port, said in one line."""
    if port_is_free(host, wanted):
        return wanted
    port = free_port(host)
    print(f"port {wanted} is taken by another server; serving this store on port {port} instead", file=sys.stderr)
    return port


def serve(host: str, port: int, workers: int) -> None:
    """Serve the configured store's UI until Ctrl-C/SIGTERM, or until the server exits."""
    from benchmark.core.tracking import client, experiment_id, load_settings, mark_training_experiment, runs_page_url
    s = load_settings()
    exp_id = None
    try:
        cl = client(s)
        exp_id = experiment_id(cl, s)
        mark_training_experiment(cl, exp_id)  # stores from before this version get the runs view too
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - the plain address still works
        pass
    port = choose_port(host, port)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", s.tracking_uri,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if s.artifact_location:
        cmd += ["--default-artifact-root", s.artifact_location]
    print(" ".join(cmd), file=sys.stderr)
    # MLflow 3's server also starts a job runner (a process and seven huey consumers, each
    # importing MLflow) for GenAI jobs this store never queues: without it the UI answers in
    # about half the time (perf/bench_ui_start.py). MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in
    # the environment brings it back.
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # its own session: a signal to `bench ui` reaches the server only through us, and we can
    # stop the server's whole group (uvicorn workers, any job runner) in one call
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    start_watchdog(proc.pid)
    try:
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base = f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"
        wait_until_serving(proc, base)
        url = runs_page_url(base, exp_id) if exp_id else base
        print(f"open {url}   (store {s.tracking_uri}; Ctrl-C stops the server)", file=sys.stderr, flush=True)
        code = proc.wait()
    except BaseException:  # Ctrl-C, SIGTERM (raised as Terminated by main), or no answer in time
        stop_process_group(proc)
        raise
    raise SystemExit(code)


def wait_until_serving(proc: subprocess.Popen, base: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Return once ``base``/health answers; a server that exits first, or never answers, is an error."""
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"the MLflow UI exited before serving (exit code {proc.returncode}; its output is above)")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200 and proc.poll() is None:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UsageError(f"the MLflow UI did not answer at {base} within {timeout_s:.0f} s")


def start_watchdog(server_pgid: int) -> subprocess.Popen:
    """A process that stops the server's group once this process is gone (see the module's docstring).
    Its own session, so a Ctrl-C to the terminal's group reaches ``bench ui`` (which stops the server
    itself) and not the watchdog."""
    code = f"from benchmark.cli.ui import watch; watch({os.getpid()}, {server_pgid})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def watch(parent_pid: int, server_pgid: int, poll_s: float = 0.5) -> None:
    """The watchdog's loop: while the server group lives, wait for ``parent_pid`` to go (this
    process is then re-parented), then stop the group."""
    while os.getppid() == parent_pid:
        if not _group_alive(server_pgid):
            return
        time.sleep(poll_s)
    _stop_group(server_pgid, lambda: not _group_alive(server_pgid))


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM a child's process group, SIGKILL what is left after ``grace_s``."""
    def gone() -> bool:
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            return False
        return not _group_alive(proc.pid)   # the leader is gone; are its workers too?
    _stop_group(proc.pid, gone, grace_s)


def _stop_group(pgid: int, gone, grace_s: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone():
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
