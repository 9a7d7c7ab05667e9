"""`bench ui` start-up: seconds until it prints its address, and the processes it runs, with
MLflow's server job runner off (what `bench ui` does) against on (MLflow's default).

Each round starts `bench ui` on a private store (a copy of an empty migrated one) twice, once
per setting, alternating which goes first, waits for the ``open http://...`` line, counts the
processes in the server's group, CPU seconds included, and stops it. The settings compared and
the machine are printed above the table.

    python perf/bench_ui_start.py [--reps 3]
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SETTINGS = {"job runner off (bench ui)": "false", "job runner on (MLflow default)": "true"}


def _group_cpu_and_count(pgid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and number of the live processes in a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, n = 0.0, 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:           # field 5 of stat: the process group
            cpu += (int(fields[11]) + int(fields[12])) / tick
            n += 1
    return cpu, n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(home: Path, jobs: str, port: int) -> dict:
    env = dict(os.environ, LIDC_BENCH_HOME=str(home), MLFLOW_SERVER_ENABLE_JOB_EXECUTION=jobs,
               OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli.main", "ui", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for line in proc.stderr:
            if line.startswith("open http"):
                break
        else:
            raise RuntimeError("bench ui exited before serving")
        seconds = time.perf_counter() - t0
        time.sleep(2)                       # let the job runner's consumers finish starting
        server_pgid = None
        # the server runs in a group of its own (benchmark/cli/ui.py); find it through /proc
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if f"--port {port}" in cmd and "mlflow" in cmd:
                    server_pgid = os.getpgid(int(d.name))
        cpu, count = _group_cpu_and_count(server_pgid) if server_pgid else (float("nan"), 0)
        return {"seconds": seconds, "server_cpu_s": cpu, "processes": count}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    p = C.parser(__doc__.split("\n")[0], presets=("smoke",))
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    reps = args.reps or 3
    import mlflow
    from benchmark.core.tracking import create_or_migrate_sqlite
    template = args.work_dir / f"ui-template-{mlflow.__version__}.db"
    if not template.exists():
        create_or_migrate_sqlite(f"sqlite:///{template}")
    print(f"machine: {C.machine()}")
    print("compared: `bench ui` on an empty migrated SQLite store, MLFLOW_SERVER_ENABLE_JOB_EXECUTION "
          f"false vs true, {reps} rounds alternating; seconds until the address is printed")
    results = {name: [] for name in SETTINGS}
    for r in range(reps):
        order = list(SETTINGS) if r % 2 == 0 else list(SETTINGS)[::-1]
        for name in order:
            home = args.work_dir / f"ui-home-{r}-{SETTINGS[name]}"
            shutil.rmtree(home, ignore_errors=True)
            (home / "runs").mkdir(parents=True)
            shutil.copy(template, home / "runs" / "mlflow.db")
            results[name].append(start_once(home, SETTINGS[name], free_port()))
            print(f"  round {r + 1}/{reps} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    rows = [{"setting": name, "seconds to address (median)": C.med([x["seconds"] for x in xs]),
             "spread": C.spread([x["seconds"] for x in xs]),
             "server CPU s": C.med([x["server_cpu_s"] for x in xs]),
             "server processes": int(C.med([x["processes"] for x in xs]))} for name, xs in results.items()]
    print(C.table(rows, list(rows[0]), "bench ui start-up"))


if __name__ == "__main__":
    main()
