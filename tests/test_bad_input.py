"""The bad-input catalogue: every user-facing command with wrong names, out-of-range values,
malformed config files and paths that do not exist gets one line on stderr and a non-zero exit,
never a traceback. Runs the CLI in-process (subprocess variants live in test_engine.py)."""
import pytest

from benchmark.cli.main import main


@pytest.fixture()
def bad_files(tmp_path):
    (tmp_path / "broken.yaml").write_text("train: {epochs: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "unknown.yaml").write_text("preset: smoke\ntrain: {epochz: 3}\n")
    (tmp_path / "badvalue.yaml").write_text("preset: smoke\noptim: {lr: -1}\n")
    (tmp_path / "mlflow-broken.yaml").write_text("tracking_uri: [unclosed\n")
    return tmp_path


CASES = [
    # run
    (["run", "--arch", "transfus", "--preset", "smoke"], "did you mean"),
    (["run", "--arch", "unet3d", "--preset", "smoke", "model.kwargs.widht=3"], "unexpected keyword"),
    (["run", "--arch", "unet3d", "--preset", "smoke", "train.batch_size=0"], "train.batch_size"),
    (["run", "--arch", "unet3d", "--preset", "smoke", "data.spacing_mm=-2"], "data.spacing_mm"),
    (["run", "--arch", "unet3d", "--preset", "smoke", "optim.scheduler=linear"], "optim.scheduler"),
    (["run", "--config", "{d}/broken.yaml"], "not valid YAML"),
    (["run", "--config", "{d}/list.yaml"], "must hold a mapping"),
    (["run", "--config", "{d}/unknown.yaml", "--arch", "unet3d"], "train.epochz"),
    (["run", "--config", "{d}/badvalue.yaml", "--arch", "unet3d"], "optim.lr"),
    (["run", "--resume", "nosuchrun"], "cannot resume"),
    (["run", "--params-from", "nosuchstudy", "--preset", "smoke"], "no Optuna study"),
    # tune
    (["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--trials", "0"], "--trials"),
    (["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--workers", "0"], "--workers"),
    (["tune", "--arch", "unetx", "--preset", "smoke", "--study", "s"], "did you mean"),
    (["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--narrow", "optim.lr=5:1"], "LOW < HIGH"),
    (["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--fix", "optim.lr"], "NAME=VALUE"),
    (["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--storage", "{d}/broken.yaml/j.log"],
     "does not exist"),
    (["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "s", "--pruner", "sometimes"], "invalid choice"),
    (["tune", "--report", "nosuchstudy"], "no Optuna study"),
    (["tune", "--arch", "unet3d"], "needs --study"),
    # suite and leaderboard
    (["suite", "--preset", "smoke", "--archs", "unet3d", "nosucharch"], "unknown architecture"),
    (["suite", "--preset", "smoke", "--seeds", "0"], "--seeds"),
    (["suite", "--preset", "laptop"], "unknown preset"),
    (["leaderboard", "--preset", "smoke"], "no MLflow experiment 'lidc-bench'"),
    (["leaderboard", "--ranking", "best"], "invalid choice"),
    # search
    (["search", "bixnaz"], "did you mean bixnas"),
    (["search", "bixnas", "--trials", "0", "--preset", "smoke"], "must be >= 1"),
    (["search", "bixnas", "--preset", "laptop"], "unknown preset"),
    (["search", "bixnas", "--choose", "--study", "nosuch"], "no search study"),
    (["search", "dints", "--preset", "smoke", "--out", "{d}/t.json", "--ram-target", "0"], "--ram-target"),
    (["nas", "random", "resnet"], "unknown search space"),
    (["nas", "train-control", "dints", "--sample", "../x"], "--sample must be"),
    (["nas", "bixnas-rank", "--record", "{d}/nosuch.json"], "does not exist"),
    (["nas", "bixnas-evolve", "--preset", "smoke"], "give --out"),
    # data
    (["data", "build", "--spacing", "-1"], "spacing"),
    (["data", "build", "--gt", "vote"], "invalid choice"),
    (["data", "build", "--source", "ct"], "invalid choice"),
    (["data", "montage", "--out", "{d}/broken.yaml/montage.png", "--n", "2"], "is not a folder"),
    # other commands
    (["baseline", "--preset", "laptop"], "unknown preset"),
    (["sync", "/nonexistent/run.jsonl"], "no offline buffer"),
    (["archs", "--preset", "laptop", "--no-cost"], "unknown preset"),
    (["nosuchcommand"], "invalid choice"),
]


@pytest.mark.slow
@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_one_line_error(argv, needle, bench_home, bad_files, capsys):
    argv = [a.replace("{d}", str(bad_files)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.strip() and "it/s]" not in line and "%|" not in line]
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("error:") and needle.lower() in err[0].lower(), err[0]


def test_malformed_mlflow_yaml(bench_home, bad_files, capsys, monkeypatch):
    monkeypatch.setenv("LIDC_BENCH_MLFLOW_YAML", str(bad_files / "mlflow-broken.yaml"))
    code = main(["run", "--arch", "unet3d", "--preset", "smoke", "train.epochs=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert code != 0 and len(err) == 1 and "not valid YAML" in err[0]


def test_dicom_source_without_dicom_folder(bench_home, tmp_path, capsys, monkeypatch):
    rc = tmp_path / "pylidcrc"
    rc.write_text(f"[dicom]\npath = {tmp_path / 'no-such-lidc'}\nwarn = True\n")
    monkeypatch.setenv("LIDC_BENCH_PYLIDCRC", str(rc))
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "cache"))
    code = main(["data", "build", "--source", "dicom", "--subset", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%" not in line]
    assert code != 0 and len(err) == 1 and "no-such-lidc" in err[0]
