"""`bench tune`: parent/child MLflow runs, parallel journal workers, pruning, resume, PostgreSQL."""
import os
from pathlib import Path

import optuna
import pytest
from conftest import run_cli

FAST = ["--fix", "arch.base_channels=8", "--fix", "train.batch_size=4", "train.epochs=2"]


def _children(parent_id):
    from benchmark.core.tracking import client
    cl = client()
    exp = cl.get_experiment_by_name("lidc-bench")
    return cl.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def _study(name, storage=None):
    from benchmark.campaigns.tune import open_study
    return open_study(name, storage, 1, None, create=False)[0]


@pytest.mark.slow
def test_tune_lifecycle_children_resume_report_params_from_and_refusal(bench_home, capsys):
    """One study through its life: the CLI makes a parent with a child run per trial (tuning
    never touches test); a rerun with more trials resumes the same study and parent; --report
    writes Optuna's plots; `bench run --params-from` trains the best trial's parameters; the same
    study with another loss is refused. Only the first command crosses a process boundary (the
    one a user starts); the rest call the CLI in-process, as the bad-input tests do."""
    from benchmark.cli.main import main
    from benchmark.core.tracking import client
    args = ["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "life", "--pruner", "none", "--no-progress", *FAST]
    r = run_cli(*args, "--trials", "2", env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 0, r.stderr[-2000:]
    parent = _study("life").user_attrs["mlflow_parent_run_id"]
    children = _children(parent)
    assert len(children) == 2 and {c.data.tags["optuna.state"] for c in children} == {"COMPLETE"}
    assert all("test_dice" not in c.data.metrics for c in children)  # tuning never touches test
    assert all("val_dice" in c.data.metrics for c in children)

    assert main([*args, "--trials", "3"]) == 0                       # resume: one more trial
    study = _study("life")
    assert len(study.trials) == 3 and study.user_attrs["mlflow_parent_run_id"] == parent
    assert sorted(int(c.data.tags["optuna.trial"]) for c in _children(parent)) == [0, 1, 2]

    capsys.readouterr()
    assert main(["tune", "--report", "life"]) == 0
    assert "best trial" in capsys.readouterr().out
    arts = {a.path for a in client().list_artifacts(parent, "optuna")}
    assert "optuna/optimization_history.png" in arts and "optuna/parallel_coordinate.png" in arts

    assert main(["run", "--params-from", "life", "--preset", "smoke", "train.epochs=1", "--no-progress"]) == 0
    run_id = capsys.readouterr().out.split()[1].rstrip(":")
    run = client().get_run(run_id)
    assert run.data.tags["optuna.study"] == "life" and "test_dice" in run.data.metrics
    best = study.best_trial.params       # the rate is optim.lr (Adam, AdamW) or optim.sgd_lr (SGD)
    assert float(run.data.params["optim.lr"]) == pytest.approx(best.get("optim.lr", best.get("optim.sgd_lr")))

    assert main(["tune", "--arch", "unet3d", "--loss", "dice", "--trials", "1", "--preset", "smoke",
                 "--study", "life"]) == 2
    assert "was created with loss=dice_bce" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_share_one_journal_study(bench_home):
    r = run_cli("tune", "--arch", "unet3d", "--trials", "5", "--preset", "smoke", "--study", "par", "--workers", "2",
                "--pruner", "none", "--no-progress", *FAST, env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 0, r.stderr[-2000:]
    study = _study("par")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5 and len(states) == 5
    pids = {t.user_attrs["worker_pid"] for t in study.trials}
    assert len(pids) == 2, "both workers ran trials"
    children = _children(study.user_attrs["mlflow_parent_run_id"])
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_constructed_bad_trial_is_pruned(bench_home):
    from benchmark.campaigns.tune import open_study, run_worker
    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "smoke"}
    study, _ = open_study("prune", None, 1, meta, "median")
    # two finished trials that reached validation Dice 0.99 at every epoch: anything real is worse
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": 1e-3}, distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            value=0.99, intermediate_values={0: 0.99, 1: 0.99, 2: 0.99}))
    run_worker("prune", None, 3, meta, ["train.epochs=3"], {"arch.base_channels": 8, "train.batch_size": 4}, {},
               "median", show_progress=False)
    study = _study("prune")
    bad = study.trials[-1]
    assert bad.state == optuna.trial.TrialState.PRUNED
    from benchmark.core.tracking import client
    run = client().get_run(bad.user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "PRUNED" and run.info.status == "KILLED"


def test_a_study_on_soft_dice_reports_and_maximises_it(monkeypatch):
    """`metric: val_soft_dice` (a protocol's tuning.metric): each epoch reports the soft Dice to
    the pruner and the trial's value is its best epoch's soft Dice, not the thresholded Dice the
    run selects its checkpoint by; an unknown metric is refused before anything trains."""
    from benchmark.run import train as train_mod
    from benchmark.core.errors import UsageError
    from benchmark.campaigns.tune import objective_factory
    curve = [{"val_dice": 0.0, "val_soft_dice": 0.05}, {"val_dice": 0.0, "val_soft_dice": 0.21},
             {"val_dice": 0.1, "val_soft_dice": 0.18}]

    def fake_run(cfg, on_epoch_end, on_run_start, **kw):
        on_run_start("0" * 32)
        for epoch, metrics in enumerate(curve):
            on_epoch_end(epoch, metrics)
        return train_mod.RunResult(None, 0.1, 3, 3, False)
    monkeypatch.setattr(train_mod, "run_experiment", fake_run)
    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "smoke", "loss_space": False, "metric": "val_soft_dice"}
    study = optuna.create_study(direction="maximize")
    study.optimize(objective_factory([], meta, {}, {}, "p" * 32), n_trials=1)
    [t] = study.trials
    assert t.value == pytest.approx(0.21) and t.intermediate_values == {0: 0.05, 1: 0.21, 2: 0.18}
    plain = optuna.create_study(direction="maximize")
    plain.optimize(objective_factory([], {**meta, "metric": "val_dice"}, {}, {}, "p" * 32), n_trials=1)
    assert plain.trials[0].value == pytest.approx(0.1)
    with pytest.raises(UsageError, match="tuning metric 'val_iou'"):
        objective_factory([], {**meta, "metric": "val_iou"}, {}, {}, "p" * 32)


@pytest.mark.slow   # two tuning workers in a subprocess (~50 s on CI, where PostgreSQL runs; skipped elsewhere)
def test_postgres_storage(bench_home):
    url = os.environ.get("LIDC_BENCH_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("LIDC_BENCH_TEST_POSTGRES_URL not set: .ci/run starts PostgreSQL with .ci/start-postgres")
    name = f"pg-{os.getpid()}"
    r = run_cli("tune", "--arch", "unet3d", "--trials", "2", "--preset", "smoke", "--study", name, "--storage", url,
                "--workers", "2", "--pruner", "none", "--no-progress", *FAST, env={"LIDC_BENCH_HOME": str(bench_home)})
    assert r.returncode == 0, r.stderr[-2000:]
    study = _study(name, url)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 2


def test_sqlite_refused_for_parallel_workers(bench_home, capsys):
    from benchmark.cli.main import main
    code = main(["tune", "--arch", "unet3d", "--trials", "2", "--preset", "smoke", "--study", "x", "--workers", "2",
                 "--storage", f"sqlite:///{bench_home}/o.db"])
    assert code == 2 and "not safe for parallel" in capsys.readouterr().err


def test_a_constraint_on_a_parameter_no_trial_uses_is_refused(empty_home, capsys):
    """`--fix`/`--narrow` of a name the trials never suggest would be ignored: it is refused, in
    one line naming it and the parameters that exist, before a study or run is created."""
    from benchmark.cli.main import main
    base = ["tune", "--arch", "unet3d", "--preset", "smoke", "--study", "typo", "--trials", "1"]
    assert main([*base, "--fix", "optim.lrr=1e-3", "--narrow", "arch.base_channels=16,24",
                 "--narrow", "arch.depth=2:4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: no such search parameter: --fix optim.lrr, --narrow arch.depth; the trials of "
                          "unet3d with loss dice_bce use "), err
    for name in ("arch.base_channels", "arch.dropout", "optim.lr", "optim.sgd_lr", "train.batch_size"):
        assert name in err
    assert not (empty_home / "runs").exists()           # neither a journal nor a tracking store was created


@pytest.mark.slow
def test_declared_parameters_cover_every_branch_of_every_space():
    """The names `--fix`/`--narrow` accept are exactly those real trials suggest: every branch of
    the categoricals is visited (SGD's own learning rate is behind the optimiser's third choice)."""
    from benchmark.campaigns.search_space import declared_parameters, suggested_values
    assert declared_parameters("unet3d", "dice_bce", "cpu") == {
        "optim.optimizer", "optim.lr", "optim.sgd_lr", "optim.weight_decay", "train.batch_size",
        "arch.base_channels", "arch.dropout", "loss.lambda_dice", "loss.lambda_ce"}
    assert "loss.lambda_dice" not in declared_parameters("unet3d", "dice_bce", "cpu", loss_space=False)
    for _kind, arch, loss in _spaces():
        declared = declared_parameters(arch, loss, "smoke")
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: suggested_values(t, arch, loss, "smoke") and 0.0, n_trials=12)
        seen = set().union(*(t.params for t in study.trials))
        assert seen <= declared, (arch, loss, seen - declared)
        assert {n.split(".")[0] for n in declared - seen} <= {"optim"}, (arch, loss)   # only a rate not drawn


# ---------------------------------------------------------------------------------------------
# exact replay: no training, the config a trial's objective builds against its replay
# ---------------------------------------------------------------------------------------------
def _sampled_trials(meta, base, n=3, fixed=None):
    """Frozen trials of an in-memory study whose objective builds (not trains) the trial's config,
    each with the fingerprint of the config the trial itself would have trained."""
    from benchmark.campaigns.search_space import (OVERRIDES_ATTR, ConstrainedTrial, config_from_overrides,
                                                  trial_run_overrides)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=7))

    def objective(trial):
        overrides = trial_run_overrides(ConstrainedTrial(trial, fixed or {}, {}), meta, base)
        for k, v in (fixed or {}).items():
            trial.set_user_attr(f"fixed.{k}", v)
        trial.set_user_attr(OVERRIDES_ATTR, overrides)
        trial.set_user_attr("config_fingerprint", config_from_overrides(meta, overrides).fingerprint())
        return 0.0

    study.optimize(objective, n_trials=n)
    return study.trials


def _spaces():
    from architectures import list_architectures
    from benchmark.losses import list_losses
    cases = [("arch", a, "dice_bce") for a in list_architectures()]
    cases += [("loss", "unet3d", lo) for lo in list_losses()]
    return cases


@pytest.mark.parametrize("kind,arch,loss", _spaces(), ids=lambda v: str(v))
def test_replay_rebuilds_the_trial_config_exactly(kind, arch, loss):
    from benchmark.campaigns.search_space import OVERRIDES_ATTR, config_from_overrides, replay_overrides
    meta = {"arch": arch, "loss": loss, "preset": "cpu"}
    base = ["train.epochs=3"]
    for t in _sampled_trials(meta, base):
        want = t.user_attrs["config_fingerprint"]
        assert config_from_overrides(meta, replay_overrides(t, meta)).fingerprint() == want
        # a trial from before the overrides were recorded: its search space is re-run on its params
        old = optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=0.0,
                                        user_attrs={k: v for k, v in t.user_attrs.items() if k != OVERRIDES_ATTR})
        assert config_from_overrides(meta, replay_overrides(old, meta) + base).fingerprint() == want


