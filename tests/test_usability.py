"""Using the tools: what an alias runs, a logged model on any patch size, progress output in a log
file, `bench ui` on a taken port and after its parent dies."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest


# ------------------------------------------------------------------ --arch transfuse
def test_an_alias_says_which_variant_it_runs_in_the_output_the_tags_and_the_help(capsys):
    from benchmark.run.run_args import ALIAS_TAG, add_config_arguments, alias_tags, resolve_config
    args = argparse.Namespace(arch="transfuse", loss=None, preset="smoke", config=None, seed=None, overrides=[])
    cfg = resolve_config(args)
    assert cfg.model.arch == "transfuse_s"
    err = capsys.readouterr().err
    assert "note: --arch transfuse is an alias: running transfuse_s (not transfuse_l" in err
    assert alias_tags("transfuse") == {ALIAS_TAG: "transfuse"}
    assert alias_tags("transfuse_l") == {} and alias_tags(None) == {}
    resolve_config(argparse.Namespace(**{**vars(args), "arch": "transfuse_l"}))
    assert "alias" not in capsys.readouterr().err                  # a variant named directly: no note
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    assert "aliases: transfuse = transfuse_s" in " ".join(p.format_help().split())


@pytest.mark.slow  # runs `bench archs`, which builds every network (~8 s)
def test_bench_archs_names_what_each_alias_runs():
    from tests.conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "benchmark.cli.main", "archs", "--no-cost"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "--arch transfuse is an alias: running transfuse_s (not transfuse_l" in out.stderr


# ------------------------------------------------------------------ a logged model on other patch sizes
@pytest.mark.slow   # logs an MLflow model and loads it back through pyfunc (~40 s)
def test_a_logged_model_predicts_any_multiple_of_what_the_network_needs(bench_home):
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import get_model_info

    from architectures import create_architecture
    from benchmark.core.tracking import Tracker, log_pytorch_model
    net = create_architecture("unet3d", base_channels=4)          # three poolings: multiples of 8
    tracker = Tracker.start("signature", {"arch": "unet3d"})
    uri = log_pytorch_model(tracker, net, np.zeros((1, 1, 16, 32, 32), np.float32))
    tracker.finish("FINISHED")
    spec = get_model_info(uri).signature.inputs.inputs[0]
    assert spec.shape == (-1, 1, -1, -1, -1)
    model = mlflow.pyfunc.load_model(uri)
    for shape in ((1, 1, 16, 32, 32), (2, 1, 32, 64, 64)):
        out = model.predict(np.random.default_rng(0).random(shape, dtype=np.float32))
        assert np.asarray(out).shape == shape
    with pytest.raises(Exception, match=r"input size \(20, 32, 32\) \(z, y, x\) is not a multiple of \(8, 8, 8\)"):
        model.predict(np.zeros((1, 1, 20, 32, 32), np.float32))


# ------------------------------------------------------------------ progress in a log file
def test_progress_off_a_terminal_is_a_line_every_step_and_never_a_carriage_return():
    import io

    from benchmark.core.progress import LineProgress, progress_bar
    log = io.StringIO()                                 # not a terminal
    bar = progress_bar(range(40), desc="epoch 1/2", unit="batch", every_percent=25, file=log)
    assert isinstance(bar, LineProgress)
    for i in bar:
        bar.set_postfix(loss=f"{i:.1f}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 4            # 25, 50, 75 %, then the end
    assert lines[0].startswith("epoch 1/2: 25% 10/40 batch, ") and lines[-1].startswith("epoch 1/2: 100% 40/40 batch")
    assert lines[-1].endswith("loss=39.0")


@pytest.mark.slow   # trains the smoke preset for one epoch (~1 min)
def test_a_smoke_training_with_stderr_to_a_file_writes_no_carriage_return(bench_home, tmp_path):
    import os

    from tests.conftest import ROOT
    env = {**os.environ, "LIDC_BENCH_HOME": str(bench_home)}
    env.pop("LIDC_BENCH_TRACKING_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    err = tmp_path / "stderr.log"
    with open(err, "wb") as f:
        subprocess.run([sys.executable, "-m", "benchmark.cli.main", "run", "--arch", "unet3d", "--preset", "smoke",
                        "train.epochs=1", "model.kwargs.base_channels=4"], cwd=ROOT, env=env, stderr=f,
                       stdout=subprocess.DEVNULL, check=True)
    text = err.read_bytes().decode()
    assert "\r" not in text
    assert "unet3d [smoke]: 100% 1/1 epoch" in text and "epoch 1/1: 100%" in text


# ------------------------------------------------------------------ bench ui
def _home_with_store(base, template, name):
    import shutil
    home = base / name
    (home / "runs").mkdir(parents=True)
    shutil.copy(template, home / "runs" / "mlflow.db")
    return home


def _start_ui(home, port: int, experiment: str):
    import os
    import time

    from tests.conftest import ROOT
    env = {**os.environ, "LIDC_BENCH_HOME": str(home), "LIDC_BENCH_EXPERIMENT": experiment}
    env.pop("LIDC_BENCH_TRACKING_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    err = open(home / "ui.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli.main", "ui", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        text = (home / "ui.err").read_text()
        opened = [line for line in text.splitlines() if line.startswith("open ")]
        if opened:
            return proc, text, opened[0].split()[1]
        if proc.poll() is not None:
            pytest.fail("bench ui exited: " + text[-1500:])
        time.sleep(1)
    proc.kill()
    pytest.fail("bench ui printed no address in 240 s")


def _serves_experiment(url: str, name: str) -> bool:
    import urllib.error
    import urllib.parse
    import urllib.request
    base = url.split("/#", 1)[0]
    try:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                                    + urllib.parse.urlencode({"experiment_name": name}), timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


@pytest.mark.slow   # starts two MLflow servers (~1-2 min on two cores)
def test_two_uis_on_a_taken_port_each_serve_their_own_store_and_die_with_sigkill(tmp_path, migrated_store_template):
    import signal
    import socket
    import time

    from benchmark.cli.ui import port_is_free
    from tests.conftest import free_port
    from tests.test_models_ui import _alive, _descendants
    port = free_port()
    a = _home_with_store(tmp_path, migrated_store_template, "a")
    b = _home_with_store(tmp_path, migrated_store_template, "b")
    ui_a, _, url_a = _start_ui(a, port, "store-a")
    ui_b, err_b, url_b = _start_ui(b, port, "store-b")        # port is now store a's
    try:
        assert f":{port}/" in url_a and f":{port}/" not in url_b
        assert f"port {port} is taken by another server; serving this store on port" in err_b
        assert err_b.index("is taken") < err_b.index("open ")     # said before the address
        assert _serves_experiment(url_a, "store-a") and not _serves_experiment(url_a, "store-b")
        assert _serves_experiment(url_b, "store-b") and not _serves_experiment(url_b, "store-a")
        servers = _descendants(ui_a.pid) + _descendants(ui_b.pid)
        assert servers
    finally:
        for ui in (ui_a, ui_b):
            ui.send_signal(signal.SIGKILL)                          # no chance to clean up itself
            ui.wait(10)
    port_b = int(url_b.split("/#", 1)[0].rsplit(":", 1)[1])
    deadline = time.time() + 60
    while time.time() < deadline and (any(_alive(p) for p in servers)
                                      or not (port_is_free("127.0.0.1", port) and port_is_free("127.0.0.1", port_b))):
        time.sleep(1)
    assert not [p for p in servers if _alive(p)]
    for p in (port, port_b):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))                                # no listener left
