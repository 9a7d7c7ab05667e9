"""`bench protocol`: the declared protocol files, replay into final cells, and the smoke protocol end to end."""
from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from benchmark.core.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


# one architecture, one trial, two 1-epoch finals: the smallest protocol that tunes and trains
ONE_STUDY = """
name: t
version: 1
preset: smoke
architectures: [unet3d]
tuning: {n_trials: 1, epochs: 1}
final: {seeds: 2, epochs: 1, overrides: [eval.overlays=false]}
defaults: {seeds: 0, references: false}
seconds_per_epoch: {unet3d: 1.0}
"""


GOOD = """
name: t
version: 1
preset: cpu
architectures: [unet3d, transfuse_s]
tuning: {n_trials: 4, epochs: 2}
final: {seeds: 3}
loss_study: {archs: [unet3d, best], losses: [dice_bce, dice_bce_rm], seeds: 3}
"""


def test_declared_protocols_are_valid_and_fair():
    from architectures import list_architectures
    from benchmark.losses import list_losses
    from benchmark.campaigns.protocol import load_protocol
    for name in ("smoke", "cpu", "paper"):
        lp = load_protocol(PROTOCOLS / f"{name}.yaml")
        assert lp.spec.preset == name and lp.spec.reference_arch == "unet3d" and len(lp.sha) == 12
    cpu = load_protocol(PROTOCOLS / "cpu.yaml").spec
    assert set(cpu.architectures) <= set(list_architectures())
    assert cpu.final.seeds >= 3 and cpu.loss_study.seeds >= 3 and cpu.defaults.seeds >= 3
    # every registered loss that trains alone; the Residual Moment loss as dice_bce_rm
    assert set(cpu.loss_study.losses) == set(list_losses()) - {"residual_moment"}
    assert set(cpu.seconds_per_epoch) == set(cpu.architectures)


def test_every_architecture_is_in_a_protocol_or_declared_experimental():
    """A published protocol is frozen, so a new architecture is never added to one: it is
    declared experimental (registration metadata) until a protocol that lists it is written."""
    from architectures import is_experimental, list_architectures
    from benchmark.campaigns.protocol import load_protocol
    listed = set()
    for path in sorted(PROTOCOLS.glob("*.yaml")):
        listed.update(load_protocol(path).spec.architectures)
    orphans = [a for a in list_architectures() if a not in listed and not is_experimental(a)]
    assert not orphans, f"list {orphans} in a protocol or register them with experimental=True"
    # the architectures benchmarked so far are all in one
    assert not [a for a in list_architectures() if is_experimental(a)]


@pytest.mark.parametrize("change,message", [
    ("final: {seeds: 2}", "final.seeds must be >= 3"),
    ("tuning: {n_trials: 0, epochs: 2}", "tuning.n_trials"),
    ("reference_arch: unetr", "reference_arch"),
    ("loss_study: {archs: [unet3d], losses: [dice], seeds: 3}", "must include the tuning loss"),
    ("name: ../x", "name"),
    ("surprise: 1", "surprise"),
])
def test_bad_protocol_is_one_clear_error(tmp_path, change, message):
    from benchmark.campaigns.protocol import load_protocol
    key = change.split(":")[0]
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(key + ":")) + "\n" + change + "\n"
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_protocol(_write(tmp_path, text))


def test_unknown_architecture_and_bad_yaml(tmp_path):
    from benchmark.campaigns.protocol import load_protocol
    with pytest.raises(UsageError, match="nosuchnet"):
        load_protocol(_write(tmp_path, GOOD.replace("transfuse_s]", "nosuchnet]")))
    with pytest.raises(UsageError, match="not valid YAML"):
        load_protocol(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(UsageError, match="not found"):
        load_protocol(tmp_path / "none.yaml")


def _frozen_trial(lp, arch: str, number: int = 0, value: float = 0.5):
    """A finished trial of the protocol's study, built the way the objective builds one."""
    from benchmark.campaigns.protocol.plan import study_meta, tuning_overrides
    from benchmark.campaigns.search_space import (OVERRIDES_ATTR, ConstrainedTrial, config_from_overrides,
                                                  trial_run_overrides)
    meta = study_meta(lp, arch)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=number))
    trial = study.ask()
    overrides = trial_run_overrides(ConstrainedTrial(trial, {}, {}), meta, tuning_overrides(lp))
    trial.set_user_attr(OVERRIDES_ATTR, overrides)
    study.tell(trial, value)
    frozen = study.trials[0]
    frozen.number = number
    return frozen, config_from_overrides(meta, overrides)


def test_final_cell_is_the_best_trial_with_the_final_budget(tmp_path):
    from benchmark.campaigns.protocol.plan import StudyState, tuned_cell
    from benchmark.campaigns.protocol import load_protocol
    lp = load_protocol(_write(tmp_path, GOOD))
    for arch in ("unet3d", "transfuse_s"):
        best, trial_cfg = _frozen_trial(lp, arch)
        st = StudyState(arch, lp.study_name(arch), 4, 4, best, 10.0)
        cell = tuned_cell(lp, st, "dice_bce", 2, "final")
        assert trial_cfg.train.epochs == 2 and cell.cfg.train.epochs == 20 and cell.cfg.train.seed == 2
        # nothing else changes: the trial's config with the final budget and seed is the cell's config
        want = trial_cfg.model_copy(deep=True)
        want.train.epochs, want.train.seed = 20, 2
        assert cell.cfg.fingerprint() == want.fingerprint()
        assert cell.tags["protocol.name"] == "t" and cell.tags["protocol.sha"] == lp.sha
        assert cell.tags["optuna.study"] == f"t-v1-{arch}" and cell.cfg.loss.kwargs == {}
        # the loss study's dice_bce cell is this very experiment (not trained twice)
        assert tuned_cell(lp, st, "dice_bce", 2, "loss").cfg.fingerprint() == cell.cfg.fingerprint()
        assert tuned_cell(lp, st, "dice_bce_rm", 2, "loss").cfg.loss.name == "dice_bce_rm"


