"""BiX-NAS phase one's sparsity pressure and phase two's progressive evolutionary search
(``benchmark/campaigns/bixnas_evolve.py``), on synthetic scores: no training."""
import json

import pytest
import torch

from architectures.bixnas import SEQ, Genotype, prune, stage_of
from architectures._bixnas_supernet import describe_search, skip_count
from benchmark.campaigns.bixnas_evolve import evolve, genotype_key, stage_children

SMOKE = (8, 16, 16)


def _phase_one():
    """A phase-one-like genotype: <= 3 inputs per block (the committed search's phase one)."""
    from architectures.bixnas import GENOTYPE_PATH, load_genotype
    from benchmark.campaigns.nas_control import phase_one_genotype
    return phase_one_genotype(load_genotype(GENOTYPE_PATH))


def test_skips_are_counted_in_live_blocks():
    from architectures.bixnas import GENOTYPE_PATH, load_genotype
    from benchmark.run.archs_table import search_note
    assert skip_count(Genotype.full()) == 80 and skip_count(Genotype.bio()) == 20
    assert describe_search(Genotype.bio()) == "20 of 80 bi-directional skips kept, 24 of 24 blocks alive"
    assert search_note("bixnas") == f"; {describe_search(load_genotype(GENOTYPE_PATH))}"   # `bench archs` says it


def test_stage_children_only_drop_inputs_of_their_stage():
    import numpy as np
    g = prune(_phase_one())
    rng = np.random.default_rng(0)
    for stage in (5, 2):
        path, t = stage_of(stage)
        kids = stage_children(g, stage, 6, rng)
        assert kids and len({genotype_key(k) for k in kids}) == len(kids)
        for k in kids:
            assert genotype_key(k) != genotype_key(g)
            for p, tt, level in g.blocks():
                mine, theirs = k.inputs(p, tt, level), g.inputs(p, tt, level)
                assert set(mine) <= set(theirs)
                if (p, tt) != (path, t) and mine:
                    assert mine == theirs        # other stages change only by dying
            if stage == 5:
                assert all(SEQ in k.inputs("dec", 2, level) for level in range(4) if k.inputs("dec", 2, level))


def _synthetic(start):
    """Dice drops by 0.05 per lost 'important' skip (the first two of the last decoder stage);
    cost = skips + live blocks. Counts the calls."""
    important = [(level, k) for level in range(4) for k in start.inputs("dec", 2, level) if k != SEQ][:2]
    calls = []

    def score(g):
        calls.append(genotype_key(g))
        return 0.8 - 0.05 * sum(k not in g.inputs("dec", 2, level) for level, k in important)

    def cost(g):
        return skip_count(g) * 1e6 + sum(1 for ins in sum(g.encoder + g.decoder, ()) if ins) * 1e7
    return score, cost, calls


def test_evolution_removes_skips_within_the_tolerance_and_is_deterministic():
    start = _phase_one()
    score, cost, calls = _synthetic(start)
    ev = evolve(start, score, cost, tolerance=0.04, seed=0, samples=4, keep=2)
    assert skip_count(ev.best.genotype) < skip_count(start)
    assert ev.best.macs < cost(prune(start))
    assert ev.floor == pytest.approx(0.76) and ev.best.val_dice >= ev.floor
    assert any(x.val_dice < ev.floor for x in ev.scored)    # the tolerance turned candidates away ...
    assert ev.best.val_dice == pytest.approx(0.8)            # ... so no important skip was lost
    assert sorted(ev.retained) == [1, 2, 3, 4, 5]       # every searchable stage, last first
    assert len(calls) == len(set(calls)) == len(ev.scored)   # each genotype scored once
    again = evolve(start, *_synthetic(start)[:2], tolerance=0.04, seed=0, samples=4, keep=2)
    assert genotype_key(again.best.genotype) == genotype_key(ev.best.genotype)
    assert [genotype_key(s.genotype) for s in again.scored] == [genotype_key(s.genotype) for s in ev.scored]
    loose = evolve(start, *_synthetic(start)[:2], tolerance=1.0, seed=0, samples=4, keep=2)
    assert loose.best.macs == min(x.macs for x in loose.scored)   # no floor: the cheapest scored
    Genotype.from_dict(json.loads(json.dumps(ev.best.genotype.to_dict())))   # a valid, saveable genotype


def test_supernet_sparsity_pressure_is_differentiable_and_off_in_evaluation():
    from architectures._bixnas_supernet import BiXSuperNet
    torch.manual_seed(0)
    net = BiXSuperNet(spatial_size=SMOKE, width=8, full_res_width=4).train()
    s = net.sparsity()
    assert 1.0 < float(s) <= 3.0     # three columns pick ~three distinct inputs of five at the start
    s.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters())
    with torch.no_grad():
        for a in net.alphas.values():
            a.zero_()
            a[0] = 10.0                    # every column picks the same input
    assert float(net.sparsity()) == pytest.approx(1.0, abs=1e-3)
    assert float(net.eval().sparsity()) == 0.0