def test_replay_keeps_derived_values():
    """The two cases the parameter-name rebuild got wrong: unetr's width, Tversky's alpha."""
    from benchmark.campaigns.search_space import config_from_overrides, replay_overrides
    meta = {"arch": "unetr", "loss": "tversky", "preset": "cpu"}
    old = optuna.trial.create_trial(
        params={"optim.lr": 1e-3, "optim.weight_decay": 1e-5, "optim.optimizer": "adam", "train.batch_size": 8,
                "arch.hidden_size": 384, "arch.dropout_rate": 0.1, "loss.beta": 0.8},
        distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                       "optim.weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True),
                       "optim.optimizer": optuna.distributions.CategoricalDistribution(["adam", "adamw", "sgd"]),
                       "train.batch_size": optuna.distributions.CategoricalDistribution([4, 8, 16]),
                       "arch.hidden_size": optuna.distributions.CategoricalDistribution([192, 384]),
                       "arch.dropout_rate": optuna.distributions.FloatDistribution(0.0, 0.2),
                       "loss.beta": optuna.distributions.FloatDistribution(0.5, 0.9)}, value=0.5)
    cfg = config_from_overrides(meta, replay_overrides(old, meta))
    assert cfg.model.kwargs["hidden_size"] == 384 and cfg.model.kwargs["num_heads"] == 6
    assert cfg.model.kwargs["mlp_dim"] == 4 * 384
    assert cfg.loss.kwargs["alpha"] == pytest.approx(0.2) and cfg.loss.kwargs["beta"] == pytest.approx(0.8)