def test_a_truncated_trial_is_the_beginning_of_the_final_run(tmp_path):
    """`tuning.schedule: truncated`: a trial trains the first `epochs` epochs of the final runs'
    schedule (same train.epochs, stop_after_epochs set), and its final cell trains every epoch of
    exactly that config; the compressed default gives a trial a schedule of its own."""
    from benchmark.campaigns.protocol.plan import StudyState, tuned_cell
    from benchmark.campaigns.protocol import load_protocol
    lp = load_protocol(_write(tmp_path, GOOD.replace("epochs: 2}", "epochs: 2, schedule: truncated}")))
    best, trial_cfg = _frozen_trial(lp, "unet3d")
    assert (trial_cfg.train.epochs, trial_cfg.train.stop_after_epochs) == (20, 2)
    cell = tuned_cell(lp, StudyState("unet3d", lp.study_name("unet3d"), 4, 4, best, 10.0), "dice_bce", 1, "final")
    want = trial_cfg.model_copy(deep=True)
    want.train.stop_after_epochs, want.train.seed = None, 1
    assert cell.cfg.train.stop_after_epochs is None and cell.cfg.fingerprint() == want.fingerprint()
    assert cell.tags["tuning.budget"] == "4 trials x first 2 of 20 epochs, median pruner"
    compressed = load_protocol(_write(tmp_path, GOOD))
    _, cfg = _frozen_trial(compressed, "unet3d")
    assert (cfg.train.epochs, cfg.train.stop_after_epochs) == (2, None)


def test_loss_study_takes_the_runner_up_when_unet3d_is_best(tmp_path):
    from benchmark.campaigns.protocol.plan import StudyState, loss_study_archs
    from benchmark.campaigns.protocol import load_protocol
    text = GOOD.replace("[unet3d, transfuse_s]", "[unet3d, transfuse_s, nnunet_plain]")
    lp = load_protocol(_write(tmp_path, text))
    states = {a: StudyState(a, a, 4, 4, _frozen_trial(lp, a, value=v)[0])
              for a, v in (("unet3d", 0.9), ("transfuse_s", 0.5), ("nnunet_plain", 0.7))}
    assert loss_study_archs(lp, states) == ["unet3d", "nnunet_plain"]
    states["transfuse_s"] = StudyState("transfuse_s", "x", 2, 4)          # still tuning: not decided yet
    assert loss_study_archs(lp, states) is None


def test_loss_study_cap_is_declared_and_skips_only_what_it_costs_too_much(tmp_path):
    """`best_max_hours` keeps an architecture whose loss study costs more than the cap out of the
    choice of 'best' (SwinUNETR on two cores), whatever its validation Dice; the next best takes it."""
    from benchmark.campaigns.protocol.plan import StudyState, loss_study_archs
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol.budget import loss_study_hours
    text = (GOOD.replace("[unet3d, transfuse_s]", "[unet3d, transfuse_s, nnunet_plain]")
            .replace("dice_bce_rm], seeds: 3}", "dice_bce_rm], seeds: 3, best_max_hours: 1}")
            + "seconds_per_epoch: {unet3d: 10, transfuse_s: 200, nnunet_plain: 10}\n")
    lp = load_protocol(_write(tmp_path, text))
    # 1 other loss x 3 seeds x 20 epochs x 200 s = 3.33 h > 1 h; x 10 s = 0.17 h
    assert loss_study_hours(lp, "transfuse_s") == pytest.approx(3 * 20 * 200 / 3600)
    states = {a: StudyState(a, a, 4, 4, _frozen_trial(lp, a, value=v)[0])
              for a, v in (("unet3d", 0.5), ("transfuse_s", 0.9), ("nnunet_plain", 0.7))}
    assert loss_study_archs(lp, states) == ["unet3d", "nnunet_plain"]
    uncapped = load_protocol(_write(tmp_path, text.replace(", best_max_hours: 1", "")))
    assert loss_study_archs(uncapped, states) == ["unet3d", "transfuse_s"]


def test_best_does_not_wait_for_an_architecture_that_cannot_be_chosen(tmp_path, monkeypatch):
    """An architecture over `best_max_hours` cannot be 'best' whatever it scores, so its study
    (SwinUNETR's 10.9 h on two cores) does not hold the choice up: 'best' is decided once the
    candidates are tuned, and in this process its loss cells run right after the last
    candidate's default runs, before the expensive architecture is tuned."""
    from benchmark.campaigns.protocol import runner
    import benchmark.campaigns.suite as suite
    from benchmark.campaigns.protocol.plan import StudyState, loss_study_archs
    from benchmark.campaigns.protocol import load_protocol
    text = (GOOD.replace("[unet3d, transfuse_s]", "[unet3d, nnunet_plain, transfuse_s]")
            .replace("dice_bce_rm], seeds: 3}", "dice_bce_rm], seeds: 3, best_max_hours: 1}")
            + "seconds_per_epoch: {unet3d: 10, transfuse_s: 200, nnunet_plain: 10}\n"
            + "defaults: {seeds: 3, references: false}\n")
    path = _write(tmp_path, text)
    lp = load_protocol(path)
    tuned = {a: StudyState(a, a, 4, 4, _frozen_trial(lp, a, value=v)[0])
             for a, v in (("unet3d", 0.9), ("nnunet_plain", 0.7))}
    still_tuning = StudyState("transfuse_s", "x", 1, 4)
    assert loss_study_archs(lp, {**tuned, "transfuse_s": still_tuning}) == ["unet3d", "nnunet_plain"]
    assert loss_study_archs(lp, tuned) == ["unet3d", "nnunet_plain"]     # not even started
    # a candidate still tuning does hold it up
    assert loss_study_archs(lp, {"unet3d": tuned["unet3d"], "nnunet_plain": StudyState("nnunet_plain", "y", 1, 4)}) is None

    states = {**tuned, "transfuse_s": StudyState("transfuse_s", "x", 4, 4, _frozen_trial(lp, "transfuse_s", value=0.99)[0])}
    monkeypatch.setattr(runner, "study_state", lambda lp, arch, storage: states[arch])
    submitted = []

    def fake_run_cells(cells, label, *a, **k):
        submitted.append((label, {(c.arch, c.tags.get("protocol.part")) for c in cells}))
        return suite.SuiteResult()
    monkeypatch.setattr(suite, "run_cells", fake_run_cells)
    runner.run_protocol(path, show_progress=False)
    labels = [label for label, _ in submitted]
    best_at = labels.index("loss study [best: nnunet_plain]")
    assert labels[best_at - 1] == "defaults [nnunet_plain]" and best_at < labels.index("final [transfuse_s]")
    assert submitted[best_at][1] == {("nnunet_plain", "loss")}
    # transfuse_s's 0.99 changes nothing: it was never a candidate
    assert not any(arch == "transfuse_s" and part == "loss" for _, cells in submitted for arch, part in cells)


