"""`bench data ...`: commands run, and user errors end as one line with the data exit code."""
from __future__ import annotations

import pytest

from benchmark.cli.main import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(tmp_path / "crops"))
    monkeypatch.setenv("LIDC_BENCH_PYLIDCRC", str(tmp_path / "pylidcrc"))
    return tmp_path


def test_split_check_and_info(env, capsys):
    assert main(["data", "split", "--check"]) == 0
    out = capsys.readouterr().out
    assert "patient-disjoint" in out and "train  388 patients  627 nodules" in out
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "897 nodules in 554 patients" in out and "DICOM folder: not configured" in out


@pytest.mark.slow
def test_build_subset_and_montage(env, capsys):
    assert main(["data", "build", "--preset", "smoke", "--subset", "3", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 mm" in out and "'train': 2" in out
    png = env / "m.png"
    assert main(["data", "montage", "--preset", "smoke", "--n", "2", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_errors_are_one_line(env, capsys):
    assert main(["data", "build", "--source", "dicom", "--preset", "smoke", "--subset", "1"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no DICOM folder configured" in err and "pylidcrc" in err
    assert main(["data", "build", "--spacing", "0"]) == 2
    assert main(["data", "index", "--check"]) == 2
    assert "--rebuild --check" in capsys.readouterr().err
