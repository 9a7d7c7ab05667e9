"""``bench protocol curves``: the learning curves that set a protocol's final schedule are
validation-only default-recipe runs, one per schedule length, summarised with convergence flags."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_curve_cells_are_validation_only_default_recipes_one_per_schedule_length():
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol.curves import curve_cells
    from benchmark.run.config import build_config
    lp = load_protocol(ROOT / "protocols" / "cpu-v7.yaml")
    cells = curve_cells(lp, ["unet3d", "transfuse"], [40, 20, 40], seeds=2)
    # lengths de-duplicated and sorted, the alias resolved, seeds 0 and 1
    assert [(c.cfg.train.epochs, c.arch, c.seed) for c in cells] == [
        (20, "unet3d", 0), (20, "transfuse_s", 0), (20, "unet3d", 1), (20, "transfuse_s", 1),
        (40, "unet3d", 0), (40, "transfuse_s", 0), (40, "unet3d", 1), (40, "transfuse_s", 1)]
    assert not any(c.evaluate_test for c in cells)
    assert {c.tags["protocol.part"] for c in cells} == {"curves"}
    assert [c.tags["curves.epochs"] for c in cells[::4]] == ["20", "40"]
    # the default recipe under the protocol's data budget: only the schedule length differs
    default = build_config("cpu", ["train.steps_per_epoch=null", "train.samples_per_epoch=160", "train.epochs=20"],
                           **{"model.arch": "unet3d", "loss.name": "dice_bce", "train.seed": 0})
    assert cells[0].cfg.fingerprint() == default.fingerprint()


def test_curve_cells_refuse_nonsense():
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol.curves import curve_cells
    from benchmark.core.errors import UsageError
    lp = load_protocol(ROOT / "protocols" / "smoke-v7.yaml")
    with pytest.raises(UsageError, match="--archs"):
        curve_cells(lp, [], [2], 1)
    with pytest.raises(UsageError, match="at least 2 epochs"):
        curve_cells(lp, ["unet3d"], [1], 1)
    with pytest.raises(UsageError, match="at least 2 epochs"):
        curve_cells(lp, ["unet3d"], [], 1)


def test_summary_flags_a_run_still_improving():
    from benchmark.campaigns.protocol.curves import CurveRun, summarize_curves
    flat = [(e, 0.5 if e > 2 else 0.1 * e) for e in range(1, 11)]
    rising = [(e, 0.05 * e) for e in range(1, 11)]
    runs = [CurveRun("unet3d", 10, 0, "a", flat, 20.0), CurveRun("unet3d", 10, 1, "b", rising, 30.0)]
    cell = summarize_curves(runs)["unet3d"]["10"]
    assert [r["still_improving"] for r in cell["runs"]] == [False, True]
    assert [r["best_epoch"] for r in cell["runs"]] == [3, 10]
    assert cell["mean_best_val_dice"] == 0.5 and cell["still_improving"] == 1
    assert [r["seconds_per_epoch"] for r in cell["runs"]] == [2.0, 3.0]


@pytest.mark.slow
def test_curves_run_summarise_and_rerun_trains_nothing(bench_home, tmp_path):
    from benchmark.core.tracking import client, load_settings, search_all_runs
    from benchmark.campaigns.protocol.curves import EXPERIMENT, run_curves, write_curves
    path = ROOT / "protocols" / "smoke-v7.yaml"
    res = run_curves(path, ["unet3d"], [2, 3], 1, show_progress=False)
    assert len(res.ran) == 2 and not res.failed
    cl = client(load_settings())
    runs = search_all_runs(cl, [cl.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 2 and not any(k.startswith("test_") for r in runs for k in r.data.metrics)
    out, png, table = write_curves(path, tmp_path / "curves.json")
    doc = json.loads(out.read_text())
    assert doc["protocol"]["name"] == "smoke" and set(doc["curves"]["unet3d"]) == {"2", "3"}
    assert [len(doc["curves"]["unet3d"][n]["runs"]) for n in ("2", "3")] == [1, 1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run_curves(path, ["unet3d"], [2, 3], 1, show_progress=False)
    assert not again.ran and len(again.skipped) == 2