def test_searched_architectures_wait_for_a_recorded_search_on_the_protocols_preset(tmp_path, monkeypatch):
    """A NAS architecture whose genotype is missing, or not from a finished search on the
    protocol's preset, would train a placeholder under the searched name: the protocol leaves it
    out (and 'best' undecided) until the genotype is there; the smoke preset accepts any genotype."""
    import json

    from architectures import architecture_entry, searched_genotype_problem
    from benchmark.campaigns.protocol.plan import StudyState, loss_study_archs, waiting_for_search
    from benchmark.campaigns.protocol import load_protocol
    entry = architecture_entry("dints")
    monkeypatch.setitem(entry.meta, "genotype", str(tmp_path / "dints_genotype.json"))
    text = GOOD.replace("[unet3d, transfuse_s]", "[unet3d, dints]")
    lp = load_protocol(_write(tmp_path, text))
    assert "dints_genotype.json does not exist: run `bench search dints --preset cpu`" in waiting_for_search(lp)["dints"]
    (tmp_path / "dints_genotype.json").write_text(json.dumps({"meta": {"preset": "smoke", "budget_seconds": 9.0}}))
    assert "not from a recorded cpu search (preset 'smoke'" in searched_genotype_problem("dints", "cpu")
    assert searched_genotype_problem("dints", "smoke") is None and searched_genotype_problem("unet3d", "cpu") is None
    # while dints waits, the loss study cannot pick 'best' from the architectures that are tuned
    states = {"unet3d": StudyState("unet3d", "u", 4, 4, _frozen_trial(lp, "unet3d", value=0.9)[0])}
    assert loss_study_archs(lp, states) is None
    (tmp_path / "dints_genotype.json").write_text(json.dumps({"meta": {"preset": "cpu", "budget_seconds": 9.0}}))
    assert waiting_for_search(lp) == {}


@pytest.mark.parametrize("on_cluster", [False, True])
def test_a_named_loss_study_architecture_does_not_wait_for_best(tmp_path, monkeypatch, on_cluster):
    """While 'best' is undecided (dints waits for its search), unet3d's loss cells run as soon as
    its own study is done: in this process right after its default runs, on a cluster in the
    loss stage."""
    from benchmark.campaigns.protocol import runner
    import benchmark.campaigns.suite as suite
    from architectures import architecture_entry
    from benchmark.campaigns.protocol.plan import StudyState
    from benchmark.campaigns.protocol import load_protocol
    monkeypatch.setitem(architecture_entry("dints").meta, "genotype", str(tmp_path / "none.json"))
    path = _write(tmp_path, GOOD.replace("[unet3d, transfuse_s]", "[unet3d, dints]")
                  .replace("final: {seeds: 3}", "final: {seeds: 3}\ndefaults: {seeds: 3, references: false}"))
    lp = load_protocol(path)
    best = _frozen_trial(lp, "unet3d", value=0.9)[0]
    monkeypatch.setattr(runner, "study_state", lambda lp, arch, storage: StudyState(arch, "s", 4, 4, best, 1.0))
    monkeypatch.setattr(runner, "_tune_on_cluster", lambda *a, **k: None)
    submitted = []

    def fake_run_cells(cells, label, *a, **k):
        submitted.append((label, [(c.arch, c.loss, c.tags.get("protocol.part")) for c in cells]))
        return suite.SuiteResult()
    monkeypatch.setattr(suite, "run_cells", fake_run_cells)
    runner.run_protocol(path, show_progress=False, executor=object() if on_cluster else None)
    loss_stages = [(label, cells) for label, cells in submitted if any(part == "loss" for _, _, part in cells)]
    want = sorted(("unet3d", loss, "loss") for _seed in range(3) for loss in ("dice_bce", "dice_bce_rm"))
    assert loss_stages and all(sorted(cells) == want for _, cells in loss_stages)
    labels = [label for label, _ in submitted]
    if on_cluster:
        assert [label for label, _ in loss_stages] == ["loss study"]
    else:   # right after its defaults; the closing loss stage finds the same cells (done, in a real store)
        assert labels.index("loss study [unet3d]") == labels.index("defaults [unet3d]") + 1
    assert not any(arch == "dints" for _, cells in submitted for arch, _, _ in cells)


@pytest.mark.slow
def test_status_builds_no_crop_cache(bench_home, tmp_path, monkeypatch):
    """`bench protocol status` is a look at the store: on a machine without the crop cache it
    reports the cells as not done and builds nothing (it once spent 7 minutes building crops)."""
    from benchmark.campaigns.protocol import protocol_status
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("LIDC_BENCH_CACHE", str(cache))
    status = protocol_status(PROTOCOLS / "cpu.yaml")
    assert re.search(r"^unet3d\s+0/12\s+0/3\s+0/3", status, re.M), status
    assert not cache.exists() or not any(cache.iterdir())


def test_time_limit_refuses_what_would_not_end_in_time_and_everything_after(bench_home, tmp_path):
    """`--hours`: a trial or run is started only if its estimate (seconds_per_epoch) ends within
    the limit; once one is refused the protocol stops in its own order; no estimate, no refusal."""
    from benchmark.run.config import build_config
    from benchmark.campaigns.protocol.budget import TimeLimit
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.suite import Cell
    lp = load_protocol(_write(tmp_path, GOOD + "seconds_per_epoch: {unet3d: 10, transfuse_s: 1000}\n"))
    limit = TimeLimit(lp, hours=1.0)
    assert limit.trial("unet3d") is None                      # 2 epochs x 10 s x the largest tuning batch
    # a trial's batch is drawn once it runs, so it is costed at the largest (16 / 8: 40 s), not at
    # the mean (9.3 / 8: 23 s), which fits in 30 s
    assert "unet3d trial would take" in TimeLimit(lp, hours=30 / 3600).trial("unet3d")
    cfg = build_config("cpu", ["train.batch_size=16"], **{"model.arch": "unet3d"})   # the preset's: 8
    assert limit.cell(Cell("unet3d", "dice_bce", 0, cfg)) is None            # 20 epochs x 10 s x 2
    why = limit.cell(Cell("transfuse_s", "dice_bce", 0, cfg))               # 20 epochs x 1000 s x 2
    assert why and "transfuse_s" in why and "667 min" in why and limit.stopped == why
    assert limit.trial("unet3d") == why                       # nothing starts after the first refusal
    assert TimeLimit(lp, hours=1.0).trial("bixnas") is None   # no estimate: started


