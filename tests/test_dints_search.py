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


def test_smoke_dints_search_needs_an_explicit_out(bench_home):
    from conftest import run_cli
    r = run_cli("search", "dints", "--preset", "smoke", env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_dints_search_trains_alphas_decodes_and_rebuilds(bench_home, monkeypatch):
    from architectures import create_architecture
    from benchmark.data.store import CropStore
    from benchmark.dints_search import run_dints_search
    from benchmark.tracking import client

    real_indices = CropStore.indices

    def guarded(self, split):
        assert split != "test", "the DiNTS search read the test split"
        return real_indices(self, split)

    monkeypatch.setattr(CropStore, "indices", guarded)
    out = bench_home / "dints.json"
    topo = run_dints_search("smoke", 1, 1, ["train.batch_size=2", "train.steps_per_epoch=2"], out, num_blocks=3,
                            show_progress=False)
    code_a = np.asarray(topo["arch_code_a"])
    assert code_a.shape == (3, 7) and np.asarray(topo["node_a"]).shape == (4, 3) and code_a.sum() > 0
    assert set(np.asarray(topo["arch_code_c"]).ravel()) <= set(range(5))
    meta = json.loads(out.read_text())["meta"]
    run = client().get_run(meta["mlflow_run_id"])
    history = client().get_metric_history(run.info.run_id, "arch_loss")
    assert [m.value > 0 for m in sorted(history, key=lambda m: m.step)] == [False, True]  # warm-up, then search
    assert meta["budget_seconds"] > 0 and meta["source"] == "bench search dints"
    net = create_architecture("dints", spatial_size=(8, 16, 16), channel_mul=0.25, topology=str(out)).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 1, 8, 16, 16)
