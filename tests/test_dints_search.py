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


@pytest.mark.slow
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
    state_path = ds.search_state_path("smoke", 1, 2, lean, 0.25, 3, 3, ds.RAM_TARGET)
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


def _space(num_blocks=6, seed=0):
    from monai.networks.nets import TopologySearch
    torch.manual_seed(seed)
    return TopologySearch(channel_mul=0.25, num_blocks=num_blocks, num_depths=3, use_downsample=True, spatial_dims=3)


def test_path_costs_are_monais_memory_estimate_term_by_term():
    from benchmark.campaigns.dints_space import path_costs
    space = _space()
    shape = (2, 1, 32, 64, 64)
    costs = path_costs(space, shape)
    assert costs.shape == (6, 7)
    assert costs.sum() == pytest.approx(float(space.get_ram_cost_usage(shape, full=True)), rel=1e-5)
    _, probs = space.get_prob_a(child=False)
    assert (probs.detach().numpy() * costs).sum() == pytest.approx(float(space.get_ram_cost_usage(shape)), rel=1e-5)


@pytest.mark.slow  # builds MONAI's DiNTS search space twice (~10 s)
def test_decode_within_a_cost_target_prunes_paths_and_is_deterministic():
    """Probabilities that want every path: MONAI's decode keeps all 42; at a target of 0.5 the
    decode keeps fewer and meets it; the same probabilities decode the same, and a target the
    unconstrained decode meets changes nothing."""
    from benchmark.campaigns.dints_space import decode_within
    space = _space()
    shape = (2, 1, 32, 64, 64)
    with torch.no_grad():
        space.log_alpha_a.add_(3.0)
    assert np.asarray(space.decode()[1]).sum() == 42
    before = space.log_alpha_a.detach().clone()
    d = decode_within(space, 0.5, shape)
    assert torch.equal(space.log_alpha_a.detach(), before)          # the parameters are left as they were
    assert np.asarray(d["arch_code_a"]).sum() < 42 and d["cost_ratio"] <= 0.5 and d["lam"] > 0
    assert d["unconstrained_cost_ratio"] == pytest.approx(1.0)
    assert decode_within(space, 0.5, shape) == d
    tighter = decode_within(space, 0.3, shape)
    assert np.asarray(tighter["arch_code_a"]).sum() < np.asarray(d["arch_code_a"]).sum()
    assert tighter["cost_ratio"] <= 0.3
    free = decode_within(space, 1.0, shape)
    assert free["lam"] == 0.0 and free["arch_code_a"] == np.asarray(space.decode()[1]).astype(int).tolist()
    with pytest.raises(Exception, match="target"):
        decode_within(space, 0.0, shape)


def test_rows_say_cell_operations_searched_when_the_topology_is_the_default():
    from architectures.dints import FIXED_TOPOLOGY, GENOTYPE_PATH, default_topology, describe_topology
    from benchmark.run.archs_table import search_note
    full = {"arch_code_a": [[1] * 7] * 6, "meta": {"source": "bench search dints"}}
    assert describe_topology(full) == "default topology (all 42 paths), cell operations searched"
    pruned = {"arch_code_a": [[1, 0, 1, 0, 1, 0, 1]] * 6, "meta": {"source": "bench search dints"}}
    assert describe_topology(pruned) == "topology searched (24 of 42 paths kept) and cell operations searched"
    assert "not searched" in describe_topology(FIXED_TOPOLOGY) and "not searched" in search_note("dints_fixed")
    assert search_note("dints").endswith(describe_topology(default_topology()))
    if GENOTYPE_PATH.exists() and np.asarray(default_topology()["arch_code_a"]).all():
        assert "cell operations searched" in search_note("dints")
    assert search_note("unet3d") == ""


@pytest.mark.slow
def test_tiny_search_at_a_demanding_target_decodes_fewer_than_42_paths(bench_home):
    """A smoke search (one warm-up, one search epoch of one step) of the 6 x 3 space at memory
    ratio 0.3: the decoded topology keeps fewer of its 42 paths and meets the target; the genotype
    file records it with the search's MLflow run, the per-epoch probabilities are in MLflow."""
    import benchmark.campaigns.dints_search as ds
    from benchmark.core.tracking import client
    out = bench_home / "tiny.json"
    lean = ["train.batch_size=2", "train.steps_per_epoch=1"]
    topo = ds.run_dints_search("smoke", 1, 1, lean, out, num_blocks=6, ram_target=0.3, show_progress=False)
    meta = json.loads(out.read_text())["meta"]
    assert meta["paths_total"] == 42 and meta["paths_kept"] == int(np.asarray(topo["arch_code_a"]).sum()) < 42
    assert meta["cost_ratio"] <= 0.3 and meta["ram_target"] == 0.3
    assert meta["macs_per_patch"] > 0 and meta["unet3d_macs_per_patch"] > 0 and meta["budget_seconds"] > 0
    run = client().get_run(meta["mlflow_run_id"])
    assert {"p_a.b0.p0", "entropy_paths", "entropy_ops", "ram_ratio", "nas.paths_kept"} <= set(run.data.metrics)
    assert run.data.tags["nas.paths_kept"] == f"{meta['paths_kept']}/42"