def test_pause_runs_starts_a_run_whose_next_epoch_fits_and_pauses_it_when_the_next_does_not(bench_home, tmp_path):
    """`--hours --pause-runs`: a run needs one epoch's time to start, not its whole budget; its
    pause check lets it go on while the epoch just trained fits in the time left, and once it
    does not, pauses it and stops the protocol; trials still need all of their time."""
    from benchmark.run.config import build_config
    from benchmark.campaigns.protocol.budget import TimeLimit
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.suite import Cell
    lp = load_protocol(_write(tmp_path, GOOD + "seconds_per_epoch: {unet3d: 10, transfuse_s: 1000}\n"))
    cfg = build_config("cpu", ["train.batch_size=16"], **{"model.arch": "unet3d"})   # the preset's: 8
    big = Cell("transfuse_s", "dice_bce", 0, cfg)                       # 20 epochs x 1000 s x 2
    assert TimeLimit(lp, hours=1.0).cell(big)                           # refused without pausing
    limit = TimeLimit(lp, hours=1.0, pause_runs=True)
    assert limit.cell(big) is None                                      # its first epoch: 2000 s
    check = limit.pause(big)
    assert check(2000.0) is None and not limit.stopped
    limit.start -= 1700                                                 # 1900 s left
    why = check(2000.0)
    assert why == limit.stopped and why.startswith("run transfuse_s/dice_bce/s0 paused: its next epoch")
    assert "33 min" in why and "32 min of --hours 1 are left" in why
    assert limit.cell(Cell("unet3d", "dice_bce", 0, cfg)) == why        # nothing starts after it
    short = TimeLimit(lp, hours=1500 / 3600, pause_runs=True)
    assert "an epoch of run transfuse_s/dice_bce/s0 would take about 33 min" in short.cell(big)
    assert "unet3d trial" in TimeLimit(lp, hours=30 / 3600, pause_runs=True).trial("unet3d")


def test_pause_runs_needs_hours(bench_home, tmp_path):
    from benchmark.cli.main import main
    path = _write(tmp_path, GOOD.replace("preset: cpu", "preset: smoke"))
    assert main(["protocol", "run", str(path), "--pause-runs", "--no-progress"]) == 2
    # --wait likewise: without --hours it would wait for ever
    assert main(["protocol", "run", str(path), "--wait", "--no-progress"]) == 2


def test_a_preset_without_batch_or_epochs_is_costed_at_the_run_configs_defaults(tmp_path, monkeypatch):
    """The cost estimates read a preset's batch and epochs in one place each, and a preset that
    sets neither is costed at what its runs train with (the run config's defaults, 16 and 100);
    they once fell back to three different figures."""
    from benchmark.run.config import PRESETS, TrainConfig
    from benchmark.campaigns.protocol.spec import final_epochs
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol.budget import preset_batch, tuning_batch_factor
    from benchmark.campaigns.search_space import BATCH_CHOICES
    monkeypatch.setitem(PRESETS, "bare", {k: v for k, v in PRESETS["cpu"].items() if k != "train"})
    assert preset_batch("bare") == TrainConfig().batch_size == 16
    assert preset_batch("cpu") == PRESETS["cpu"]["train"]["batch_size"]
    choices = BATCH_CHOICES.get("bare", [4, 8])
    assert tuning_batch_factor("bare") == pytest.approx(sum(choices) / len(choices) / 16)
    lp = load_protocol(_write(tmp_path, GOOD.replace("preset: cpu", "preset: bare")))
    assert final_epochs(lp) == TrainConfig().epochs == 100
    assert final_epochs(load_protocol(_write(tmp_path, GOOD))) == PRESETS["cpu"]["train"]["epochs"]


def test_time_limit_goes_by_this_machines_speed_once_it_has_one(bench_home, tmp_path):
    """The declared 1000 s per epoch came from another machine; two finished transfuse_s runs of
    the protocol here took 0.5 and 1.5 s per epoch at the preset's batch: the limit goes by their
    median. A run of the architecture from another campaign (no protocol tags) does not count."""
    from benchmark.campaigns.protocol.budget import TimeLimit, measured_seconds_per_epoch
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.core.tracking import client, experiment_id, load_settings
    lp = load_protocol(_write(tmp_path, GOOD + "seconds_per_epoch: {unet3d: 10, transfuse_s: 1000}\n"))
    cl = client()
    exp = experiment_id(cl, load_settings())
    other = _fake_run(cl, exp, {"arch": "transfuse_s", "preset": "cpu"}, tmp_path)   # a search's candidate, say
    cl.log_metric(other, "train_seconds", 900.0)
    cl.log_metric(other, "epochs_completed", 1)
    cl.log_param(other, "train.batch_size", 8)
    for seconds, batch in ((20.0, 16), (30.0, 8)):       # 20 epochs each: 0.5 and 1.5 s per epoch at batch 8
        rid = _fake_run(cl, exp, {"arch": "transfuse_s", "preset": "cpu", **lp.tags}, tmp_path)
        cl.log_metric(rid, "train_seconds", seconds)
        cl.log_metric(rid, "epochs_completed", 20)
        cl.log_param(rid, "train.batch_size", batch)
    assert measured_seconds_per_epoch(lp, "transfuse_s") == pytest.approx(1.0)
    assert measured_seconds_per_epoch(lp, "unet3d") is None
    limit = TimeLimit(lp, hours=0.01)                          # 36 s
    assert limit.seconds_per_epoch("transfuse_s") == pytest.approx(1.0)
    assert limit.seconds_per_epoch("unet3d") == 10             # none measured: the declared figure
    assert limit.trial("transfuse_s") is None                  # 2 epochs x 1 s x the largest tuning batch
    # `protocol status` shows both figures; its costs stay on the declared ones
    from benchmark.campaigns.protocol import protocol_status
    status = protocol_status(lp.path)
    assert re.search(r"^transfuse_s\s+0/4\s+0/3\s+0/0\s+\S+\s+\S+\s+1000\.0, 1\.0$", status, re.M), status
    assert re.search(r"^unet3d\s+0/4\s+0/3\s+0/0\s+\S+\s+\S+\s+10\.0, -$", status, re.M), status