@pytest.mark.parametrize("arch", ["unet3d", "unetr", "transfuse_s", "dints"])
def test_a_protocol_that_holds_sizes_tunes_the_presets_network(arch, tmp_path):
    """`tuning.size: preset` fixes every knob the preset sizes: the trial trains the very network
    the default runs train (same size kwargs), samples none of its size parameters, and replays
    exactly; the other knobs (dropout, optimiser, batch) are still searched."""
    from architectures import architecture_entry
    from benchmark.run.config import build_config
    from benchmark.campaigns.protocol.plan import held_size
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.search_space import config_from_overrides, replay_overrides
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\nversion: 1\npreset: cpu\narchitectures: [{arch}]\nreference_arch: {arch}\n"
                    "tuning: {n_trials: 2, epochs: 1, size: preset}\nfinal: {seeds: 3}\n")
    lp = load_protocol(path)
    fixed = held_size(lp, arch)
    sized = architecture_entry(arch).meta["preset_kwargs"]["cpu"]
    assert fixed == {f"arch.{k}": v for k, v in sized.items()} and fixed
    meta = {"arch": arch, "loss": "dice_bce", "preset": "cpu", "loss_space": False}
    default = build_config("cpu", [], **{"model.arch": arch}).model.kwargs
    for t in _sampled_trials(meta, [], n=3, fixed=fixed):
        cfg = config_from_overrides(meta, t.user_attrs["overrides"])
        assert {k: cfg.model.kwargs[k] for k in sized} == {k: default[k] for k in sized}
        assert not set(t.params) & set(fixed) and {"optim.lr", "optim.sgd_lr"} & set(t.params)
        assert config_from_overrides(meta, replay_overrides(t, meta)).fingerprint() == t.user_attrs["config_fingerprint"]
    searched = tmp_path / "q.yaml"
    searched.write_text(path.read_text().replace("size: preset", "size: search"))
    assert held_size(load_protocol(searched), arch) == {}


