"""The random-search control: uniform samplers at the search's resource target, the genotype
files the run pipeline trains, and the leaderboard's search-vs-random section."""
import json

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import UsageError


def _space(num_blocks=6):
    import torch
    from monai.networks.nets import TopologySearch
    torch.manual_seed(0)
    return TopologySearch(channel_mul=0.25, num_blocks=num_blocks, num_depths=3, use_downsample=True, spatial_dims=3)


@pytest.mark.slow
def test_dints_random_topologies_are_feasible_uniform_draws_in_the_band_and_seeded():
    from benchmark.campaigns.dints_space import (child_transitions, cost_ratio, node_activation, path_costs,
                                                 random_topologies)
    space = _space()
    shape = (2, 1, 32, 64, 64)
    draws = random_topologies(space, 5, 0.4, 0.1, shape, seed=3)
    assert draws == random_topologies(space, 5, 0.4, 0.1, shape, seed=3)
    other = random_topologies(space, 5, 0.4, 0.1, shape, seed=4)
    assert [d["arch_code_a"] for d in draws] != [d["arch_code_a"] for d in other]
    trans = child_transitions(space)
    index = {str(np.asarray(c)): i for i, c in enumerate(space.child_list)}
    for d in draws:
        code_a = np.asarray(d["arch_code_a"])
        assert 0.3 <= d["cost_ratio"] <= 0.4 and code_a.sum() < 42
        assert d["cost_ratio"] == pytest.approx(cost_ratio(path_costs(space, shape, d["arch_code_c"]), code_a))
        children = [index[str(row)] for row in code_a]
        assert all(trans[a, b] for a, b in zip(children, children[1:]))   # each block feeds the next
        assert d["node_a"] == node_activation(space, code_a).tolist()


@pytest.mark.slow
def test_dints_random_chains_keep_the_searched_structure_and_stay_feasible():
    """A decode that kept one path per block is matched by random single-path chains (same cost
    class), every one feasible and the draws spread over several chains."""
    from benchmark.campaigns.dints_space import child_transitions, random_topologies
    space = _space()
    draws = random_topologies(space, 8, 0.5, 0.5, (2, 1, 32, 64, 64), seed=1, paths_per_block=1)
    trans = child_transitions(space)
    index = {str(np.asarray(c)): i for i, c in enumerate(space.child_list)}
    for d in draws:
        code_a = np.asarray(d["arch_code_a"])
        assert (code_a.sum(axis=1) == 1).all()
        children = [index[str(row)] for row in code_a]
        assert all(trans[a, b] for a, b in zip(children, children[1:]))
    assert len({str(d["arch_code_a"]) for d in draws}) > 1
    with pytest.raises(UsageError, match="8 active paths"):
        random_topologies(space, 1, 0.5, 0.5, (2, 1, 32, 64, 64), seed=1, paths_per_block=8)


@pytest.mark.slow
def test_dints_control_files_rebuild_and_say_what_they_are(tmp_path):
    import torch
    from architectures import create_architecture
    from architectures.dints import describe_topology, load_topology
    from benchmark.campaigns.nas_control import control_genotype, sample_dints
    paths = sample_dints(5, seed=0, target=0.4, band=0.1, preset="smoke", out_dir=tmp_path)
    assert [p.name for p in paths] == [f"sample-{k:02d}.json" for k in range(5)]
    again = sample_dints(5, seed=0, target=0.4, band=0.1, preset="smoke", out_dir=tmp_path / "again")
    assert [p.read_text() for p in paths] == [p.read_text() for p in again]
    d = load_topology(paths[0])
    assert d["meta"]["seed"] == 0 and d["meta"]["macs_per_patch"] > 0 and d["meta"]["paths_kept"] < 42
    assert describe_topology(d).startswith("random topology")
    kwargs, name = control_genotype("dints", "2", tmp_path)
    assert name == "sample-02.json" and set(kwargs["topology"]) == {"node_a", "arch_code_a", "arch_code_c"}
    net = create_architecture("dints", spatial_size=(8, 16, 16), channel_mul=0.25, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 1, 8, 16, 16)
    # the searched network's genotype is written into the config too (its fingerprint holds it)
    from architectures.dints import GENOTYPE_PATH
    searched, name = control_genotype("dints", "searched")
    assert name == "dints_genotype.json"
    assert searched["topology"]["arch_code_a"] == load_topology(GENOTYPE_PATH)["arch_code_a"]
    with pytest.raises(UsageError):
        control_genotype("dints", "../x")
    with pytest.raises(UsageError):
        control_genotype("unet3d", "0")