def test_status_costs_a_done_studys_runs_at_its_tuned_batch(bench_home, tmp_path):
    """unet3d's study is done and its best trial trained at batch 16, twice the cpu preset's 8: its
    final runs and its loss-study cells (unet3d is named there) cost twice a preset-batch run each;
    the status once costed them at the preset's batch (swinunetr: 7.2 h left where 9.7 h was right)."""
    from benchmark.campaigns.protocol.spec import final_epochs
    from benchmark.campaigns.protocol import load_protocol, protocol_status
    from benchmark.campaigns.protocol.budget import tuning_batch_factor
    from benchmark.campaigns.search_space import OVERRIDES_ATTR
    from benchmark.core.optuna_storage import open_storage
    text = GOOD.replace("n_trials: 4", "n_trials: 2") + "seconds_per_epoch: {unet3d: 10, transfuse_s: 20}\n"
    lp = load_protocol(_write(tmp_path, text))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(None)[0], study_name=lp.study_name("unet3d"),
                                direction="maximize")
    dist = {"train.batch_size": optuna.distributions.CategoricalDistribution([4, 8, 16])}
    for value, batch in ((0.4, 8), (0.6, 16)):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=value, params={"train.batch_size": batch},
            distributions=dist, user_attrs={OVERRIDES_ATTR: [f"train.batch_size={batch}"]}))
    status = protocol_status(lp.path)
    epochs = final_epochs(lp)
    unet3d_run = 10 * epochs * 2                                  # seconds, at batch 16
    assert re.search(rf"^unet3d\s+2/2\s+0/3\s+0/0\s+\S+\s+{3 * unet3d_run / 3600:.2f}\s", status, re.M), status
    assert "loss study unet3d: 0 done, 6 left" in status         # 2 losses x 3 seeds, all at batch 16
    # transfuse_s is not tuned: 2 trials at the mean tuning batch, then 3 finals at the preset's;
    # the loss study's 3 dice_bce cells are unet3d's finals, costed once, on its row
    transfuse_s = 2 * 2 * 20 * tuning_batch_factor("cpu") + 3 * 20 * epochs
    expected = 3 * unet3d_run + 3 * unet3d_run + transfuse_s
    assert f"estimated cost left: {expected / 3600:.1f} h" in status, status


def test_a_protocol_with_no_time_for_its_first_trial_starts_nothing(bench_home, tmp_path, capsys):
    from benchmark.cli.main import main
    from benchmark.campaigns.protocol import run_protocol
    from benchmark.core.optuna_storage import open_storage
    path = _write(tmp_path, GOOD.replace("preset: cpu", "preset: smoke") + "seconds_per_epoch: {unet3d: 100000}\n")
    res = run_protocol(path, show_progress=False, hours=1)
    assert res.stopped.startswith("a unet3d trial would take about") and not res.suites
    assert optuna.get_all_study_names(open_storage(None)[0]) == []           # not even a study created
    assert main(["protocol", "run", str(path), "--hours", "0.5", "--no-progress"]) == 0
    assert "stopped at the time limit: a unet3d trial" in capsys.readouterr().out
    assert main(["protocol", "run", str(path), "--hours", "-1"]) == 2


@pytest.mark.slow
def test_a_run_that_would_overrun_the_time_limit_is_left_for_the_next_time(bench_home, tmp_path, monkeypatch):
    """Both smoke trials fit in the hour (1 epoch, estimated 1500 s each); a final run does not
    (2 epochs, 4000 s): the study is complete, the run is deferred, nothing after it starts.
    (The declared speed stands throughout: the smoke trials' own speed is left unmeasured.)"""
    from benchmark.campaigns.protocol import budget, run_protocol
    monkeypatch.setattr(budget, "measured_seconds_per_epoch", lambda *a, **k: None)
    path = _smoke_unet3d_protocol(tmp_path, n_trials=2, final_epochs=2, seconds_per_epoch=2000)
    res = run_protocol(path, show_progress=False, hours=1)
    assert res.studies["unet3d"].finished == 2 and res.studies["unet3d"].best_trial is not None
    stages = dict(res.suites)
    assert [label for label, _ in stages["final unet3d"].deferred] == ["unet3d/dice_bce/s0", "unet3d/dice_bce/s1"]
    assert not stages["final unet3d"].ran and not stages["defaults unet3d"].ran
    assert res.stopped.startswith("run unet3d/dice_bce/s0 would take about 67 min")


@pytest.mark.slow
def test_a_paused_run_is_resumed_by_the_next_protocol_run_from_its_epoch(bench_home, tmp_path, monkeypatch):
    """The time runs out once s0 has started (the clock is moved on as it is let start): it is
    paused after its first epoch (KILLED, checkpoint kept, s1 not started); the status and the
    time limit cost it its 2 epochs left, not 3; and the next protocol run resumes that same run,
    trains its remaining epochs, and runs s1."""
    from benchmark.campaigns.protocol import budget
    from benchmark.campaigns.protocol.budget import TimeLimit, cell_batch_factor, epochs_left
    from benchmark.campaigns.protocol import load_protocol, protocol_status, run_protocol
    from benchmark.campaigns.protocol.plan import tuned_cell, study_state
    from benchmark.core.tracking import client
    monkeypatch.setattr(budget, "measured_seconds_per_epoch", lambda *a, **k: None)
    let_start = TimeLimit.cell

    def cell_then_time_is_up(self, c, resume=None):
        why = let_start(self, c, resume)
        if why is None and not c.reference:
            self.start -= self.hours * 3600
        return why
    monkeypatch.setattr(TimeLimit, "cell", cell_then_time_is_up)
    path = _smoke_unet3d_protocol(tmp_path, n_trials=1, final_epochs=3, seconds_per_epoch=60)
    res = run_protocol(path, show_progress=False, hours=1, pause_runs=True)
    final = dict(res.suites)["final unet3d"]
    assert [label for label, _ in final.paused] == ["unet3d/dice_bce/s0"] and not final.ran
    assert [label for label, _ in final.deferred] == ["unet3d/dice_bce/s1"]
    assert res.stopped.startswith("run unet3d/dice_bce/s0 paused: its next epoch")
    run_id = final.paused[0][1]
    run = client().get_run(run_id)
    assert run.info.status == "KILLED"
    assert len(client().get_metric_history(run_id, "epoch_seconds")) == 1

    lp = load_protocol(path)
    assert epochs_left(lp, run_id) == 2 and epochs_left(lp) == 3
    s0 = tuned_cell(lp, study_state(lp, "unet3d", None), "dice_bce", 0, "final")
    bf = cell_batch_factor(lp, s0)
    assert f"resuming run unet3d/dice_bce/s0 would take about {2 * 60 * bf / 60:.0f} min" in \
        TimeLimit(lp, hours=60 / 3600).cell(s0, run_id)
    left = (2 + 3) * 60 * bf + 3 * 60                  # s0's 2 epochs, s1's 3, the default run's 3
    row = rf"^unet3d\s+1/1\s+0/2\s+0/1\s+\S+\s+{left / 3600:.2f}\s"
    assert re.search(row, protocol_status(path), re.M)
    # the same while a live process trains it (this one, as far as its owner tags say)
    from benchmark.core.liveness import owner_tags
    for key, value in owner_tags().items():
        client().set_tag(run_id, key, value)
    client().update_run(run_id, "RUNNING")
    assert re.search(row, protocol_status(path), re.M)
    client().set_terminated(run_id, "KILLED")

    monkeypatch.setattr(TimeLimit, "cell", let_start)
    res = run_protocol(path, show_progress=False)
    final = dict(res.suites)["final unet3d"]
    assert final.resumed == [("unet3d/dice_bce/s0", run_id)]
    assert [label for label, _ in final.ran] == ["unet3d/dice_bce/s1"]
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and "test_dice" in run.data.metrics
    assert [m.step for m in client().get_metric_history(run_id, "epoch_seconds")] == [1, 2, 3]