def test_learning_rate_range_follows_the_optimiser():
    """SGD's rate is its own parameter over a range ten times Adam's (LR_RANGES); either way the
    config gets it as optim.lr."""
    from benchmark.campaigns.search_space import LR_RANGES, config_from_overrides
    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "cpu", "loss_space": False}
    trials = _sampled_trials(meta, [], n=12)
    by_optimiser = {t.params["optim.optimizer"] for t in trials}
    assert by_optimiser == {"adam", "adamw", "sgd"}
    for t in trials:
        opt = t.params["optim.optimizer"]
        name = "optim.sgd_lr" if opt == "sgd" else "optim.lr"
        low, high = LR_RANGES[opt]
        assert low <= t.params[name] <= high and ({"optim.lr", "optim.sgd_lr"} - {name}).isdisjoint(t.params)
        assert config_from_overrides(meta, t.user_attrs["overrides"]).optim.lr == pytest.approx(t.params[name])


def test_protocol_tuning_leaves_the_loss_at_its_defaults():
    from benchmark.campaigns.search_space import config_from_overrides
    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "cpu", "loss_space": False}
    for t in _sampled_trials(meta, [], n=2):
        assert not any(o.startswith("loss.") for o in t.user_attrs["overrides"])
        assert config_from_overrides(meta, t.user_attrs["overrides"]).loss.kwargs == {}