@pytest.mark.slow
def test_bixnas_random_genotypes_stay_in_phase_twos_space_at_the_skip_target(tmp_path):
    from architectures.bixnas import GENOTYPE_PATH, load_genotype
    from architectures._bixnas_supernet import skip_count
    from benchmark.campaigns.nas_control import phase_one_genotype, sample_bixnas
    within = phase_one_genotype(load_genotype(GENOTYPE_PATH))     # the committed search's phase one
    target = skip_count(within) // 2        # where a fair coin per skip lands most often
    paths = sample_bixnas(5, seed=1, within=within, target=target, band=3, preset="smoke", out_dir=tmp_path)
    again = sample_bixnas(5, seed=1, within=within, target=target, band=3, preset="smoke", out_dir=tmp_path / "b")
    assert [p.read_text() for p in paths] == [p.read_text() for p in again]
    genotypes = [load_genotype(p) for p in paths]
    assert len({json.dumps(g.to_dict()["decoder"] + g.to_dict()["encoder"]) for g in genotypes}) == 5
    for g in genotypes:
        assert target - 3 <= skip_count(g) <= target and g.meta["skips_kept"] == skip_count(g) \
            and g.meta["macs_per_patch"] > 0
        for stage, stage1 in zip(g.encoder + g.decoder, within.encoder + within.decoder):
            assert all(set(ins) <= set(ins1) for ins, ins1 in zip(stage, stage1))


# ---------------------------------------------------------------------------------------------
# the leaderboard section, on synthetic runs
# ---------------------------------------------------------------------------------------------
def _record(run_id, seed, dice, kind=None, sample=None, arch="dints"):
    from benchmark.results.leaderboard import RunRecord
    n = len(dice)
    df = pd.DataFrame({"nodule_id": [f"n{i}" for i in range(n)], "dice": dice, "nsd": dice,
                       "hd95_mm": np.full(n, 3.0), "empty_pred": [False] * n, "size_bin": ["6-10"] * n})
    tags = {"arch": arch, "loss": "dice_bce", "seed": str(seed), "preset": "cpu", "data.source": "phantom",
            "data.ground_truth": "staple", "data.split_hash": "s", "data.content_hash": "c"}
    if kind:
        tags.update({"nas.space": "dints", "nas.kind": kind, "nas.sample": sample or kind})
    config = {"model": {"arch": arch, "kwargs": {"topology": sample or "searched"}}, "loss": {"name": "dice_bce"},
              "train": {"seed": seed}}
    macs = 66e6 if kind == "searched" else 60e6 + 2e6 * int(sample or 0)
    return RunRecord(run_id, tags, {"test_dice": 0.0, "train_seconds": 10.0, "macs_per_patch": macs}, config, seed, df)


def _control_runs(gain):
    g = np.random.default_rng(0)
    n = 40
    base = g.uniform(0.4, 0.6, n)
    runs = [_record(f"s{s}", s, base + gain + g.normal(0, .01, n), "searched") for s in range(2)]
    for k in range(5):
        runs += [_record(f"r{k}{s}", s, base + 0.01 * (k - 2) + g.normal(0, .01, n), "random", str(k))
                 for s in range(2)]
    return runs