def _smoke_unet3d_protocol(tmp_path, n_trials: int, final_epochs: int, seconds_per_epoch: float) -> Path:
    """unet3d alone on the smoke preset: trials of 1 epoch, 2 final seeds (no test overlays), 1
    default run, no references; the time limit goes by ``seconds_per_epoch``."""
    return _write(tmp_path, f"""
name: t
version: 1
preset: smoke
architectures: [unet3d]
tuning: {{n_trials: {n_trials}, epochs: 1}}
final: {{seeds: 2, epochs: {final_epochs}, overrides: [eval.overlays=false]}}
defaults: {{seeds: 1, references: false}}
seconds_per_epoch: {{unet3d: {seconds_per_epoch}}}
""")


def _fake_run(cl, exp_id, tags, tmp_path, test_dice=0.5):
    """A finished run as the protocol logs one (tags, test metric, per-nodule table), untrained."""
    run = cl.create_run(exp_id, tags=tags)
    cl.log_metric(run.info.run_id, "test_dice", test_dice)
    csv = tmp_path / "per_nodule.csv"
    csv.write_text("nodule_id,dice,nsd,hd95_mm\nLIDC-0001_n01,0.5,0.5,3.0\n")
    cl.log_artifact(run.info.run_id, str(csv), "evaluation")
    cl.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_status_says_what_each_architecture_has_cost_so_far(bench_home, tmp_path):
    """Beside what is left, the status sums what the protocol has spent: a study's trials (wall
    time) plus its finished final and default runs' training time per architecture, the loss-study
    runs on their own line, and the total with its largest share (on two cores SwinUNETR was half
    of the cpu protocol). A run of another protocol or one still running is not counted."""
    import datetime as dt

    from benchmark.campaigns.protocol import load_protocol, protocol_status
    from benchmark.core.tracking import client, experiment_id, load_settings
    from benchmark.core.optuna_storage import open_storage
    lp = load_protocol(_write(tmp_path, GOOD))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(None)[0], study_name=lp.study_name("unet3d"),
                                direction="maximize")
    dist = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    start = dt.datetime(2026, 12, 1, 10, 0, 0)
    for minutes in (30, 60):                                     # two trials: 1.5 h of wall time
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=optuna.trial.TrialState.COMPLETE, value=0.5, values=None,
            datetime_start=start, datetime_complete=start + dt.timedelta(minutes=minutes),
            params={"optim.lr": 1e-3}, distributions=dist, user_attrs={}, system_attrs={},
            intermediate_values={}))
    cl = client()
    exp = experiment_id(cl, load_settings())
    mine = {"protocol.name": "t", "protocol.version": "1"}
    for arch, part, seconds in (("unet3d", "final", 1800), ("unet3d", "default", 1080),
                                ("unet3d", "loss", 3600), ("transfuse_s", "final", 1800)):
        rid = _fake_run(cl, exp, {**mine, "arch": arch, "protocol.part": part}, tmp_path)
        cl.log_metric(rid, "train_seconds", seconds)
    other = _fake_run(cl, exp, {"protocol.name": "t", "protocol.version": "2", "arch": "unet3d",
                                "protocol.part": "final"}, tmp_path)
    cl.log_metric(other, "train_seconds", 99999)
    running = cl.create_run(exp, tags={**mine, "arch": "unet3d", "protocol.part": "final"}).info.run_id
    cl.log_metric(running, "train_seconds", 99999)
    status = protocol_status(lp.path)
    assert re.search(r"^unet3d\s+2/4\s+0/3\s+0/0\s+2\.30\s", status, re.M), status   # 1.5 + 0.5 + 0.3
    assert re.search(r"^transfuse_s\s+0/4\s+0/3\s+0/0\s+0\.50\s", status, re.M), status
    # unet3d's loss runs (1 h) count in the total, though its loss line waits for its study
    assert "spent so far: 3.8 h" in status and "unet3d 2.3 h of it (61 %)" in status, status


def test_status_says_when_the_protocols_runs_were_made_on_other_data(bench_home, tmp_path, monkeypatch):
    """A store imported from a machine whose crop cache rendered other bits: its runs are not
    matched here (a cell is done only on the same data), so without a word the status showed
    finished architectures as 0/3. It now says how many runs, on which data, and what to compare."""
    import benchmark.data.store as store_mod
    from benchmark.campaigns.protocol import load_protocol, protocol_status
    from benchmark.campaigns.protocol.status import runs_on_other_data
    from benchmark.core.tracking import client, experiment_id, load_settings
    lp = load_protocol(_write(tmp_path, GOOD))
    cl = client()
    exp = experiment_id(cl, load_settings())
    mine = {"protocol.name": "t", "protocol.version": "1", "arch": "unet3d"}
    for data in ("566cd2e8bb299f2a", "566cd2e8bb299f2a", "46e242d30efb1ae2"):
        _fake_run(cl, exp, {**mine, "data.content_hash": data}, tmp_path)
    _fake_run(cl, exp, {**mine, "protocol.version": "2", "data.content_hash": "0123456789abcdef"}, tmp_path)
    monkeypatch.setattr(store_mod, "built_data_hash", lambda data_cfg: "46e242d30efb1ae2")
    note = runs_on_other_data(lp)
    assert note.startswith("warning: 2 finished runs of this protocol were made on other data than this "
                           "machine's crop cache (data 46e242d30efb1ae2): 2 on data 566cd2e8bb299f2a.")
    assert "0123456789abcdef" not in note               # another version of the protocol is not this one
    assert note in protocol_status(lp.path)
    monkeypatch.setattr(store_mod, "built_data_hash", lambda data_cfg: "566cd2e8bb299f2a")
    assert "1 on data 46e242d30efb1ae2" in runs_on_other_data(lp)
    monkeypatch.setattr(store_mod, "built_data_hash", lambda data_cfg: None)   # no cache built: nothing to compare
    assert runs_on_other_data(lp) is None
    assert "warning" not in protocol_status(lp.path)


