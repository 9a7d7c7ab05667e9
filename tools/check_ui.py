"""Check in a headless browser that `bench ui` opens on the runs table with the headline metrics.

    python tools/check_ui.py                 # the project's store (runs/mlflow.db)
    LIDC_BENCH_HOME=/some/home python tools/check_ui.py

Starts `bench ui` on a free port, loads the address it prints in headless Chromium (Debian:
`apt-get install chromium`), and checks that the rendered page is the model-training runs
table (not MLflow's GenAI pages) with a `test_dice` column and every finished run's name.
The MLflow UI is a JavaScript app: only a real browser shows what a user sees. Stops the UI
with SIGTERM afterwards and checks its processes are gone. Exit code 0 when all checks pass.
Not part of the test suite (it needs a browser and ~2 minutes).
"""
from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def main() -> int:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        print("no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from benchmark.core.tracking import client, experiment_id, load_settings
    settings = load_settings()
    cl = client(settings)
    exp = experiment_id(cl, settings)
    finished = [r.info.run_name for r in cl.search_runs([exp], "attributes.status = 'FINISHED'", max_results=5)]
    if not finished:
        print(f"no finished run in {settings.tracking_uri}: run `bench run --preset smoke --arch unet3d` first",
              file=sys.stderr)
        return 2

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "benchmark.cli.main", "ui", "--port", str(port)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 240
        while time.time() < deadline and url is None:
            line = ui.stderr.readline()
            if not line and ui.poll() is not None:
                print("bench ui exited early", file=sys.stderr)
                return 1
            if line.startswith("open "):
                url = line.split()[1]
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except Exception:
                time.sleep(1)
        print(f"loading {url}", flush=True)
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--window-size=3200,1400", "--dump-dom",
                              "--virtual-time-budget=15000", url], capture_output=True, text=True,
                             timeout=300).stdout
        text = page_text(dom)
        checks = {
            "the model-training runs table (not the GenAI pages)": "Training runs" in text and "Run Name" in text,
            "a test_dice column": "test_dice" in text,
            "the headline columns (test_hd95_mm, best_val_dice, arch)": all(
                w in text for w in ("test_hd95_mm", "best_val_dice", "arch")),
            **{f"run {name}": name in text for name in finished},
        }
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(60)
    ok = True
    for what, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {what}")
        ok &= passed
    if not ok:
        print(f"page text: {text[:1500]}", file=sys.stderr)
    with socket.socket() as s:
        # SO_REUSEADDR: the browser's closed connections linger in TIME_WAIT; only a listener matters
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            print("ok   port freed after SIGTERM")
        except OSError:
            print("FAIL port still in use after SIGTERM")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
