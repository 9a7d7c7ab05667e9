"""Protocol v7's machinery at the smoke preset: the data budget, the default recipe as trial 0,
successive halving that never prunes it, top-k rescoring, the recipe controls, the second sampler,
the part estimate, and protocols/smoke-v7.yaml end to end."""
from __future__ import annotations

import types
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"


def _lp(name: str = "smoke-v7"):
    from benchmark.campaigns.protocol import load_protocol
    return load_protocol(PROTOCOLS / f"{name}.yaml")


# ---------------------------------------------------------------------------------------------
# 1. the budget in samples
# ---------------------------------------------------------------------------------------------
def test_samples_per_epoch_holds_the_data_and_lets_the_steps_follow_the_batch():
    from benchmark.core.errors import UsageError
    from benchmark.data.loader import steps_per_epoch
    from benchmark.run.config import build_config
    small = build_config("smoke", ["train.samples_per_epoch=8", "train.batch_size=2"])
    large = build_config("smoke", ["train.samples_per_epoch=8", "train.batch_size=4"])
    assert (small.train.max_steps(), large.train.max_steps()) == (4, 2)
    n_rows = 16     # the smoke split's training nodules
    seen = [steps_per_epoch(n_rows, c.train.batch_size, c.train.max_steps()) * c.train.batch_size
            for c in (small, large)]
    assert seen == [8, 8]
    assert build_config("smoke", ["train.samples_per_epoch=7", "train.batch_size=2"]).train.max_steps() == 4
    with pytest.raises(UsageError, match="not both"):
        build_config("cpu", ["train.samples_per_epoch=160"])      # the cpu preset sets steps_per_epoch
    cpu = build_config("cpu", ["train.steps_per_epoch=null", "train.samples_per_epoch=160"])
    assert cpu.train.max_steps() == 20 == build_config("cpu", []).train.max_steps()


def test_a_config_without_the_new_field_keeps_its_fingerprint():
    from benchmark.run.config import build_config, without_unset_additions
    cfg = build_config("cpu", [])
    assert "samples_per_epoch" not in without_unset_additions(cfg.model_dump(mode="json"))["train"]
    assert cfg.fingerprint() != build_config("cpu", ["train.steps_per_epoch=null",
                                                     "train.samples_per_epoch=160"]).fingerprint()


def test_v6_plans_as_before():
    """v6 has none of the new fields: its trials, finals and defaults get no budget override and
    its studies' identity has no new key."""
    from benchmark.campaigns.protocol.plan import budget_overrides, default_cells, study_meta, tuning_overrides
    lp = _lp("cpu")
    assert budget_overrides(lp) == [] and "samples_per_epoch" not in study_meta(lp, "unet3d")
    assert study_meta(lp, "unet3d")["pruner"] == "median"
    assert tuning_overrides(lp) == ["train.epochs=20", "train.stop_after_epochs=6"]
    assert all(c.cfg.train.steps_per_epoch == 20 and c.cfg.train.samples_per_epoch is None
               for c in default_cells(lp) if not c.reference)


# ---------------------------------------------------------------------------------------------
# 2. the default recipe as trial 0
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["unet3d", "transfuse_s", "mctrans", "bionet"])
def test_trial_0_is_the_default_run_in_full(arch):
    """Trial 0's overrides build the default-settings run's config (same fingerprint) once that
    config states the searched kwargs' defaults (the network built is the same); the held
    size and the loss space are the study's, as for any trial."""
    from architectures import architecture_entry
    from benchmark.campaigns.protocol.plan import budget_overrides, held_size, study_meta, tuning_overrides
    from benchmark.campaigns.search_space import (RECIPE_ATTR, ConstrainedTrial, config_from_overrides,
                                                  default_recipe, trial_run_overrides)
    from benchmark.run.config import build_config
    lp = _lp("cpu-v7")
    held = held_size(lp, arch)
    params, exact = default_recipe(arch, "cpu", held)
    trial = optuna.trial.FixedTrial(params)
    trial.set_user_attr(RECIPE_ATTR, exact)
    meta = study_meta(lp, arch)
    cfg = config_from_overrides(meta, trial_run_overrides(ConstrainedTrial(trial, held, {}), meta,
                                                          tuning_overrides(lp)))
    searched = {k.removeprefix("arch."): v for k, v in params.items() if k.startswith("arch.")}
    default = build_config("cpu", budget_overrides(lp) + [f"train.epochs={cfg.train.epochs}"]
                           + [f"model.kwargs.{k}={v}" for k, v in searched.items()], **{"model.arch": arch})
    assert searched.keys() == {k for k in architecture_entry(arch).meta.get("search_defaults", {})
                               if f"arch.{k}" not in held}
    assert cfg.fingerprint() == default.fingerprint()
    assert cfg.optim.weight_decay == 0.0 and params["optim.weight_decay"] > 0   # trains 0, records the floor