@pytest.mark.slow
def test_export_carries_the_finished_runs_and_trials_to_a_fresh_store(bench_home, tmp_path, monkeypatch,
                                                                       migrated_store_template):
    """`bench protocol export` then `bench import` elsewhere: the protocol's scored runs (under
    their ids) and its studies' finished trials arrive; trial runs, other protocols' runs and a
    trial still running stay behind."""
    import shutil

    from benchmark.cli.main import main
    from benchmark.results.run_export import read_export
    from benchmark.campaigns.protocol import export_protocol, load_protocol
    from benchmark.campaigns.protocol.plan import study_state
    from benchmark.core.tracking import client, experiment_id, load_settings
    from benchmark.core.optuna_storage import open_storage
    path = _write(tmp_path, GOOD)
    lp = load_protocol(path)
    cl = client()
    exp = experiment_id(cl, load_settings())
    keep = {_fake_run(cl, exp, {**lp.tags, "protocol.part": part, "arch": "unet3d"}, tmp_path)
            for part in ("final", "default", "loss", "reference")}
    _fake_run(cl, exp, {**lp.tags, "protocol.part": "tuning"}, tmp_path)
    _fake_run(cl, exp, {**lp.tags, "protocol.version": "0", "protocol.part": "final"}, tmp_path)
    _fake_run(cl, exp, {"arch": "unet3d"}, tmp_path)
    S = optuna.trial.TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(None)[0], study_name=lp.study_name("unet3d"),
                                direction="maximize")
    dist = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for i, state in enumerate([S.COMPLETE, S.PRUNED, S.COMPLETE]):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.5 + i / 10 if state == S.COMPLETE else None, params={"optim.lr": 1e-3},
            distributions=dist, intermediate_values={0: 0.1}, user_attrs={"mlflow_run_id": f"{i:032x}"}))
    study.enqueue_trial({"optim.lr": 2e-3})
    study.ask()                                   # a trial this machine is running: RUNNING

    done = export_protocol(path, tmp_path / "carry.runs")
    assert done.runs == 4 and done.trials == {lp.study_name("unet3d"): 3}
    assert {r.run_id for r in read_export(done.path)} == keep

    fresh = tmp_path / "elsewhere"
    (fresh / "runs").mkdir(parents=True)
    shutil.copy(migrated_store_template, fresh / "runs" / "mlflow.db")
    monkeypatch.setenv("LIDC_BENCH_HOME", str(fresh))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)   # mlflow.set_tracking_uri exported the first store's
    assert main(["import", str(done.path)]) == 0
    st = study_state(lp, "unet3d", None)
    assert st.finished == 3 and st.n_trials == 4 and st.best_trial is None      # resumes at trial 4
    there = client().search_runs([experiment_id(client(), load_settings())], "")
    assert {r.data.tags["import.original_run_id"] for r in there} == keep
    # exported again from the second machine: the same runs under the same ids
    again = export_protocol(path, tmp_path / "again.runs")
    assert {r.run_id for r in read_export(again.path)} == keep and again.trials == done.trials


# 12 smoke runs (2 trials, 4 finals, 2 default runs, 4 loss-study runs; only the default runs draw
# test overlays), then a rerun; on two cores shared with other work its wall time has passed the
# project's 900 s per-test limit, hence the larger limit here
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_protocol_end_to_end_and_rerun_trains_nothing(bench_home, monkeypatch, tmp_path, migrated_store_template):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    from benchmark.results.leaderboard import generate
    from benchmark.campaigns.protocol import load_protocol, protocol_status, run_protocol
    from benchmark.core.tracking import client
    from benchmark.core.optuna_storage import open_storage
    path = PROTOCOLS / "smoke.yaml"
    lp = load_protocol(path)
    res = run_protocol(path, show_progress=False)
    stages = dict(res.suites)
    assert not any(r.failed for r in stages.values()), [r.failed for r in stages.values()]
    assert all(st.finished == 1 and st.best_trial is not None for st in res.studies.values())
    # in this process each architecture's stages come in turn; a named loss-study architecture's
    # loss cells follow its defaults, and 'best''s follow the defaults of the last candidate for it
    assert [name for name, _ in res.suites] == [
        "final unet3d", "defaults unet3d", "loss study unet3d", "final transfuse_s", "defaults transfuse_s",
        "loss study transfuse_s", "defaults", "loss study"]
    assert all(len(stages[f"final {a}"].ran) == 2 for a in ("unet3d", "transfuse_s"))
    # each architecture's default run (one seed) comes right after its tuned ones; the last stage finds them done
    assert len(stages["defaults unet3d"].ran) == len(stages["defaults transfuse_s"].ran) == 1
    assert not stages["defaults"].ran and len(stages["defaults"].skipped) == 2
    # loss study: unet3d and best (transfuse_s) x 2 losses x 2 seeds; the dice_bce cells are the
    # final runs, and each architecture's own cells were trained in its turn
    for a in ("unet3d", "transfuse_s"):
        assert len(stages[f"loss study {a}"].ran) == 2 and len(stages[f"loss study {a}"].skipped) == 2
    assert not stages["loss study"].ran and len(stages["loss study"].skipped) == 8
    ran = {label.rsplit("/", 1)[0] for a in ("unet3d", "transfuse_s") for label, _ in stages[f"loss study {a}"].ran}
    assert ran == {"unet3d/dice_bce_rm", "transfuse_s/dice_bce_rm"}

    cl = client()
    final_id = stages["final unet3d"].ran[0][1]
    run = cl.get_run(final_id)
    assert {k: run.data.tags.get(k) for k in lp.tags} == lp.tags
    assert run.data.tags["protocol.part"] == "final" and run.data.tags["optuna.study"] == "smoke-v1-unet3d"
    assert "protocol/smoke.yaml" in {a.path for a in cl.list_artifacts(final_id, "protocol")}
    assert "test_dice" in run.data.metrics
    # final.overrides reach the finals (no test overlays drawn); a default run keeps the preset's
    assert "plots/test_overlays.png" not in {a.path for a in cl.list_artifacts(final_id, "plots")}
    default_id = stages["defaults unet3d"].ran[0][1]
    assert "plots/test_overlays.png" in {a.path for a in cl.list_artifacts(default_id, "plots")}
    study = optuna.load_study(study_name="smoke-v1-unet3d", storage=open_storage(None)[0])
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert "protocol/smoke.yaml" in {a.path for a in cl.list_artifacts(parent, "protocol")}
    trial_runs = [cl.get_run(t.user_attrs["mlflow_run_id"]) for t in study.trials]
    assert all(r.data.tags.get("protocol.part") == "tuning" and r.data.tags.get("protocol.sha") == lp.sha
               for r in trial_runs)

    out = generate(preset="smoke", out_dir=tmp_path / "lb", log_to_mlflow=False)[0]
    md = out.markdown
    assert md.index("## Tuned protocol") < md.index("## Default settings") < md.index("## Loss study")
    assert "smoke-v1-unet3d: 1 trials x 1 epochs, median pruner" in md
    assert "Gain from tuning" in md and "dice_bce_rm" in md
    tuned = out.leaderboard.table
    assert set(tuned[tuned["reference"] == ""]["row"]) == {"unet3d / dice_bce", "transfuse_s / dice_bce"}

    again = run_protocol(path, show_progress=False)
    assert all(not r.ran and not r.resumed and not r.failed for _, r in again.suites)
    assert all(st.finished == 1 for st in again.studies.values())
    status = protocol_status(path)
    assert "estimated cost left: 0.0 h" in status and len(re.findall(r"loss study \w+: 4 done, 0 left", status)) == 2

    # carried to a fresh store (`bench protocol export`, then `bench import` there), nothing is left
    # to do: every cell is found by its fingerprint and every study is complete
    import shutil

    from benchmark.results.run_export import import_export
    from benchmark.campaigns.protocol import export_protocol
    carried = export_protocol(path, tmp_path / "carried.runs")
    fresh = tmp_path / "fresh-home"
    (fresh / "runs").mkdir(parents=True)
    shutil.copy(migrated_store_template, fresh / "runs" / "mlflow.db")
    monkeypatch.setenv("LIDC_BENCH_HOME", str(fresh))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)   # mlflow.set_tracking_uri exported the first store's
    import_export(carried.path)
    assert protocol_status(path) == status


