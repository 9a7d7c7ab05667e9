"""The BiX-NAS search space: genotype files, pruning, Optuna sampling, and the built network."""
from __future__ import annotations

import json

import optuna
import pytest
import torch

from architectures import create_architecture
from architectures.bixnas import (GENOTYPE_PATH, BiXNet, Genotype, alive_nodes, load_genotype, prune,
                                  sample_genotype, save_genotype, search_space_choices, search_stages)
from benchmark.core.errors import UsageError

SMOKE = (8, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _with_stage(g: Genotype, path: str, t: int, stage_inputs) -> Genotype:
    return g.replace_stage(2 * t + (path == "dec"), tuple(tuple(i) for i in stage_inputs))


def test_json_round_trip_keeps_genotype_and_meta(tmp_path):
    g = _with_stage(Genotype.full(3, 4), "dec", 1, [[0, 2], [3], [0], [1, 4]])
    path = save_genotype(g, tmp_path / "g.json", {"study": "bixnas-smoke", "mlflow_run_id": "abc123"})
    back = load_genotype(path)
    assert back == g
    assert back.meta == {"study": "bixnas-smoke", "mlflow_run_id": "abc123"}
    text = path.read_text()
    assert json.loads(text)["decoder"][1] == [[0, 2], [3], [0], [1, 4]]
    assert "    [[0, 2], [3], [0], [1, 4]]" in text  # one readable line per stage
    assert hash(back) == hash(g)  # meta does not take part in identity


def test_committed_genotype_loads_and_is_pruned():
    # where it came from is checked in test_nas.py; here: it is a valid, already-pruned genotype
    g = load_genotype(GENOTYPE_PATH)
    assert (g.iterations, g.levels) == (3, 4)
    assert prune(g) == g


def test_bad_genotype_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(UsageError, match="nope.json"):
        load_genotype(missing)
    bad = tmp_path / "bad.json"
    d = Genotype.full(2, 3).to_dict()
    d["encoder"][0][1] = [0, 2]  # pass 0's encoder has no decoder output to read
    bad.write_text(json.dumps(d))
    with pytest.raises(UsageError, match="bad.json.*sequential only"):
        load_genotype(bad)


def test_reading_a_pruned_block_is_rejected():
    g = Genotype.full(2, 2)
    with pytest.raises(UsageError, match="pruned"):
        _with_stage(g, "dec", 0, [[0, 1], []])  # dec t0 L1 pruned, but dec t0 L0 reads it (seq)


def test_alive_nodes_by_hand():
    # One pass, two levels. Output = dec L0 <- enc L1 only; dec L1 is therefore dead, and with it
    # the bridge; enc L1 needs enc L0 (sequential) which needs the stem.
    g = Genotype(1, 2, encoder=(((0,), (0,)),), decoder=(((2,), (0, 1)),))
    assert alive_nodes(g) == {("dec", 0, 0), ("enc", 0, 1), ("enc", 0, 0), ("stem",)}
    assert prune(g).decoder[0] == ((2,), ())


def test_pruning_removes_a_block_that_cannot_reach_the_output():
    T, L = 3, 4
    g = Genotype.full(T, L)
    # Nothing reads enc t2 L2 any more: enc t2 L3 drops its sequential input and no decoder of
    # pass 2 takes encoder level 2 (candidate 3).
    g = _with_stage(g, "enc", 2, [[0, 1, 2, 3, 4]] * 3 + [[1, 2]])
    g = _with_stage(g, "dec", 2, [[0, 1, 2, 4]] * 4)
    p = prune(g)
    assert g.encoder[2][2] and p.encoder[2][2] == ()
    assert prune(p) == p  # idempotent
    net = BiXNet(g, spatial_size=SMOKE)
    assert "2" not in net.blocks["enc2"].conv1.norms  # no norm for the pruned block's pass
    assert set(net.blocks["enc2"].conv1.norms) == {"0", "1"}
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, *SMOKE)).shape == (1, 1, *SMOKE)


def test_level_dead_in_every_pass_gets_no_conv():
    T, L = 2, 3
    g = Genotype.full(T, L)
    # No decoder reads encoder level 2 (candidate 3) and the deepest decoder never takes its
    # sequential input, so encoder level 2 and the bridge are dead in both passes.
    for t in range(T):
        g = _with_stage(g, "dec", t, [[0, 1, 2], [0, 1, 2], [1, 2]])
    net = BiXNet(g, spatial_size=SMOKE)
    assert "enc2" not in net.blocks and net.bridge is None
    full = BiXNet(Genotype.full(T, L), spatial_size=SMOKE)
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in full.parameters())


