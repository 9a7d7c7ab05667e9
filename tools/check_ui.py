"""Check in a headless browser that `bench ui` opens on the runs table with the headline metrics.

    python tools/check_ui.py                 # the project's store (runs/mlflow.db)
    LIDC_BENCH_HOME=/some/home python tools/check_ui.py

Starts `bench ui` on a free port, loads the address it prints in headless Chromium (Debian:
`apt-get install chromium`) in a 1600x1000 window, and checks that the rendered page is the
model-training runs table (not MLflow's GenAI pages) with the `test_dice`, `test_hd95_mm`, `arch`
and `loss` columns on its first screen and every finished run's name; it saves a screenshot of
that screen (CHECK_UI_SCREENSHOT, default /tmp/bench-ui.png).
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
#: the browser window checked: a laptop's, where every headline column must show without scrolling
WINDOW = "1600,1000"
SCREENSHOT = os.environ.get("CHECK_UI_SCREENSHOT", "/tmp/bench-ui.png")


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
        # the window a user has: the runs table renders only the columns that fit it (the grid
        # virtualises columns), so a column in this DOM is one visible on first load
        chrome = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  f"--window-size={WINDOW}", "--virtual-time-budget=15000", "--hide-scrollbars"]
        dom = subprocess.run(chrome + ["--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
        subprocess.run(chrome + [f"--screenshot={SCREENSHOT}", url], capture_output=True, timeout=300)
        print(f"screenshot of the first screen: {SCREENSHOT}")
        text = page_text(dom)
        checks = {
            "the model-training runs table (not the GenAI pages)": "Training runs" in text and "Run Name" in text,
            f"a test_dice column in a {WINDOW} window": "test_dice" in text,
            "the headline columns (test_hd95_mm, arch, loss)": all(w in text for w in ("test_hd95_mm", "arch", "loss")),
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