def test_a_search_parameter_without_a_default_is_refused():
    from benchmark.core.errors import UsageError
    from benchmark.campaigns.search_space import _DefaultRecipeProbe
    with pytest.raises(UsageError, match="search_defaults"):
        _DefaultRecipeProbe("x", {}, {}, {}).suggest_float("arch.mystery", 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# 3. successive halving, the default recipe never pruned
# ---------------------------------------------------------------------------------------------
def test_successive_halving_is_built_from_the_declared_rungs():
    from benchmark.campaigns.tune import make_pruner
    lp = _lp("cpu-v7")
    assert lp.spec.tuning.pruner_name() == "successive_halving:5:3"
    p = make_pruner(lp.spec.tuning.pruner_name())
    assert isinstance(p, optuna.pruners.SuccessiveHalvingPruner)
    assert (p._min_resource, p._reduction_factor) == (5, 3)


@pytest.mark.parametrize("protected", [True, False])
def test_the_default_recipe_trial_is_never_pruned(monkeypatch, protected):
    """A trial far below the study's others at every rung: pruned, unless it is the enqueued
    default recipe, which trains its whole schedule."""
    from benchmark.campaigns.protocol.plan import study_meta
    from benchmark.campaigns.search_space import NEVER_PRUNE_ATTR
    from benchmark.campaigns.tune import make_pruner, objective_factory
    import benchmark.run.train as train

    def fake_run(cfg, on_epoch_end, **kw):
        for epoch in range(cfg.train.epochs):
            on_epoch_end(epoch, {"val_dice": 0.01})
        return types.SimpleNamespace(best_val_dice=0.01)
    monkeypatch.setattr(train, "run_experiment", fake_run)
    lp = _lp()
    meta = {**study_meta(lp, "unet3d"), "metric": "val_dice"}
    study = optuna.create_study(direction="maximize", pruner=make_pruner("successive_halving:1:2"))
    for _ in range(3):    # strong trials that reached every rung
        t = study.ask()
        for epoch in range(4):
            t.report(0.9, epoch)
            assert not t.should_prune()      # which records the rungs it reached
        study.tell(t, 0.9)
    study.enqueue_trial({}, user_attrs={NEVER_PRUNE_ATTR: True} if protected else {})
    objective = objective_factory(["train.epochs=4"], meta, {}, {}, parent_run_id="p")
    study.optimize(objective, n_trials=1)
    last = study.trials[-1]
    assert last.state == (optuna.trial.TrialState.COMPLETE if protected else optuna.trial.TrialState.PRUNED)


# ---------------------------------------------------------------------------------------------
# 4-6. rescoring, recipe controls and the second sampler, planned from made-up studies
# ---------------------------------------------------------------------------------------------
def _study(lp, arch: str, values: list[float], offset: int = 0, optimizer: str = "adam", batch: int = 2):
    """A complete study of ``arch`` with trials of the given values (trial i: a learning rate
    of 1e-3 x (i + 1)), as the objective records them."""
    from benchmark.campaigns.protocol.plan import StudyState, held_size, study_meta, tuning_overrides
    from benchmark.campaigns.search_space import OVERRIDES_ATTR, ConstrainedTrial, trial_run_overrides
    meta = study_meta(lp, arch, offset)
    study = optuna.create_study(direction="maximize")
    for i, v in enumerate(values):
        lr = "optim.sgd_lr" if optimizer == "sgd" else "optim.lr"
        fixed = {**held_size(lp, arch), "optim.optimizer": optimizer, lr: 1e-3 * (i + 1),
                 "optim.weight_decay": 1e-5, "train.batch_size": batch}
        trial = study.ask()
        trial.set_user_attr(OVERRIDES_ATTR, trial_run_overrides(ConstrainedTrial(trial, fixed, {}), meta,
                                                                tuning_overrides(lp)))
        study.tell(trial, v)
    st = StudyState(arch, lp.study_name(arch, offset), len(values), len(values), study.best_trial, offset=offset,
                    trials=study.trials)
    st.chosen = st.best_trial
    return st


def test_rescoring_cells_are_the_top_trials_on_new_seeds_validation_only():
    from benchmark.campaigns.protocol.rescore import RESCORE_SEED, rescore_cells, top_trials
    lp = _lp("cpu-v7")
    st = _study(lp, "unet3d", [0.3, 0.5, 0.4, 0.1], batch=8)
    assert [t.number for t in top_trials(lp, st)] == [1, 2]          # rescore: {top_k: 2, seeds: 1}
    cells = rescore_cells(lp, st)
    assert len(cells) == 2 * 1 and {c.cfg.train.seed for c in cells} == {RESCORE_SEED}
    assert all(not c.evaluate_test and c.tags["protocol.part"] == "rescore" for c in cells)
    assert all(c.cfg.train.epochs == 30 and c.cfg.train.samples_per_epoch == 160 for c in cells)
    assert [c.tags["optuna.trial"] for c in cells] == ["1", "2"]
    assert cells[0].cfg.optim.lr == pytest.approx(2e-3)


def test_the_chosen_trial_and_its_mean_tag_the_finals():
    from benchmark.campaigns.protocol.plan import tuned_cell
    lp = _lp("cpu-v7")
    st = _study(lp, "unet3d", [0.3, 0.5, 0.4], batch=8)
    st.rescored = {1: 0.41, 2: 0.44, 0: 0.30}
    st.chosen = st.trials[2]
    c = tuned_cell(lp, st, "dice_bce", 0, "final")
    assert c.tags["tuning.chosen_trial"] == "2" and c.tags["tuning.rescored_value"] == "0.44"
    assert c.tags["tuning.rescored_candidates"] == "t2:0.44,t1:0.41,t0:0.3"
    assert c.cfg.optim.lr == pytest.approx(3e-3) and c.evaluate_test


def test_shared_and_swap_cells_take_only_the_shared_space():
    from benchmark.campaigns.protocol.controls import recipe_of, shared_cells, swap_archs, swap_cells
    from benchmark.run.config import build_config
    lp = _lp()   # smoke-v7: unet3d, transfuse_s; swap_top 1
    states = {"unet3d": _study(lp, "unet3d", [0.2, 0.3], batch=4),
              "transfuse_s": _study(lp, "transfuse_s", [0.6, 0.5], optimizer="sgd", batch=2)}
    assert sorted(x.split("=")[0] for x in recipe_of(lp, states["transfuse_s"])) == \
        ["optim.lr", "optim.optimizer", "optim.weight_decay", "train.batch_size"]
    cells = shared_cells(lp, states)
    assert len(cells) == 2 * lp.spec.final.seeds
    for c in cells:
        assert c.tags["protocol.part"] == "shared" and c.tags["recipe.source"] == "transfuse_s"
        assert (c.cfg.optim.optimizer, c.cfg.optim.lr, c.cfg.train.batch_size) == ("sgd", 1e-3, 2)
        # its own knobs at the defaults: the default run's model, budget and schedule
        default = build_config("smoke", ["train.samples_per_epoch=8", "train.epochs=2"], **{"model.arch": c.arch})
        assert c.cfg.model == default.model and c.cfg.train.samples_per_epoch == 8
    assert swap_archs(lp, states) == ["transfuse_s", "unet3d"]
    swaps = swap_cells(lp, states)
    assert [(c.arch, c.tags["recipe.source"]) for c in swaps] == [("transfuse_s", "unet3d"), ("unet3d", "transfuse_s")]
    u = next(c for c in swaps if c.arch == "unet3d")
    assert (u.cfg.optim.optimizer, u.cfg.train.batch_size, u.tags["protocol.part"]) == ("sgd", 2, "swap")
    # a study still without its choice holds every control back
    states["unet3d"].chosen = None
    assert shared_cells(lp, states) is None and swap_cells(lp, states) is None


def test_second_sampler_takes_the_top_three_and_the_comparator():
    from benchmark.campaigns.protocol.controls import SECOND_SAMPLER_SEED, second_final_cells, second_sampler_archs
    from benchmark.campaigns.protocol.plan import study_meta
    lp = _lp("cpu-v7")
    values = {"unet3d": 0.1, "transfuse_s": 0.5, "nnunet_plain": 0.4, "mctrans": 0.6, "bixnas": 0.2}
    states = {a: _study(lp, a, [v], batch=8) for a, v in values.items()}
    assert second_sampler_archs(lp, states) == ["mctrans", "transfuse_s", "nnunet_plain", "unet3d"]
    assert lp.study_name("mctrans", 1) == "cpu-v7-mctrans-s1"
    assert study_meta(lp, "mctrans", 1)["sampler"] == "tpe:1:4"
    st = _study(lp, "mctrans", [0.5, 0.55], offset=1, batch=8)
    cells = second_final_cells(lp, st)
    assert [c.cfg.train.seed for c in cells] == [SECOND_SAMPLER_SEED + i for i in range(3)]
    assert all(c.tags["optuna.study"] == "cpu-v7-mctrans-s1" and c.tags["protocol.part"] == "final" for c in cells)


def test_v7_features_need_the_full_schedule(tmp_path):
    from benchmark.core.errors import UsageError
    from benchmark.campaigns.protocol import load_protocol
    text = (PROTOCOLS / "smoke-v7.yaml").read_text().replace("schedule: full", "schedule: truncated")
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(UsageError, match="schedule: full"):
        load_protocol(p)


# ---------------------------------------------------------------------------------------------
# 7. the estimate, and the smoke protocol end to end
# ---------------------------------------------------------------------------------------------
def test_part_estimate_of_cpu_v7():
    from benchmark.campaigns.protocol.budget import samples_factor
    from benchmark.campaigns.protocol.estimate import expected_trial_epochs, part_costs
    lp = _lp("cpu-v7")
    assert samples_factor(lp) == 1.0
    assert expected_trial_epochs(lp) == pytest.approx(5 + 10 / 3 + 15 / 9)   # rungs at 5 and 15 of 30
    pc = part_costs(lp)
    sec = lp.spec.seconds_per_epoch["unet3d"]
    assert pc.hours["tuning (upper bound)"]["unet3d"] == pytest.approx(10 * 30 * sec / 3600)
    assert pc.hours["rescore"]["unet3d"] == pytest.approx(2 * 30 * sec / 3600)
    assert pc.hours["final"]["unet3d"] == pc.hours["shared recipe"]["unet3d"] == pytest.approx(3 * 30 * sec / 3600)
    assert pc.hours["default"]["unet3d"] == pytest.approx(2 * 30 * sec / 3600)


def test_the_status_looks_for_the_default_runs_the_runner_trains(bench_home, tmp_path, monkeypatch):
    """v7's default rows train with the protocol's data budget (``plan.default_cells``); the
    status looked for them without it, so cpu v7's two finished default runs read 0/2 and were
    counted as cost left (seen 2026-12-07). Every default cell the runner would train is one the
    status asks the store about."""
    from benchmark.campaigns.protocol import load_protocol, protocol_status
    from benchmark.campaigns.protocol import status as status_mod
    from benchmark.campaigns.protocol.plan import default_cells
    text = (PROTOCOLS / "smoke-v7.yaml").read_text()
    assert "\n  seeds: 0  " in text
    path = tmp_path / "smoke-v7.yaml"
    path.write_text(text.replace("\n  seeds: 0  ", "\n  seeds: 2  "))
    asked: set = set()
    real = status_mod._StatusReport.dry_run

    def recording(self, cells):
        asked.update(c.cfg.fingerprint() for c in cells)
        return real(self, cells)
    monkeypatch.setattr(status_mod._StatusReport, "dry_run", recording)
    protocol_status(path)
    lp = load_protocol(path)
    trained = {c.cfg.fingerprint() for c in default_cells(lp) if not c.reference}
    assert len(trained) == 2 * len(lp.spec.architectures) and trained <= asked
    # and the runner trains them as the tuned rows: v7's default rows on the finals' 30 epochs
    # (up to 2026-12-07 they trained the preset's 20), v6's on the preset's 20 as before
    assert {c.cfg.train.epochs for c in default_cells(_lp("cpu-v7")) if not c.reference} == {30}
    assert {c.cfg.train.epochs for c in default_cells(_lp("cpu")) if not c.reference} == {20}


@pytest.mark.slow
def test_smoke_v7_runs_to_completion(bench_home, tmp_path, monkeypatch, migrated_store_template):
    """Every part of smoke-v7 trains, with its tags; a second run trains nothing; the status
    reports the choices. Exported (`bench protocol export`) and imported into a fresh store, as
    `tools/protocol-session` carries a protocol from one machine to the next, every v7 part
    (rescoring, shared recipe, swap, the second sampler's study) arrives: a run there trains
    nothing either."""
    from benchmark.core.tracking import client, experiment_id, load_settings, search_all_runs
    from benchmark.campaigns.protocol import protocol_status, run_protocol
    from benchmark.campaigns.protocol.rescore import rescore_cells
    path = PROTOCOLS / "smoke-v7.yaml"
    lp = _lp()
    res = run_protocol(path, show_progress=False)
    assert not res.stopped
    stages = dict(res.suites)
    assert not any(r.failed for _, r in res.suites)
    first = {a: res.studies[a] for a in ("unet3d", "transfuse_s")}
    assert all(st.finished == 2 and st.chosen is not None and st.rescored for st in first.values())
    assert {"shared recipe", "recipe swap", "final smoke-v7-unet3d-s1"} <= set(stages)
    settings = load_settings()
    cl = client(settings)
    runs = search_all_runs(cl, [experiment_id(cl, settings, None)], "attributes.status = 'FINISHED'")
    by_part: dict = {}
    for r in runs:
        by_part.setdefault(r.data.tags.get("protocol.part"), []).append(r)
    # each study's top complete trials (successive halving may have pruned one) x 1 seed; the
    # second study's trial 0 is the same default recipe as the first's: one run serves both
    planned = {c.cfg.fingerprint() for st in res.studies.values() for c in rescore_cells(lp, st)}
    assert len(by_part["rescore"]) == len(planned) >= 3
    assert not any("test_dice" in r.data.metrics for r in by_part["rescore"])
    assert len(by_part["shared"]) == 2 * 2 and len(by_part["swap"]) == 2
    finals = by_part["final"]
    assert {r.data.tags["optuna.study"] for r in finals} == {"smoke-v7-unet3d", "smoke-v7-transfuse_s",
                                                            "smoke-v7-unet3d-s1"}
    assert all("tuning.chosen_trial" in r.data.tags for r in finals)
    # the same data at any batch: 2 epochs x 8 samples
    assert {r.data.tags["budget.samples_seen"] for r in finals + by_part["shared"]} == {"16"}
    again = run_protocol(path, show_progress=False)
    assert not any(r.ran for _, r in again.suites)
    text = protocol_status(path)
    assert "rescore smoke-v7-unet3d: chosen trial" in text and "shared recipe: 4/4 runs done" in text

    import shutil

    from benchmark.campaigns.protocol import export_protocol
    from benchmark.cli.main import main
    done = export_protocol(path, tmp_path / "carry.runs")
    assert set(done.trials) == {"smoke-v7-unet3d", "smoke-v7-transfuse_s", "smoke-v7-unet3d-s1"}
    fresh = tmp_path / "next-machine"
    (fresh / "runs").mkdir(parents=True)
    shutil.copy(migrated_store_template, fresh / "runs" / "mlflow.db")
    monkeypatch.setenv("LIDC_BENCH_HOME", str(fresh))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["import", str(done.path)]) == 0
    there = run_protocol(path, show_progress=False)
    assert not any(r.ran or r.resumed or r.failed for _, r in there.suites), \
        [(name, r.ran) for name, r in there.suites if r.ran]
    def choices(result):
        return {a: (st.chosen.number, st.chosen.params) for a, st in result.studies.items()}
    assert choices(there) == choices(again)
    assert "shared recipe: 4/4 runs done" in protocol_status(path)


