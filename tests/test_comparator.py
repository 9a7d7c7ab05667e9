"""A page's comparator is what the runs' protocol declared, read from the runs, never imported."""
from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from benchmark.core.errors import UsageError
from benchmark.results.leaderboard.collect import COMPARATOR_TAG, RunRecord, declared_comparator


def _run(arch: str, **tags) -> RunRecord:
    return RunRecord(run_id=f"{arch:0<32}"[:32], tags={"arch": arch, "loss": "dice_bce", **tags}, metrics={},
                     config={}, end_time=0, per_nodule=pd.DataFrame({"nodule_id": ["a"], "dice": [0.5]}))


def test_the_tag_names_the_comparator():
    runs = [_run("mctrans", **{COMPARATOR_TAG: "transfuse_l"}), _run("unet3d", **{COMPARATOR_TAG: "transfuse_l"})]
    assert declared_comparator(runs) == "transfuse_l"


def test_runs_of_no_protocol_declare_none():
    assert declared_comparator([_run("unet3d"), _run("mctrans")]) == ""


def test_untagged_protocol_runs_read_the_frozen_file_with_their_sha(tmp_path):
    text = b"name: cpu\nversion: 6\nreference_arch: bionet\n"
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "cpu-v6.yaml").write_bytes(text)
    (tmp_path / "cpu.yaml").write_bytes(b"name: cpu\nversion: 7\nreference_arch: unet3d\n")
    sha = hashlib.sha256(text).hexdigest()[:12]
    runs = [_run("unet3d", **{"protocol.name": "cpu", "protocol.sha": sha})]
    assert declared_comparator(runs, protocols_dir=tmp_path) == "bionet"
    # a sha that no committed file has: no declared comparator (the page then has no such column)
    stale = [_run("unet3d", **{"protocol.name": "cpu", "protocol.sha": "0" * 12})]
    assert declared_comparator(stale, protocols_dir=tmp_path) == ""


def test_reference_rows_do_not_vote_and_two_comparators_are_refused():
    ref = _run("threshold_baseline", **{COMPARATOR_TAG: "other"})
    assert declared_comparator([ref, _run("unet3d", **{COMPARATOR_TAG: "unet3d"})]) == "unet3d"
    with pytest.raises(UsageError, match="different comparators"):
        declared_comparator([_run("a", **{COMPARATOR_TAG: "unet3d"}), _run("b", **{COMPARATOR_TAG: "mctrans"})])


@pytest.mark.slow
def test_the_committed_v6_page_names_unet3d_from_its_runs():
    from pathlib import Path

    from benchmark.results.leaderboard.collect import records_from_export
    root = Path(__file__).resolve().parent.parent
    records, _ = records_from_export(root / "leaderboards/lidc-phantom-cpu.runs")
    assert declared_comparator(records) == "unet3d"
