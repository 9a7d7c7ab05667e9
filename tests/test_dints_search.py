"""`bench search dints`: MONAI's DiNTS search on train/val, decoded and rebuilt; the two registered DiNTS."""
import json

import numpy as np
import pytest
import torch


def test_dints_without_a_committed_search_is_the_fixed_topology():
    from architectures import architecture_entry
    from architectures.dints import FIXED_TOPOLOGY, GENOTYPE_PATH, default_topology
    assert architecture_entry("dints_fixed").family == "NAS"
    if GENOTYPE_PATH.exists():  # a real search was committed: it must say where it came from
        meta = json.loads(GENOTYPE_PATH.read_text())["meta"]
        assert meta["source"] == "bench search dints" and meta["preset"] in ("cpu", "paper") and meta["mlflow_run_id"]
        assert default_topology()["arch_code_a"] == json.loads(GENOTYPE_PATH.read_text())["arch_code_a"]
    else:
        assert default_topology() is FIXED_TOPOLOGY


def test_building_dints_prints_no_patch_size_advice(capsys):
    """MONAI's topology constructor prints "Length of input patch is recommended to be a multiple
    of 16" on every build; the network pads its inputs to that multiple, so the advice is dropped,
    and only that line: anything else the constructor prints still shows."""
    from architectures.dints import build_topology, dints_model

    class Chatty:
        def __init__(self, **kwargs):
            print("2026-01-01 - Length of input patch is recommended to be a multiple of 16.")
            print("something else")
    dints_model()
    assert build_topology(Chatty).__class__ is Chatty
    out = capsys.readouterr()
    assert "recommended to be a multiple" not in out.out + out.err and out.out == "something else\n"


def test_smoke_dints_search_needs_an_explicit_out(bench_home):
    from conftest import run_cli
    r = run_cli("search", "dints", "--preset", "smoke", env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_dints_search_trains_alphas_decodes_rebuilds_and_resumes(bench_home, monkeypatch):
    """A search (1 warm-up + 2 search epochs) on train/val only, decoded and rebuilt; the same
    search stopped after its first epoch continues in the same MLflow run, from the saved
    state, and trains what the uninterrupted one trained."""
    import benchmark.core.checkpoint as ckpt
    import benchmark.campaigns.dints_search as ds
    from architectures import create_architecture
    from benchmark.data.store import CropStore
    from benchmark.core.tracking import client

    real_indices = CropStore.indices

    def guarded(self, split):
        assert split != "test", "the DiNTS search read the test split"
        return real_indices(self, split)

    monkeypatch.setattr(CropStore, "indices", guarded)
    lean = ["train.batch_size=2", "train.steps_per_epoch=2"]
    out = bench_home / "whole.json"
    whole = ds.run_dints_search("smoke", 1, 2, lean, out, num_blocks=3, show_progress=False)
    code_a = np.asarray(whole["arch_code_a"])
    assert code_a.shape == (3, 7) and np.asarray(whole["node_a"]).shape == (4, 3) and code_a.sum() > 0
    assert set(np.asarray(whole["arch_code_c"]).ravel()) <= set(range(5))
    meta = json.loads(out.read_text())["meta"]
    cl = client()
    history = cl.get_metric_history(meta["mlflow_run_id"], "arch_loss")
    assert [m.value > 0 for m in sorted(history, key=lambda m: m.step)] == [False, True, True]  # warm-up, search
    assert meta["budget_seconds"] > 0 and meta["source"] == "bench search dints"
    net = create_architecture("dints", spatial_size=(8, 16, 16), channel_mul=0.25, topology=str(out)).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 1, 8, 16, 16)

    real_save = ckpt.save_checkpoint

    def save_then_stop(state, path):
        real_save(state, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        ds.run_dints_search("smoke", 1, 2, lean, bench_home / "resumed.json", num_blocks=3, show_progress=False)
    state_path = ds.search_state_path("smoke", 1, 2, lean, 0.25, 3, 3, 0.8)
    assert state_path.exists()
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    resumed = ds.run_dints_search("smoke", 1, 2, lean, bench_home / "resumed.json", num_blocks=3, show_progress=False)
    assert not state_path.exists()  # deleted once the topology is written

    run_whole, run_resumed = whole["meta"]["mlflow_run_id"], resumed["meta"]["mlflow_run_id"]
    assert cl.get_run(run_resumed).info.status == "FINISHED"

    def arch_loss(run_id):
        return sorted(((m.step, m.value) for m in cl.get_metric_history(run_id, "arch_loss")))
    assert [step for step, _ in arch_loss(run_resumed)] == [1, 2, 3]   # each epoch logged once
    assert [v for _, v in arch_loss(run_resumed)] == pytest.approx([v for _, v in arch_loss(run_whole)], rel=1e-5)
    assert resumed["arch_code_a"] == whole["arch_code_a"] and resumed["arch_code_c"] == whole["arch_code_c"]
    assert resumed["meta"]["budget_seconds"] > 0