def test_search_vs_random_rank_and_paired_difference_to_the_random_median():
    from benchmark.results.leaderboard.render import _search_control_markdown as markdown_section
    from benchmark.results.leaderboard.search_control import search_controls
    better = search_controls(_control_runs(0.1), n_boot=500)
    assert len(better) == 1
    c = better[0]
    assert c.space == "dints" and c.rank == 1 and sorted(c.random_dice) == ["0", "1", "2", "3", "4"]
    assert c.diff == pytest.approx(0.1, abs=0.01) and 0 < c.diff_low < c.diff < c.diff_high
    assert c.n_seeds == {"searched": 2, **{f"random {k}": 2 for k in range(5)}} and c.n_nodules == 40
    assert "beats the random median" in c.verdict()
    md = "\n".join(markdown_section(better, {"phantom_ceiling": 0.908}))
    assert "## Search against random architectures" in md and "| 1 of 6 |" in md
    # what each side costs (the control is one only at equal cost) and what the scores are read against
    assert c.macs["searched"] == 66e6 and c.median_random_macs == 64e6 and "| 66 M, 64 M | 2 per entry |" in md
    assert "For scale, on the same test nodules: phantom_ceiling 0.908." in md
    same = search_controls(_control_runs(0.0), n_boot=500)[0]
    assert same.rank == 3 and same.diff_low < 0 < same.diff_high and "cannot be told" in same.verdict()
    worse = search_controls(_control_runs(-0.1), n_boot=500)[0]
    assert worse.rank == 6 and worse.diff_high < 0
    assert markdown_section([]) == [] and search_controls([r for r in _control_runs(0.1) if r.run_id[0] == "s"]) == []


def test_ranking_reliability_on_a_table_worked_by_hand():
    """Three networks x two seeds, worked by hand: network mean square 0.015, residual 0.005
    (F 3, p 1/(1+F) for F(2, 2)), ICC(3,1) 0.5, so 4 seeds for 0.8; the seeds' rankings
    (1,2,3) and (2,1,3) give Spearman 0.5."""
    from benchmark.results.leaderboard.search_control import ranking_reliability
    r = ranking_reliability({"a": {0: 0.1, 1: 0.3}, "b": {0: 0.2, 1: 0.2}, "c": {0: 0.3, 1: 0.4}})
    assert (r.n_entries, r.seeds) == (3, (0, 1))
    assert r.f == pytest.approx(3.0) and r.p == pytest.approx(0.25) and r.icc == pytest.approx(0.5)
    assert r.sd_between == pytest.approx(0.005 ** 0.5) and r.sd_within == pytest.approx(0.005 ** 0.5)
    assert r.spearman == pytest.approx(0.5) and r.seeds_for(0.8) == pytest.approx(4.0)
    # networks that differ by less than runs of one network do: no number of seeds ranks them
    noise = ranking_reliability({"a": {0: 0.1, 1: 0.3}, "b": {0: 0.3, 1: 0.1}, "c": {0: 0.2, 1: 0.2}})
    assert noise.icc < 0 and noise.seeds_for(0.8) is None and noise.sd_between == 0.0
    # only seeds every network has count; fewer than two such seeds, or two networks, say nothing
    assert ranking_reliability({"a": {0: 0.1, 1: 0.3}, "b": {0: 0.2, 1: 0.2}, "c": {0: 0.3, 2: 0.4}}) is None
    assert ranking_reliability({"a": {0: 0.1, 1: 0.3}, "b": {0: 0.2, 1: 0.2}}) is None
    with pytest.raises(ValueError, match="reliability"):
        r.seeds_for(1.0)


