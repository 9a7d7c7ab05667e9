"""The GPU campaign (perf/gpu_campaign.py, perf/gpu_pack.py; issue 38), rehearsed on the CPU.

The device it is written for cannot be reached from CI: the planning rules, the peak table and the
packing are tested directly, and the whole command is rehearsed at the smoke preset (slow).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "perf"))

import gpu_campaign as GC  # noqa: E402
import gpu_pack as GP  # noqa: E402


def test_a_run_that_fits_runs_in_full():
    assert GC.plan_epochs(100, 2.0, 60.0, 400.0, 10) == (100, "fits")


def test_a_run_that_does_not_fit_is_shortened_to_the_epochs_that_do():
    epochs, why = GC.plan_epochs(100, 2.0, 60.0, 200.0, 10)
    assert epochs == 70 and why.startswith("shortened")


def test_a_run_below_the_minimum_epochs_is_not_started():
    epochs, why = GC.plan_epochs(100, 20.0, 60.0, 200.0, 10)
    assert epochs == 0 and "needs 10 epochs" in why


def test_the_minimum_never_exceeds_the_presets_epochs():
    # the smoke preset trains 2 epochs: a minimum of 10 must not forbid it
    assert GC.plan_epochs(2, 5.0, 10.0, 21.0, 10)[0] == 2
    assert GC.plan_epochs(2, 5.0, 10.0, 16.0, 1)[0] == 1
    assert GC.plan_epochs(2, 5.0, 10.0, 14.0, 10)[0] == 0


def test_peak_rates_by_device_name():
    assert GC.peak_tflops("NVIDIA H100 80GB HBM3", amp=True) == pytest.approx(989.5)
    assert GC.peak_tflops("NVIDIA H100 PCIe", amp=True) == pytest.approx(756.5)
    assert GC.peak_tflops("NVIDIA H200", amp=False) == pytest.approx(66.9)
    assert GC.peak_tflops("NVIDIA A100-SXM4-80GB", amp=True) is None


def test_unknown_architectures_and_bad_limits_are_refused(capsys):
    for argv in (["--out", "x", "--limit-s", "10", "--archs", "unet3d,nope"], ["--out", "x", "--limit-s", "0"]):
        with pytest.raises(SystemExit) as e:
            GC.parse_args(argv)
        assert e.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_install_unpacks_each_carried_archive_once(tmp_path):
    site = tmp_path / "payload"
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "__init__.py").write_text("VALUE = 7\n")
    archive = tmp_path / GP.DEPS_DIR / GP.ARCHIVE
    archive.parent.mkdir()
    subprocess.run(["tar", "-C", str(site), "-cJf", str(archive), "."], check=True)
    assert GP.install(tmp_path) == [GP.DEPS_DIR]
    assert (tmp_path / GP.SITE_DIR / "fakepkg" / "__init__.py").read_text() == "VALUE = 7\n"
    assert GP.install(tmp_path) == []          # a warm machine's second call: already there


@pytest.mark.slow
def test_smoke_campaign_on_the_cpu_writes_the_summary_and_a_readable_export(tmp_path):
    # The limit is an upper bound the campaign stops at, not a duration: on idle cores this ends in
    # about a minute and a half, well inside 120 s; the margin is for loaded CI machines (at load
    # 10-20 on two cores a smoke step took 5 s here, and nothing fit in 120 s, as planned).
    out, back = tmp_path / "gc", tmp_path / "back"
    # the smoke crops first (shared with the other tests' cache): the limit is for the check and the runs
    subprocess.run([sys.executable, "-c", "from benchmark.run.config import build_config; "
                    "from benchmark.data import load_crops; load_crops(build_config('smoke').data, progress=False)"],
                   cwd=ROOT, check=True, timeout=600)
    proc = subprocess.run([sys.executable, str(ROOT / "perf" / "gpu_campaign.py"), "--preset", "smoke", "--out",
                           str(out), "--limit-s", "900", "--bring-back", str(back), "--archs", "unet3d,nnunet_plain"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / GC.SUMMARY).read_text())
    assert set(summary) >= {"campaign", "device", "build", "architectures", "runs", "skipped", "export"}
    assert summary["device"]["name"] == "cpu" and summary["device"]["git_commit"] != "unknown"
    assert summary["build"]["nodules"] == 26
    unet = summary["architectures"]["unet3d"]
    assert unet["checked"] and unet["flops_per_step"] == 6 * unet["macs_per_patch"] * unet["batch"]
    assert set(unet["step_ms"]) == {"suite, loader workers", "suite, on_device", "bare loop, device-resident data"}
    finished = [r for r in summary["runs"] if r["status"] == "FINISHED"]
    assert finished and finished[0]["arch"] == "unet3d"
    run = finished[0]
    assert run["epochs"] == 2 and run["run_id"] and run["test_dice"] is not None and run["s_per_epoch"] > 0
    # every architecture is accounted for: run, or not started with a reason
    assert {r["arch"] for r in summary["runs"]} | {s["arch"] for s in summary["skipped"]} == {"unet3d", "nnunet_plain"}
    # the export: the tarball holds it, the device's $OUT got both files, and the leaderboard reads it
    with tarfile.open(out / GC.TARBALL) as tar:
        assert f"{GC.EXPORT}/manifest.json" in tar.getnames()
    assert (back / GC.SUMMARY).is_file() and (back / GC.TARBALL).is_file()
    board = subprocess.run([sys.executable, "-m", "benchmark.cli.main", "leaderboard", "--from", str(out / GC.EXPORT),
                            "--out", str(tmp_path / "board"), "--no-log"], capture_output=True, text=True, cwd=ROOT,
                           timeout=600)
    assert board.returncode == 0, board.stderr[-2000:]
    assert "unet3d" in board.stdout


def test_a_recorded_commit_becomes_the_runs_commit_tags_only_without_git():
    assert GC.commit_tags("abc123", from_git=True) == {}
    assert GC.commit_tags("unknown", from_git=False) == {}
    tags = GC.commit_tags("abc123+dirty", from_git=False)
    assert tags == {"git.commit": "abc123", "git.dirty": "True", "mlflow.source.git.commit": "abc123"}