@pytest.mark.slow
def test_evolution_on_smoke_data_reads_train_val_only_and_resumes_from_its_record(bench_home, monkeypatch):
    """Phase one (1 epoch) and phase two (1-epoch candidates, 1 child per stage) at the smoke
    preset with test-split access made to fail; the genotype records the search; the same command
    again trains nothing new and writes the same genotype (every score is in the record)."""
    import benchmark.campaigns.bixnas_evolve as be
    from architectures.bixnas import load_genotype
    from benchmark.data.store import CropStore
    from benchmark.core.tracking import client

    real_indices = CropStore.indices

    def guarded(self, split):
        assert split != "test", "the BiX-NAS evolution read the test split"
        return real_indices(self, split)

    monkeypatch.setattr(CropStore, "indices", guarded)
    lean = ["train.batch_size=4", "train.steps_per_epoch=1", "model.kwargs.width=8", "model.kwargs.full_res_width=4"]
    out = bench_home / "evolved.json"
    be.run_evolution("smoke", lean, phase1_epochs=1, candidate_epochs=1, samples=1, keep=1, tolerance=1.0, seed=0,
                     out=out, show_progress=False)
    g = load_genotype(out)
    from benchmark.core.paths import runs_dir
    record = be.load_record(next((runs_dir() / "nas").glob("bixnas-evolve-smoke-*.json")))
    n = len(record["candidates"])
    assert n >= 2 and g.meta["candidates"] == n and g.meta["source"] == "bench nas bixnas-evolve"
    assert g.meta["skips_kept"] <= g.meta["skips_phase1"] and g.meta["bionet_macs_per_patch"] > g.meta["macs_per_patch"]
    assert g.meta["budget_seconds"] > 0 and client().get_run(g.meta["mlflow_parent_run_id"]).info.status == "FINISHED"
    beside = be.load_record(out.parent / g.meta["record"])
    assert beside["result"] == g.meta
    assert beside["candidates"][be.genotype_key(g)]["val_dice"] == pytest.approx(g.meta["val_dice"], abs=1e-4)
    trained = []
    monkeypatch.setattr(be, "_train_candidate", lambda *a, **k: trained.append(a) or {})
    be.run_evolution("smoke", lean, phase1_epochs=1, candidate_epochs=1, samples=1, keep=1, tolerance=1.0, seed=0,
                     out=bench_home / "again.json", show_progress=False)
    assert trained == [] and load_genotype(bench_home / "again.json") == g


def test_rank_agreement_trains_the_top_candidates_once_and_reports_spearman(bench_home, monkeypatch):
    import benchmark.campaigns.bixnas_evolve as be
    from benchmark.core.paths import runs_dir
    g = prune(_phase_one())
    import numpy as np
    kids = [g] + stage_children(g, 5, 6, np.random.default_rng(0))
    short = [0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.20]
    record = {"format": "lidc-bench/bixnas-evolve/1", "mlflow_parent_run_id": None,
              "settings": {"preset": "smoke", "loss": "dice_bce", "overrides": [], "candidate_epochs": 3, "seed": 0},
              "candidates": {genotype_key(k): {"genotype": k.to_dict(), "val_dice": d} for k, d in zip(kids, short)}}
    path = runs_dir() / "nas" / "bixnas-evolve-smoke-test.json"
    be._save(record, path)
    final = {genotype_key(k): d for k, d in zip(kids, [0.7, 0.8, 0.6, 0.5, 0.4, 0.0, 0.0])}
    trained = []

    def fake_train(genotype, settings, overrides, epochs, parent, tags):
        trained.append((genotype_key(genotype), epochs))
        return {"val_dice": final[genotype_key(genotype)], "budget_s": 1.0, "epochs": epochs, "mlflow_run_id": "r"}
    monkeypatch.setattr(be, "_train_candidate", fake_train)
    res = be.rank_agreement(path, top=5, epochs=20, show_progress=False)
    assert [k for k, _ in trained] == [genotype_key(k) for k in kids[:5]] and {e for _, e in trained} == {20}
    assert res["spearman_rho"] == pytest.approx(0.9)      # one swap among five
    assert be.load_record(path)["rank_agreement"]["spearman_rho"] == pytest.approx(0.9)
    be.rank_agreement(path, top=5, epochs=20, show_progress=False)
    assert len(trained) == 5                               # resumed: nothing trained twice
    with pytest.raises(Exception, match="--top"):
        be.rank_agreement(path, top=9, epochs=20, show_progress=False)