def test_the_section_says_whether_the_spaces_networks_can_be_ranked():
    from benchmark.results.leaderboard.render import _search_control_markdown as markdown_section
    from benchmark.results.leaderboard.search_control import search_controls
    runs = _control_runs(0.0)
    assert search_controls(runs, n_boot=100)[0].reliability is None      # runs without a validation score
    g = np.random.default_rng(1)
    for r in runs:                     # well-separated networks: sample k scores 0.1 k, the searched 0.6
        net = 0.6 if r.tags["nas.kind"] == "searched" else 0.1 * int(r.tags["nas.sample"])
        r.metrics["best_val_dice"] = net + g.normal(0, 0.01)
    c = search_controls(runs, n_boot=100)[0]
    assert c.reliability.n_entries == 6 and c.reliability.spearman == pytest.approx(1.0) and c.reliability.icc > 0.95
    md = "\n".join(markdown_section([c]))
    assert "Can the dints space's networks be ranked at this schedule?" in md and "Spearman rho 1.00" in md
    assert "one run per network already ranks them with reliability 0.8 or more" in md


def test_random_control_runs_stay_out_of_the_main_table_and_get_their_section():
    from benchmark.results.leaderboard import build_sections, render_markdown, table_key
    runs = _control_runs(0.1) + [_record(f"u{s}", s, np.full(40, 0.5), arch="unet3d") for s in range(2)]
    lb = build_sections(table_key(runs[0]), runs, n_boot=200)
    members = {r.run_id for row in lb.rows for r in row.runs}
    assert members == {"s0", "s1", "u0", "u1"}            # the searched run is a normal row, the random ones not
    assert len(lb.search_controls) == 1 and lb.search_controls[0].rank == 1
    md = render_markdown(lb)
    assert "## Search against random architectures" in md
    # the page's opening lines say whether the search beat its control
    assert "Search against random architectures: dints search (dice_bce): the search beats the random median" \
        in md.split("## Summary")[0]
    from benchmark.results.leaderboard import render_html
    assert "<h2>Search against random architectures</h2>" in render_html(lb, {})
    # every random run is named on the page and travels in its run export, though in no table
    from benchmark.results.leaderboard.sections import exported_runs
    assert {x.run_id for x in exported_runs(lb)} == {r.run_id for r in runs}
    assert "- Search against random architectures: dints random sample 0 / dice_bce: seed 0: `r00`, seed 1: `r01`" in md
    plain = build_sections(table_key(runs[-1]), runs[-2:], n_boot=200)
    assert plain.search_controls == [] and "random architectures" not in render_markdown(plain)


def test_control_cells_cover_the_searched_network_and_every_sample_per_seed(tmp_path):
    """``bench nas controls``: one restartable campaign per space; every cell's config holds its
    genotype, so the searched network and each sample are told apart by fingerprint."""
    import shutil

    from architectures.bixnas import GENOTYPE_PATH
    from benchmark.campaigns.nas_control import control_cells
    for k in (0, 1):
        shutil.copy(GENOTYPE_PATH, tmp_path / f"sample-{k:02d}.json")
    cells = control_cells("bixnas", "smoke", 2, ["train.epochs=1"], tmp_path)
    # the reference runs come first (one set for the campaign's one data config), untagged as NAS runs
    refs = [c for c in cells if c.reference]
    assert [c.reference for c in refs] == ["threshold_baseline", "inter_reader", "phantom_ceiling"]
    assert cells[:3] == refs and not any("nas.kind" in c.tags for c in refs)
    cells = cells[3:]
    assert [(c.tags["nas.sample"], c.seed) for c in cells] == [("searched", 0), ("0", 0), ("1", 0),
                                                              ("searched", 1), ("0", 1), ("1", 1)]
    assert {c.tags["nas.kind"] for c in cells[1:3]} == {"random"} and cells[0].tags["nas.kind"] == "searched"
    assert all("genotype" in c.cfg.model.kwargs and c.cfg.train.epochs == 1 for c in cells)
    assert len({c.label for c in cells}) == 6
    # the same genotype as sample 0 and 1 here: same network, same fingerprint for one seed
    assert cells[0].cfg.fingerprint() == cells[1].cfg.fingerprint() == cells[2].cfg.fingerprint()
    with pytest.raises(UsageError, match="bench nas random bixnas"):
        control_cells("bixnas", "smoke", 1, [], tmp_path / "empty")
