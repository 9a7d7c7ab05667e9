"""Using a trained model and the registry commands: lazy registration, `bench archs`/`losses`,
MLflow models and tags, the quiet console, `bench ui` process handling."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest


# ------------------------------------------------------------------ lazy registration
def test_importing_the_registry_imports_no_model_library():
    code = ("import sys, architectures as a; names = a.list_architectures(); "
            "meta = [a.architecture_entry(n).paper for n in names]; "
            "print(len(names), sorted(m for m in ('monai', 'timm', 'segmentation_models_pytorch_3d', "
            "'dynamic_network_architectures') if m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('architectures.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    n, libraries_and_modules = out.split(" ", 1)
    assert int(n) >= 13 and libraries_and_modules == "[] []", out   # every name, its metadata, no model code


@pytest.mark.slow  # imports every model library (MONAI, timm, ...)
def test_every_declared_entry_is_what_its_module_registers():
    import architectures
    from architectures import ARCHITECTURES, architecture_modules
    declared = {n: ARCHITECTURES.entry(n).module for n in ARCHITECTURES.names()}
    for module in architecture_modules():
        importlib.import_module(module)
    for name, module in declared.items():
        entry = ARCHITECTURES.entry(name)
        assert entry.loaded and entry.factory.__module__ == module, name
        assert entry.factory.__name__ == name, name
    # a declared name is registered once, by its own module only
    with pytest.raises(ValueError, match="registered twice"):
        architectures.register_architecture("unet3d")(lambda **kw: None)
    from benchmark.core.registry import Registry
    r = Registry("thing")
    r.declare("b", "some.other.module")
    with pytest.raises(ValueError, match="is declared in some.other.module, registered from"):
        r.register("b")(lambda: 1)
    # and a declared entry refuses metadata from its decorator (one place defines it)
    r.declare("a", __name__, family="F")
    with pytest.raises(ValueError, match="declared with its metadata"):
        r.register("a", family="G")(lambda: 1)


@pytest.mark.slow  # imports timm
def test_lazy_entry_imports_its_module_on_first_use():
    code = ("import sys; from architectures import architecture_entry as e; "
            "a = e('transfuse'); print(a.name, 'timm' in sys.modules); a.search_space; print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["transfuse_s", "False", "True"]


# ------------------------------------------------------------------ registry commands
def test_archs_reports_the_size_the_preset_builds(bench_home):
    """`bench archs --preset cpu` counts the cpu run's model (preset_kwargs applied), not the paper's."""
    from benchmark.run.archs_table import format_table, registry_rows
    from benchmark.run.config import build_config
    from benchmark.run.cost import count_parameters
    from benchmark.run.train import build_model
    _, rows = registry_rows("cpu", pattern="unet3d")
    run_params = count_parameters(build_model(build_config("cpu", **{"model.arch": "unet3d"})))
    assert rows[0]["params_M"] == pytest.approx(run_params / 1e6)
    assert run_params < 1_000_000          # the cpu width (813 k), not the paper's 5.77 M
    assert "cpu_ms" not in rows[0]         # latency only with --latency
    lines = format_table(rows)
    assert lines[0].split()[:4] == ["name", "aliases", "family", "params(M)"]
    assert lines[1].startswith("unet3d") and f"{run_params / 1e6:.3f}" in lines[1]


def test_archs_sizes_come_from_the_cache_until_what_they_depend_on_changes(bench_home, monkeypatch):
    """The second `bench archs` builds no model (that is what keeps it under 10 s); a change in
    the preset's kwargs (or the code, or a library version: the same key) measures again."""
    from benchmark.run import archs_table
    _, first = archs_table.registry_rows("smoke", pattern="unet3d")
    cached = json.loads(archs_table.sizes_cache_path("smoke").read_text())
    assert len(cached) == 1 and list(cached.values())[0]["params_M"] == first[0]["params_M"]

    def no_build(*a, **k):
        raise AssertionError("a cached size was measured again")
    measure = archs_table._measure
    from architectures import ARCHITECTURES
    original = dict(ARCHITECTURES.entry("unet3d").meta["preset_kwargs"]["smoke"])
    monkeypatch.setattr(archs_table, "_measure", no_build)
    _, again = archs_table.registry_rows("smoke", pattern="unet3d")
    assert again == first
    sized = ARCHITECTURES.entry("unet3d").meta["preset_kwargs"]
    monkeypatch.setitem(sized, "smoke", {**sized["smoke"], "base_channels": 4})
    with pytest.raises(AssertionError, match="measured again"):
        archs_table.registry_rows("smoke", pattern="unet3d")
    monkeypatch.setattr(archs_table, "_measure", measure)
    monkeypatch.setitem(sized, "smoke", original)
    archs_table.sizes_cache_path("smoke").write_text("{not json")   # a broken cache is measured again
    _, rebuilt = archs_table.registry_rows("smoke", pattern="unet3d")
    assert rebuilt == first