def test_a_protocol_with_a_key_written_twice_is_refused(tmp_path):
    """A protocol is a declaration: a second `n_trials:` silently winning would change the budget."""
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.core.errors import UsageError
    text = (Path(__file__).resolve().parent.parent / "protocols" / "smoke.yaml").read_text()
    p = tmp_path / "dup.yaml"
    p.write_text(text + "\nversion: 99\n")
    with pytest.raises(UsageError, match="duplicate key 'version'"):
        load_protocol(p)


@pytest.mark.slow
def test_a_study_another_process_is_tuning_is_left_to_it(bench_home, tmp_path, capsys):
    """Two `bench protocol run` processes share a protocol's studies: a study whose claim
    another process holds is not tuned here (one process per study, trial after trial, as the
    sampler's seed assumes) while the other architecture's study and finals go ahead; this run
    lets go of the claim it took, so the next run, of either process, can take either study."""
    from benchmark.campaigns.protocol import load_protocol, run_protocol
    from benchmark.campaigns.protocol.runner import study_claim
    path = _write(tmp_path, """
name: t
version: 1
preset: smoke
architectures: [unet3d, transfuse_s]
tuning: {n_trials: 1, epochs: 1}
final: {seeds: 2, epochs: 1, overrides: [eval.overlays=false]}
defaults: {seeds: 0, references: false}
seconds_per_epoch: {unet3d: 1.0, transfuse_s: 1.0}
""")
    lp = load_protocol(path)
    other = study_claim(lp.study_name("unet3d"))
    assert other.try_acquire()                       # as a second process would hold it
    try:
        res = run_protocol(path, show_progress=False)
    finally:
        other.release()
    assert res.studies["unet3d"].finished == 0 and res.studies["transfuse_s"].finished == 1
    assert "study t-v1-unet3d is being tuned by another process on this host" in capsys.readouterr().err
    stages = dict(res.suites)
    assert "final unet3d" not in stages and [label for label, _ in stages["final transfuse_s"].ran] == \
        ["transfuse_s/dice_bce/s0", "transfuse_s/dice_bce/s1"]
    # the claim is free again once its holder let it go (and this run let go of transfuse_s's):
    # the next run tunes the study it left, as any run tunes an incomplete study
    assert other.try_acquire()
    other.release()
    theirs = study_claim(lp.study_name("transfuse_s"))
    assert theirs.try_acquire()
    theirs.release()


@pytest.mark.slow
def test_a_waiting_worker_takes_up_the_study_once_its_holder_lets_go(bench_home, tmp_path, monkeypatch, capsys):
    """`bench protocol run --hours H --wait`: a worker that finds what is left held by another
    process (here the only study) does not end; it looks again after a wait, and once the holder
    has let go (here: during the wait) it tunes the study and trains its finals. A pass that
    leaves nothing to another process ends the loop without waiting."""
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol import runner
    from benchmark.campaigns.protocol.runner import study_claim
    path = _write(tmp_path, ONE_STUDY)
    other = study_claim(load_protocol(path).study_name("unet3d"))
    assert other.try_acquire()
    waits = []

    def holder_ends_while_we_wait(seconds: float) -> None:
        waits.append(seconds)
        other.release()
    monkeypatch.setattr(runner, "_wait", holder_ends_while_we_wait)
    passes = runner.run_protocol_waiting(path, hours=1.0, poll_seconds=2.0, show_progress=False)
    assert waits == [2.0] and len(passes) == 2
    assert passes[0].elsewhere == ["study t-v1-unet3d"] and passes[0].studies["unet3d"].finished == 0
    assert not passes[1].elsewhere and passes[1].studies["unet3d"].finished == 1
    assert [label for label, _ in dict(passes[1].suites)["final unet3d"].ran] == ["unet3d/dice_bce/s0",
                                                                              "unet3d/dice_bce/s1"]
    assert "waiting for another process (study t-v1-unet3d); looking again in" in capsys.readouterr().err
    # everything done: one pass, no wait
    assert len(runner.run_protocol_waiting(path, hours=1.0, poll_seconds=2.0, show_progress=False)) == 1
    assert waits == [2.0]


def test_a_waiting_worker_stops_when_no_look_fits_in_its_hours(bench_home, tmp_path, monkeypatch, capsys):
    """With less time left than one wait, the worker stops at its time limit and says why,
    instead of sleeping past it."""
    from benchmark.cli.main import main
    from benchmark.campaigns.protocol import load_protocol
    from benchmark.campaigns.protocol import runner
    from benchmark.campaigns.protocol.runner import study_claim
    path = _write(tmp_path, ONE_STUDY)
    other = study_claim(load_protocol(path).study_name("unet3d"))
    assert other.try_acquire()
    monkeypatch.setattr(runner, "_wait", lambda s: pytest.fail("slept past the time limit"))
    try:
        passes = runner.run_protocol_waiting(path, hours=0.5, poll_seconds=3600.0, show_progress=False)
        # without --wait the run ends at once, and its last line says it is not done (not "next: ...")
        capsys.readouterr()
        assert main(["protocol", "run", str(path), "--no-progress"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            "another process on this host holds study t-v1-unet3d: rerun the same command once it ends (or add "
            "--wait with --hours)")
    finally:
        other.release()
    assert len(passes) == 1
    assert passes[0].stopped == "another process still holds study t-v1-unet3d, and less than 60 min is left to " \
                                "wait for it"