def _random_start_up_trials(sampler, seed: int, n: int = 12) -> int:
    """How many trials ``sampler`` draws as the seeded random sampler does before TPE takes over
    (observed through the public study API: same draws while it samples at random)."""
    def draws(s):
        study = optuna.create_study(sampler=s)
        study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2, n_trials=n)
        return [t.params["x"] for t in study.trials]
    same = [a == b for a, b in zip(draws(sampler), draws(optuna.samplers.RandomSampler(seed=seed)))]
    return same.index(False) if False in same else n


def test_declared_tpe_start_up_trials_reach_the_sampler():
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.tune import make_sampler
    cpu = load_protocol(Path(__file__).resolve().parent.parent / "protocols" / "cpu.yaml").spec.tuning
    assert cpu.startup_trials == 5
    sampler = make_sampler((cpu.sampler, cpu.sampler_seed, cpu.startup_trials))
    assert _random_start_up_trials(sampler, cpu.sampler_seed) == 5
    assert _random_start_up_trials(make_sampler(("tpe", 0)), 0) == 10          # Optuna's default


def test_a_study_can_start_from_the_default_optimiser():
    """`tuning.first_trial: default_optimiser`: trial 0 trains the default rows' optimiser,
    learning rate and batch (the architecture's own knobs drawn), so tuning has always tried them."""
    from benchmark.run.config import build_config
    from benchmark.campaigns.search_space import (ConstrainedTrial, config_from_overrides, default_optimiser_params,
                                                  trial_run_overrides)
    meta = {"arch": "unet3d", "loss": "dice_bce", "preset": "cpu", "loss_space": False}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(default_optimiser_params("unet3d", "cpu"))
    trial = study.ask()
    cfg = config_from_overrides(meta, trial_run_overrides(ConstrainedTrial(trial, {}, {}), meta, []))
    default = build_config("cpu", [], **{"model.arch": "unet3d"})
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.train.batch_size) == \
        (default.optim.optimizer, default.optim.lr, default.train.batch_size)
    assert cfg.optim.weight_decay == 1e-6 and default.optim.weight_decay == 0.0   # the range's floor
    assert "arch.dropout" in trial.params                                          # still drawn


def test_protocol_enqueues_the_default_trial_once(bench_home, tmp_path, monkeypatch):
    from benchmark.campaigns import tune as tune_mod
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol.runner import tune_arch
    monkeypatch.setattr(tune_mod, "run_worker", lambda *a, **k: 0)     # no training: the queue is the point
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nversion: 1\npreset: cpu\narchitectures: [unet3d]\n"
                    "tuning: {n_trials: 2, epochs: 1, first_trial: default_optimiser}\nfinal: {seeds: 3}\n")
    lp = load_protocol(path)
    for _ in range(2):                                                # a rerun does not queue it again
        tune_arch(lp, "unet3d", None, show_progress=False)
    [waiting] = _study(lp.study_name("unet3d")).get_trials(deepcopy=False)
    assert waiting.state == optuna.trial.TrialState.WAITING
    assert waiting.system_attrs["fixed_params"] == {"optim.optimizer": "adam", "optim.lr": 3e-3, "optim.weight_decay": 1e-6,
                              "train.batch_size": 8}