def test_search_space_choices_cover_every_free_skip():
    choices = search_space_choices(3, 4)
    # last decoder stage: 4 levels x 4 encoder outputs (sequential kept); 4 other stages: 4 x 5
    assert len(choices) == 16 + 4 * 20
    assert len({c.name for c in choices}) == len(choices)
    assert all(c.name.startswith("arch.") for c in choices)
    assert [c.stage for c in choices][0] == 5 and search_stages(3) == [5, 4, 3, 2, 1]
    assert not any(c.stage == 0 for c in choices)


def test_sampled_genotype_builds_and_trains():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    g = sample_genotype(trial, iterations=3, levels=4)
    assert set(trial.params) == {c.name for c in search_space_choices(3, 4)}
    assert all(0 in ins for ins in g.decoder[2])  # the last decoder stage keeps its sequential input
    model = create_architecture("bixnas", spatial_size=SMOKE, genotype=g).train()
    out = model(torch.randn(2, 1, *SMOKE))
    assert out.shape == (2, 1, *SMOKE)
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    study.tell(trial, 0.5)


def test_stage_by_stage_sampling_keeps_the_other_stages():
    base = Genotype.bio(3, 4)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    g = sample_genotype(trial, stages=[5], base=base)
    assert {n.split(".")[2] for n in trial.params} == {"dec2"}
    assert g.encoder == base.encoder and g.decoder[:2] == base.decoder[:2]
    with pytest.raises(UsageError, match="stage 0"):
        sample_genotype(study.ask(), stages=[0])


def test_removing_one_fused_input_lowers_macs():
    # dec t2 L1 loses one of its two inputs; no block dies, so only the fusion gets cheaper
    from benchmark.run.cost import count_macs
    g = Genotype.bio(3, 4)
    fewer = _with_stage(g, "dec", 2, [[0, 1], [0], [0, 3], [0, 4]])
    assert alive_nodes(prune(fewer)) == alive_nodes(prune(g))
    m_all = count_macs(BiXNet(g, spatial_size=SMOKE, width=8, full_res_width=4), (1, 1, *SMOKE))
    m_fewer = count_macs(BiXNet(fewer, spatial_size=SMOKE, width=8, full_res_width=4), (1, 1, *SMOKE))
    # one fused input = one MAC per element of the block's input: level 1 of the smoke patch is
    # 4x4x4 voxels (the stem halves 8x16x16 to 4x8x8, level 1 halves y and x only), 8 channels
    level1 = 8 * 4 * 4 * 4
    assert m_all - m_fewer == level1


def test_fuse_is_the_weighted_mean():
    from architectures.bixnas import fuse
    a, b = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    assert torch.allclose(fuse([a, b]), (a + b) / 2, atol=1e-6)
    assert torch.allclose(fuse([a, b], torch.tensor([0.25, 0.75])), 0.25 * a + 0.75 * b, atol=1e-6)


def test_super_network_holds_every_skip_and_learns_its_selection():
    from architectures._bixnas_supernet import BiXSuperNet
    net = BiXSuperNet(spatial_size=SMOKE, width=8, full_res_width=4)
    assert net.genotype == prune(Genotype.full(3, 4))
    # a logit matrix (candidates x 3 columns) for every block but pass 0's encoder
    assert len(net.alphas) == 5 * 4 and all(a.shape == (5, 3) for a in net.alphas.values())
    out = net.train()(torch.randn(2, 1, *SMOKE))
    out.mean().backward()
    assert sum(a.grad is not None and a.grad.abs().sum() > 0 for a in net.arch_parameters()) >= 15
    assert not set(map(id, net.arch_parameters())) & set(map(id, net.weight_parameters()))


def test_progressive_pruning_reaches_keep_inputs_and_keeps_the_last_sequential_input():
    from architectures._bixnas_supernet import BiXSuperNet
    net = BiXSuperNet(spatial_size=SMOKE, width=8, full_res_width=4, keep=2)
    with torch.no_grad():  # make the last decoder's sequential input the least likely everywhere
        for key, a in net.alphas.items():
            a[0] = -5.0
    assert net.prune_step() == 20 and not net.pruned()  # one input per block per step
    sizes = [len(p) for p in net.probabilities().values()]
    assert sizes.count(4) == 20
    while not net.pruned():
        net.prune_step()
    g = net.genotype_now()
    assert all(len(ins) <= 2 for stage in g.encoder + g.decoder for ins in stage)
    assert all(0 in ins for ins in g.decoder[2] if ins)  # BiX-NAS keeps it in the last decoder stage
    assert all(0 not in ins for stage in g.encoder[1:] + g.decoder[:2] for ins in stage)  # others: dropped first
    assert prune(g) == g
    with torch.no_grad():
        assert BiXNet(g, spatial_size=SMOKE, width=8, full_res_width=4).eval()(torch.randn(1, 1, *SMOKE)).shape \
            == (1, 1, *SMOKE)