@pytest.mark.slow
def test_a_pruned_trial_says_how_many_samples_it_saw(bench_home):
    """A pruned trial's run stops before training closes, where the engine tags the samples
    seen; the tuning objective tags it instead (epochs trained x the epoch's samples)."""
    from benchmark.campaigns.tune import objective_factory
    from benchmark.core.tracking import client

    class PruneAtOnce(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "smoke"}
    overrides = ["train.samples_per_epoch=8", "train.batch_size=2", "train.epochs=3", "eval.overlays=false"]
    study = optuna.create_study(direction="maximize", pruner=PruneAtOnce())
    study.optimize(objective_factory(overrides, meta, {}, {}, None), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    run = client().get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["budget.samples_seen"] == "8" and run.data.tags["pruned_at_epoch"] == "1"


def test_bench_tune_offers_successive_halving_and_hands_it_to_its_workers():
    import argparse

    from benchmark.campaigns.tune import _pruner_arguments, make_pruner
    from benchmark.cli import tune as cli_tune
    from benchmark.core.errors import UsageError
    parser = argparse.ArgumentParser()
    cli_tune.register(parser.add_subparsers())
    args = parser.parse_args(["tune", "--pruner", "successive_halving", "--min-epochs", "5", "--reduction-factor", "3"])
    name = cli_tune.pruner_name(args)
    pruner = make_pruner(name)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (5, 3)
    # a worker process started by `bench tune --workers K` parses the same pruner back
    again = parser.parse_args(["tune", *_pruner_arguments(name)])
    assert cli_tune.pruner_name(again) == name
    assert cli_tune.pruner_name(parser.parse_args(["tune"])) == "median"
    with pytest.raises(UsageError, match="reduction-factor"):
        cli_tune.pruner_name(parser.parse_args(["tune", "--pruner", "successive_halving", "--reduction-factor", "1"]))