def test_losses_table_has_a_header_and_aligned_columns(capsys):
    from benchmark.cli.main import cmd_losses
    cmd_losses(None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "aliases", "family", "paper"]
    # every row's family starts where the header's does
    col = lines[0].index("family")
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[1:])


def test_every_option_documents_its_default():
    from benchmark.cli.main import build_parser
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["ui"].format_help().split())
    assert "(default: 127.0.0.1)" in text and "(default: 5000)" in text


@pytest.mark.slow  # a fresh interpreter importing mlflow
def test_mlflow_info_lines_are_silenced():
    """`import mlflow` resets its logger to MLFLOW_LOGGING_LEVEL; the CLI sets that first."""
    code = ("import logging; from benchmark.core.tracking import quiet_mlflow_logging; quiet_mlflow_logging(); "
            "import mlflow; print(logging.getLogger('mlflow').getEffectiveLevel())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(__import__("logging").WARNING)


# ------------------------------------------------------------------ a finished run as a model
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One finished smoke run in its own store (module-scoped: the tests below share it)."""
    import os
    home = tmp_path_factory.mktemp("models-home")
    saved = {k: os.environ.get(k) for k in ("LIDC_BENCH_HOME", "LIDC_BENCH_TRACKING_URI", "MLFLOW_TRACKING_URI")}
    os.environ["LIDC_BENCH_HOME"] = str(home)
    os.environ.pop("LIDC_BENCH_TRACKING_URI", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from benchmark.run.config import build_config
    from benchmark.run.train import run_experiment
    cfg = build_config("smoke", ["train.epochs=1", "model.kwargs.base_channels=4"], **{"model.arch": "unet3d"})
    result = run_experiment(cfg, show_progress=False)
    yield {"home": home, "run_id": result.run_id, "cfg": cfg, "result": result}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_logged_mlflow_model_reproduces_the_run(smoke_run):
    import mlflow.pytorch
    import numpy as np
    import pandas as pd
    import torch
    from benchmark.data import load_crops
    from benchmark.run.evaluate import predict_center, score
    from benchmark.core.paths import checkpoints_dir
    from benchmark.core.tracking import client
    from benchmark.run.train import build_model
    run_id, cfg = smoke_run["run_id"], smoke_run["cfg"]
    uri = client().get_run(run_id).data.tags["model_uri"]
    loaded = mlflow.pytorch.load_model(uri, map_location="cpu")
    # same logits as the run's own best checkpoint (read weights_only; a finished run keeps it as
    # the artifact checkpoints/best.pt, its local copy is cleaned up)
    from benchmark.run.predict import _download_checkpoint
    reference = build_model(cfg)
    reference.load_state_dict(torch.load(_download_checkpoint(run_id), weights_only=True)["model"])
    store = load_crops(cfg.data, progress=False)
    rows = store.indices("test")
    preds, _, gts = predict_center(loaded, store, rows, cfg, "cpu")
    ref_preds, _, _ = predict_center(reference.eval(), store, rows, cfg, "cpu")
    assert np.array_equal(preds, ref_preds)
    # and the same per-nodule Dice as the run's evaluation
    logged = pd.read_csv(checkpoints_dir(run_id) / "per_nodule.csv")
    again = score(preds, gts, store, rows, cfg)
    assert np.allclose(again["dice"].fillna(-1), logged["dice"].fillna(-1))
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.metadata["spacing_mm"] == cfg.data.spacing_mm
    # filed with its run, in the project's store: not in experiment 0 under ./mlruns of the cwd
    model = client().get_logged_model(uri.rsplit("/", 1)[1])
    run = client().get_run(run_id)
    assert model.experiment_id == run.info.experiment_id
    # linked both ways, as MLflow's log_model(run_id=...) links them: the model names its run and
    # carries the run's step-0 metrics; the run lists the model among its outputs
    assert model.source_run_id == run_id and str(model.status).endswith("READY")
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    on_model = {m.key: m.value for m in model.metrics}
    assert on_model["test_dice"] == run.data.metrics["test_dice"] and "train_loss" not in on_model
    assert model.params == run.data.params and "mlflow.user" in model.tags
    assert str(smoke_run["home"]) in model.artifact_location, model.artifact_location


@pytest.mark.slow
def test_run_carries_source_tags_split_inputs_and_a_training_experiment(smoke_run):
    from benchmark.core.tracking import EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND, client
    cl = client()
    run = cl.get_run(smoke_run["run_id"])
    tags = run.data.tags
    for key in ("mlflow.source.git.commit", "mlflow.source.name", "mlflow.user"):
        assert tags.get(key), key
    contexts = {next(t.value for t in d.tags if t.key == "mlflow.data.context") for d in run.inputs.dataset_inputs}
    assert contexts == {"train", "val", "test"}
    assert all(d.dataset.name.endswith("@" + tags["data.split_hash"][:8]) for d in run.inputs.dataset_inputs)
    exp = cl.get_experiment(run.info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    assert "test_dice" in run.data.metrics


@pytest.mark.slow
def test_register_puts_the_run_in_the_model_registry(smoke_run):
    from benchmark.core.errors import UsageError
    from benchmark.core.tracking import client, register_model
    v = register_model(smoke_run["run_id"], "lidc-smoke-test", "| unet3d | dice_bce | 0.000 |")
    got = client().get_model_version("lidc-smoke-test", v.version)
    assert got.run_id == smoke_run["run_id"] and got.description == "| unet3d | dice_bce | 0.000 |"
    with pytest.raises(UsageError, match="not a run id"):
        register_model("../x", "lidc-smoke-test")


@pytest.mark.slow
def test_predict_split_cli_writes_viewer_files(smoke_run, tmp_path):
    from tests.conftest import run_cli
    r = run_cli("predict", "--run", smoke_run["run_id"], "--split", "test", "--out", str(tmp_path),
                env={"LIDC_BENCH_HOME": str(smoke_run["home"])})
    assert r.returncode == 0, r.stderr
    assert "INFO" not in r.stderr and "Traceback" not in r.stderr
    n = len(list(tmp_path.glob("*_pred.nii.gz")))
    assert n == 6 and len(list(tmp_path.glob("*_image.nii.gz"))) == n == len(list(tmp_path.glob("*_gt.nii.gz")))


# ------------------------------------------------------------------ bench ui
@pytest.mark.slow
def test_bench_ui_leaves_nothing_behind_after_sigterm(tmp_path):
    import os
    import signal
    import socket
    import time
    import urllib.request
    from tests.conftest import ROOT, free_port
    port = free_port()
    env = {**os.environ, "LIDC_BENCH_HOME": str(tmp_path)}
    env.pop("LIDC_BENCH_TRACKING_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None)
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli.main", "ui", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("bench ui did not serve in 240 s: " + proc.stderr.read()[-1000:])
    server_pids = _descendants(proc.pid)
    assert server_pids, "the UI runs in child processes"
    # without MLflow's GenAI job runner (seven processes importing MLflow, for jobs no run queues)
    commands = [_cmdline(p) for p in server_pids]
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    time.sleep(1)
    alive = [p for p in server_pids if _alive(p)]
    assert not alive, f"left running: {alive}"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))          # the port is free again


def _cmdline(pid: int) -> str:
    from pathlib import Path
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    from pathlib import Path
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_predict_cli_on_a_ct_writes_a_label_map_in_the_scan_frame(smoke_run, tmp_path):
    import SimpleITK as sitk
    from tests.conftest import run_cli
    from tests.test_predict import _direction, make_ct
    ct, centres, _ = make_ct(direction=_direction(30.0))
    sitk.WriteImage(ct, str(tmp_path / "scan.nii.gz"))
    at = ",".join(f"{v:.3f}" for v in centres[0])
    r = run_cli("predict", "--run", smoke_run["run_id"], "--ct", str(tmp_path / "scan.nii.gz"), "--at", at,
                "--out", str(tmp_path / "pred"), env={"LIDC_BENCH_HOME": str(smoke_run["home"])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("label 1")
    out = sitk.ReadImage(str(tmp_path / "pred" / "scan_pred.nii.gz"))
    assert out.GetSize() == ct.GetSize()
    assert all(abs(a - b) < 1e-4 for a, b in zip(out.GetOrigin() + out.GetDirection(),
                                                  ct.GetOrigin() + ct.GetDirection()))
